"""--method retrikt: an encoder student that retrieves teacher-labelled store entries at inference (after ReAugKD).

Training: cross-entropy on the k-shot set, KL to the teacher's soft labels on store entries, and a relational loss on
each example's store neighbours (retrikt.student.retrieval has the student and the losses, retrikt.student.selection
the CV), every batch a fixed share of k-shot examples. k, β and τ are chosen by cross-validation over the k-shot set (log-loss, ties to the student's
own prediction), then the final student is trained on all of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retrikt.config import arg
from retrikt.init import INITS
from retrikt.io import RetriktError
from retrikt.methods import kd
from retrikt.methods.base import Method, final_loss, resolve_device
from retrikt.student.trainer import fit, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class Config(kd.Config):
    retrieval_labels: str = arg("teacher", help="retrikt: neighbours vote with teacher soft labels | conditioned "
                                               "labels | auto (chosen on the held-out k-shot examples)",
                                choices=["teacher", "conditioned", "auto"])
    retrieval_k: int = arg(8, help="retrikt: neighbours retrieved per input (re-chosen on held-out k-shot data)")
    retrieval_beta: float = arg(0.5, help="retrikt: weight of the student's own prediction in the mixture")
    retrieval_tau: float = arg(0.1, help="retrikt: softmax temperature over neighbour similarities")
    retrieval_keys: str = arg("auto", help="retrikt: key space of retrieval: store (the store embedder's keys, the "
                                           "student's query projected into them) | student (the trained student's "
                                           "own embeddings of the store's texts) | teacher (the labeller's answer "
                                           "states: python -m retrikt.keys, or a build's --teacher-keys) | auto: "
                                           "teacher keys when the store has valid ones (the projection learns the "
                                           "teacher's space, as ReAugKD keys its memory), else store keys; the CV "
                                           "also scores the student's own keys",
                              choices=["store", "student", "teacher", "auto"])
    key_align: float = arg(1.0, help="retrikt: weight of the cosine loss pulling the student's projected query "
                                     "onto its own key in the space it retrieves from (teacher or store keys); "
                                     "the best weight is per task, choose it on held-out training data "
                                     "(benchmarks.train_dev)")
    rel_weight: float = arg(1.0, help="retrikt: weight of the relational loss")
    rel_tau: float = arg(0.1, help="retrikt: temperature of the relational loss' similarity distributions")
    select_settings: bool = arg(True, help="retrikt: choose k, beta, tau on the k-shot set (never on validation)")
    cv_folds: int = arg(4, help="retrikt: choose k, beta, tau by this many folds of cross-validation over the whole "
                                "k-shot set, scored by log-loss (see --cv-calibrate), ties to the student's own "
                                "prediction; < 2 = the old rule (accuracy on a quarter held out)")
    cv_calibrate: bool = arg(True, help="retrikt: score each CV setting by its log-loss after a temperature fitted to "
                                        "its out-of-fold predictions (how well it ranks the answers, not how "
                                        "confident it is); false = the raw log-loss")
    cv_se_margin: float = arg(1.0, help="retrikt: retrieval is chosen only where its out-of-fold log-loss beats the "
                                        "student alone by more than this many standard errors of the paired "
                                        "per-example differences (the one-standard-error rule); 0 = the "
                                        "session-11 rule (a 0.005-nat margin)")
    no_retrieval: bool = arg(False, help="retrikt ablation: no retrieval at inference (store as training data only)")
    no_relational: bool = arg(False, help="retrikt ablation: no relational loss")
    retrieve_from: str = arg("store", help="retrikt: what the student retrieves from: store | both (the store plus "
                                          "the labelled k-shot examples, gold labels) | kshot (ablation: k-shot only)",
                             choices=["store", "both", "kshot"])


def _fit(cfg: Config, task, store, labelled: list[dict], kshot_emb: np.ndarray, settings, seed: int):
    """Train a RetrievalStudent on ``labelled`` (store-embedded as ``kshot_emb``) plus the store's entries;
    returns (model, memory, losses, facts of the initialiser)."""
    from retrikt.student.retrieval import RetrievalStudent, relational_targets, retrieval_loss
    seed_everything(seed)
    # the prior from the labels this fit trains on: a CV fold never sees its held-out examples' labels
    settings = replace(settings, label_weights=kd.label_weights(cfg, task, store, labelled))
    memory, data, q_emb, self_ids = _memory(cfg, task, store, labelled, kshot_emb, settings.label_weights)
    space, tk = memory, None
    if settings.keys == "teacher":  # neighbours and their similarities in the teacher's space
        q_emb, space, tk = _teacher_space(cfg, store, labelled)
    if settings.keys in ("teacher", "store") and settings.key_align > 0:  # each example's own key, to align to
        for e, key in zip(data, q_emb):
            e["tkey"] = key
    nbr_ids, nbr_sims = relational_targets(space, q_emb, min(cfg.retrieval_k, len(memory) - 1), self_ids)
    for e, i, s in zip(data, nbr_ids, nbr_sims):
        e["nbr_ids"], e["nbr_sims"] = i, s
    base, facts = kd.start_encoder(cfg, task, labelled, seed, resolve_device(cfg.device))
    model = RetrievalStudent(base, memory, settings, use_retrieval=not cfg.no_retrieval, teacher_keys=tk)
    fc, sampler = kd.store_schedule(cfg, data[:len(labelled)], data[len(labelled):], seed)
    losses = fit(model, data, fc, seed, desc=f"retrikt {task.name} s{seed}", sampler=sampler,
                 loss_fn=lambda m, b: retrieval_loss(m, b, fc, settings.rel_weight, cfg.rel_tau))
    return model, memory, losses, facts


def _memory(cfg: Config, task, store, labelled: list[dict], kshot_emb: np.ndarray, weights=None):
    """What the student retrieves from (store | kshot | both), its training data (store labels re-weighted by
    ``weights``), their query embeddings, and each training example's own row in the memory (excluded from its
    neighbours)."""
    from retrikt.student.retrieval import MemoryStore, store_examples
    n_store = len(store) if cfg.retrieve_from in ("store", "both") else 0
    data = labelled + (store_examples(store, label_weights=weights) if n_store else [])
    q_emb = np.concatenate([kshot_emb, store.embeddings[:n_store]])
    if cfg.retrieve_from == "store":
        return store, data, q_emb, [None] * len(labelled) + list(range(n_store))
    # labelled examples vote with their gold label (one-hot)
    kshot = [{"fields": {f: e[f] for f in task.text_fields}, "label": e["label"], "soft_label": None}
             for e in labelled]
    if cfg.retrieve_from == "kshot":  # ablation: retrieve only among the labelled k-shot examples
        return (MemoryStore(kshot_emb, kshot, store.manifest["embedder"]), data, q_emb,
                list(range(len(labelled))))
    if cfg.retrieve_from != "both":
        raise RetriktError(f"retrieve_from must be store, kshot or both, got {cfg.retrieve_from!r}")
    memory = MemoryStore(np.concatenate([store.embeddings, kshot_emb]), store.entries(range(n_store)) + kshot,
                         store.manifest["embedder"], base=store)
    return memory, data, q_emb, [n_store + i for i in range(len(labelled))] + list(range(n_store))


def _teacher_space(cfg: Config, store, labelled: list[dict]):
    """(query keys of the k-shot examples then the store entries, a searchable memory of the entries' teacher
    keys, the loaded keys): what the relational loss matches when the student retrieves by teacher keys."""
    from retrikt.store.teacher_keys import load_teacher_keys
    from retrikt.student.retrieval import MemoryStore
    if cfg.retrieve_from != "store":
        raise RetriktError("--retrieval-keys teacher keys the store's own entries: use --retrieve-from store")
    tk = load_teacher_keys(store)
    missing = [e.get("idx") for e in labelled if e.get("idx") not in tk.kshot]
    if missing:
        raise RetriktError(f"{store.folder}: teacher keys hold no key for k-shot examples {missing[:5]}")
    q = np.concatenate([np.stack([tk.kshot[e["idx"]] for e in labelled]), tk.entries])
    return q, MemoryStore(tk.entries, store.entries(range(len(store))), {"name": "teacher", "dim": tk.dim}), tk


def trained_keys(cfg: Config, store) -> str:
    """The key space the student's projection is trained towards: --retrieval-keys, with auto resolved to the
    teacher's keys when ``store`` carries keys valid for it, else the store's own."""
    if cfg.retrieval_keys != "auto":
        return cfg.retrieval_keys
    from retrikt.store.teacher_keys import KEYS_META, load_teacher_keys
    if cfg.retrieve_from != "store" or not (Path(store.folder) / KEYS_META).exists():
        return "store"
    try:
        load_teacher_keys(store)
    except RetriktError as e:  # stale keys (the store grew since) must not stop a run that can use the store's
        logger.warning("--retrieval-keys auto: not using the teacher keys: %s", e)
        return "store"
    return "teacher"


def _settings(cfg: Config, keys: str):
    from retrikt.student.retrieval import RetrievalSettings
    return RetrievalSettings(k=cfg.retrieval_k, beta=cfg.retrieval_beta, tau=cfg.retrieval_tau, keys=keys,
                             key_align=cfg.key_align,
                             rel_weight=0.0 if cfg.no_relational else cfg.rel_weight)


def _cross_validate(cfg: Config, task, store, examples: list[dict], emb: np.ndarray, settings, seed: int) -> dict:
    """k-fold CV over the k-shot set: each fold's model scores the fold it did not see; the grid is scored by
    log-loss over all of them. Returns the selection record (chosen setting, β curve, every setting's loss)."""
    from retrikt.student.selection import beta_curve, cv_select, folds_of, retrieval_votes
    grid_labels = ("teacher", "conditioned") if cfg.retrieval_labels == "auto" else (cfg.retrieval_labels,)
    grid_keys = (settings.keys, "student") if cfg.retrieval_keys == "auto" else (settings.keys,)
    p_all, ret_all, y = [], {}, []
    folds = [held for held in folds_of(len(examples), min(cfg.cv_folds, len(examples)), seed) if held]
    for held in folds:
        rows = sorted(set(range(len(examples))) - set(held))
        part = [dict(examples[i]) for i in rows]
        model, _, _, _ = _fit(cfg, task, store, part, emb[rows], settings, seed)
        dev = [examples[i] for i in held]
        p, ret = retrieval_votes(model, dev, grid_labels, grid_keys=grid_keys)
        p_all.append(p)
        y += [e["label"] for e in dev]
        for key, r in ret.items():
            ret_all.setdefault(key, []).append(r)
    chosen, grid = cv_select(np.concatenate(p_all), {k: np.concatenate(v) for k, v in ret_all.items()}, y,
                             calibrate=cfg.cv_calibrate, se_margin=cfg.cv_se_margin)
    how = "calibrated log-loss" if cfg.cv_calibrate else "log-loss"
    if cfg.cv_se_margin > 0:
        how += f", {cfg.cv_se_margin:g}-SE margin"
    return chosen | {"method": f"{len(folds)}-fold CV, {how}", "calibrated": cfg.cv_calibrate, "n": len(y),
                     "se_margin": cfg.cv_se_margin, "beta_curve": beta_curve(grid),
                     "smoothing_curve": beta_curve(grid, smoothing=True),
                     "grid": grid}


def _holdout_select(cfg: Config, task, store, copies: list[dict], emb: np.ndarray, settings, seed: int) -> dict:
    """The old rule: accuracy on a quarter of the k-shot set held out (kept for the ablation)."""
    from retrikt.student.selection import choose_settings, split_holdout
    fit_part, dev = split_holdout(copies, settings.holdout, seed)
    if not dev:
        return {}
    row = {id(e): i for i, e in enumerate(copies)}
    model, _, _, _ = _fit(cfg, task, store, fit_part, emb[[row[id(e)] for e in fit_part]], settings, seed)
    grid_labels = ("teacher", "conditioned") if cfg.retrieval_labels == "auto" else (cfg.retrieval_labels,)
    return choose_settings(model, dev, grid_labels=grid_labels) | {"method": "holdout accuracy"}


# a grid row's scores, not settings
SCORES = ("log_loss", "raw_log_loss", "temperature", "accuracy", "one_class", "losses")


def _variants(chosen: dict) -> dict[str, dict]:
    """Ablations one trained student can be scored on, each setting picked by the same CV rule within its slice of
    the grid: the student alone (β = 1), the best setting in each key space the CV scored, and the older criteria
    (accuracy; log-loss without calibration) on the same out-of-fold predictions."""
    from retrikt.student.selection import pick_by_accuracy, pick_by_raw_log_loss, pick_setting

    def settings_of(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in SCORES}
    out = {"no retrieval at inference": {"beta": 1.0}}
    grid = chosen.get("grid") or []
    if any("accuracy" in r for r in grid):
        out["accuracy rule (old criterion)"] = settings_of(pick_by_accuracy(grid))
    if any("raw_log_loss" in r for r in grid) and chosen.get("calibrated"):
        out["uncalibrated log-loss (session-8 rule)"] = settings_of(pick_by_raw_log_loss(grid))
    margin = chosen.get("se_margin", 0.0)
    if margin and any("losses" in r for r in grid):
        out["no SE margin (session-11 rule)"] = settings_of(pick_setting(grid))
    for keys in sorted({r.get("keys", "store") for r in grid} - {"none"}):
        rows = [r for r in grid if r.get("keys", "store") in (keys, "none")]  # "none": the smoothed student
        out[f"keys {keys}"] = settings_of(pick_setting(rows, se_margin=margin))
    return out


def train(cfg: Config, task, examples: list[dict], seed: int):
    from retrikt.student.retrieval import check_store, open_store, store_embedder, store_keys_of
    full_store = open_store(cfg.store)
    settings = _settings(cfg, trained_keys(cfg, full_store))
    provenance = check_store(full_store, task, examples, seed, cfg.allow_foreign_store)
    # copies: the neighbour fields added in _fit must not leak into the shared training pool
    copies = [dict(e) for e in examples]
    emb = store_keys_of(full_store, store_embedder(full_store), task, copies)  # one pass serves every fit
    chosen = {}
    if cfg.select_settings:
        select = _cross_validate if cfg.cv_folds >= 2 and len(copies) >= 2 else _holdout_select
        chosen = select(cfg, task, full_store, copies, emb, settings, seed)
    settings.labels = chosen.get("labels", "conditioned" if cfg.retrieval_labels == "conditioned" else "teacher")
    for key in ("k", "beta", "tau"):
        if key in chosen:
            setattr(settings, key, chosen[key])
    # k, beta, tau and the searched key space only act at inference, so the final student learns from every labelled
    # example, trained towards the same key space as the fold students the CV scored (the searched one is set after:
    # a student trained towards the teacher's keys can also search its own)
    for e in copies:
        e.pop("nbr_ids", None), e.pop("nbr_sims", None), e.pop("tkey", None)
    model, store, losses, facts = _fit(cfg, task, full_store, copies, emb, settings, seed)
    model.settings.keys = chosen.get("keys", settings.keys)
    model.variants = _variants(chosen)
    return model, {**facts, "store": cfg.store, "store_checksum": store.checksum, "store_entries": len(store),
                   **provenance, "retrieval": dict(model.settings.__dict__), "selection": chosen, "refit": True,
                   "steps": len(losses), **final_loss(losses)}


METHOD = Method("retrikt", Config, train, students=("encoder",), inits=tuple(INITS), needs_store=True,
                help="a tiny encoder that retrieves teacher-labelled store entries at inference")
