"""How much can retrieval from a store help? kNN over the store, scored on the real validation set.

    python -m benchmarks.store_knn --stores stores/cb-qwen-0.5b stores/rte-qwen-0.5b --name store_knn

For each store and k: embed every validation example with the store's own embedder, retrieve its top-k entries and
predict with the retrieval half of the RetriKT mixture alone, Σ softmax(sim/τ)·p_teacher (β = 0), once with the
teacher's soft labels and once with the labels the generator was conditioned on. The baseline, measured in the same
run, is the same kNN over the 32 labelled k-shot examples (gold labels) the student also gets. A store whose kNN is
no better than the k-shot kNN or the majority class cannot lift a student by retrieval, whatever β is chosen.

This reads validation labels to *diagnose* a store; nothing here selects a setting that a reported result uses.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from retrikt import models
from retrikt.config import arg, parse_config
from retrikt.io import RetriktError, atomic_write_json, atomic_write_text, run_metadata
from retrikt.store import Store
from retrikt.store.prior import kshot_prior, prior_weights, reweight
from retrikt.store.samples import embed_examples, pair_format
from retrikt.teacher.labeller import pick_demos
from retrikt.teacher.lm import calibration_applies
from retrikt.student.retrieval import neighbour_vote
from retrikt.tasks import compute_metrics, get_task, load_split, sample_few_shot
from retrikt.logs import setup_logging

from benchmarks.common import RESULTS, read_rows


@dataclass
class StoreKnnBench:
    stores: list[str] = arg([], help="store folders to diagnose")
    ks: list[int] = arg([1, 4, 8, 16], help="neighbour counts")
    tau: float = arg(0.1, help="softmax temperature over neighbour similarities (the retrikt default)")
    shots: int = arg(32, help="size of the k-shot baseline memory")
    seeds: list[int] = arg([1, 2, 3], help="k-shot samples for the baseline memory")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    calibrate: bool = arg(True, help="also score the teacher's soft labels after content-free calibration (the "
                                     "store's labeller and demonstrations; build --label-calibration content-free)")
    key_spaces: list[str] = arg([], help="also score the store and k-shot kNN in these key spaces: teacher (the "
                                         "labeller's answer states: the store's teacher keys, queries through its "
                                         "own labeller) or an encoder's short name (e.g. mpnet-base); per-seed "
                                         "stores only")
    rows_from: list[str] = arg([], help="FILE or FILE:TEXT: rows measured earlier, read from a store_knn results JSON "
                                        "(only those whose store path contains TEXT), for stores no longer on disk; "
                                        "each keeps the file and commit it came from")
    name: str = arg("store_knn", help="results file stem")


@functools.lru_cache(maxsize=None)
def _encoder(name: str):
    """A sentence embedder, loaded once per run however many stores use it."""
    return models.load_sentence_transformer(name)


def knn_predict(sims: np.ndarray, ids: np.ndarray, labels: np.ndarray, tau: float) -> np.ndarray:
    """labels: [n_memory, num_labels] distributions; sims, ids: [q, k] from a search. Returns [q] predictions."""
    return neighbour_vote(sims, ids, labels, ids.shape[1], tau).argmax(1)


def _onehot(y, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[np.asarray(y, dtype=int)]


def _scores(task, gold, q, keys, labels, ks, tau) -> dict[int, float]:
    sims = q @ keys.T
    order = np.argsort(-sims, 1)
    out = {}
    for k in ks:
        ids = order[:, :min(k, keys.shape[0])]
        pred = knn_predict(np.take_along_axis(sims, ids, 1), ids, labels, tau)
        out[k] = compute_metrics(task, gold, pred.tolist())["main"]
    return out


def calibrated(store, task, soft: np.ndarray, data_dir) -> np.ndarray | None:
    """The store's teacher soft labels as ``--label-calibration content-free`` would have stored them: calibration
    divides by the labeller's label prior (same teacher, same demonstrations), so it can be applied afterwards.
    None where it cannot change them (a row equal to the raw one would say nothing)."""
    from retrikt.teacher.lm import LMClassifier
    cfg = store.manifest["config"]
    labeller = store.manifest.get("labeller") or {"kind": "icl", "model": store.manifest["teacher"]}
    if cfg.get("label_calibration", "none") != "none" or labeller["kind"] == "adapted":
        return None  # already calibrated, or trained on the task's labels: no content-free prior to divide out
    pool = {e["idx"]: e for e in load_split(task, "train", data_dir=data_dir)}
    kshot = [pool[i] for i in store.manifest["kshot_idx"]]
    if "labeller" in store.manifest:  # the labeller's own demonstrations (pick_demos); older stores: the first ones
        demos = pick_demos(kshot, cfg["label_demos"], store.manifest["seed"]) if labeller["kind"] == "icl" else []
    else:
        demos = kshot[:cfg["label_demos"]]
    model, tok = models.load_causal_lm(labeller["model"], device="cpu")
    prior = LMClassifier(model, tok, task, demos=demos, calibrate="content-free").label_prior()
    q = soft / prior
    return (q / q.sum(1, keepdims=True)).astype(np.float32)


def agreed_rows(entries: list[dict]) -> list[int] | None:
    """Rows of the entries whose labeller agreed with their conditioned label, or None when the store holds no
    disagreeing entry (the agreement filter already ran, or there was nothing to filter)."""
    flags = [(e.get("meta") or {}).get("agree") for e in entries]
    if False not in flags:
        return None
    return [i for i, a in enumerate(flags) if a]


def oracle_gold(entries: list[dict], pool: list[dict]) -> list[int] | None:
    """The gold labels of an oracle store's real training inputs (its entries name their `train_idx`), or None for a
    generated store. kNN with these labels is what the embedder's neighbours could give with a perfect labeller."""
    idx = [(e.get("meta") or {}).get("train_idx") for e in entries]
    if not idx or None in idx:
        return None
    by_idx = {e["idx"]: e for e in pool}  # train_idx is the example's own idx (what the build's filter wrote)
    return [int(by_idx[i]["label"]) for i in idx]


def diagnose(path: str, cfg: StoreKnnBench) -> dict:
    store = Store.open(path)
    if cfg.key_spaces and "seed" not in store.manifest:
        raise RetriktError(f"{path}: --key-spaces needs a per-seed store (its manifest names no seed)")
    task = get_task(store.manifest["task"])
    embedder = _encoder(store.manifest["embedder"]["name"])
    val = load_split(task, "validation", data_dir=cfg.data_dir)
    gold = [e["label"] for e in val]
    fmt = pair_format(store.manifest)
    q = embed_examples(embedder, task, val, fmt)
    entries = store.entries(range(len(store)))
    n = task.num_labels
    soft = np.asarray([e.get("soft_label") or _onehot(e["label"], n) for e in entries], dtype=np.float32)
    keys = np.asarray(store.embeddings, dtype=np.float32)
    row = {"store": path, "task": task.name, "entries": len(store), "store_embedder": store.manifest["embedder"]["name"],
           "majority": max(np.bincount(gold, minlength=n)) / len(gold),
           "teacher_soft": _scores(task, gold, q, keys, soft, cfg.ks, cfg.tau),
           "conditioned": _scores(task, gold, q, keys, _onehot([e["label"] for e in entries], n), cfg.ks, cfg.tau)}
    agreed = agreed_rows(entries)
    if agreed is not None:  # built with --min-agreement 0: what the agreement filter would have kept
        row["agreed_only"] = {"entries": len(agreed),
                              "scores": _scores(task, gold, q, keys[agreed], soft[agreed], cfg.ks, cfg.tau)}
    cal = calibrated(store, task, soft, cfg.data_dir) if cfg.calibrate and calibration_applies(task) else None
    if cal is not None:
        conditioned = np.asarray([e["label"] for e in entries])
        row["teacher_calibrated"] = _scores(task, gold, q, keys, cal, cfg.ks, cfg.tau)
        row["agreement"] = {"raw": float((soft.argmax(1) == conditioned).mean()),
                            "calibrated": float((cal.argmax(1) == conditioned).mean())}
    pool = load_split(task, "train", data_dir=cfg.data_dir)
    real = oracle_gold(entries, pool)
    if real is not None:
        row["gold_labels"] = _scores(task, gold, q, keys, _onehot(real, n), cfg.ks, cfg.tau)
        row["labeller_accuracy"] = float(np.mean(soft.argmax(1) == np.asarray(real)))
    per_seed, both = [], []
    # a per-seed store is compared with its own seed's k-shot set, the only labelled data its build saw
    seeds = [store.manifest["seed"]] if "seed" in store.manifest else cfg.seeds
    for seed in seeds:
        shot = sample_few_shot(pool, n=cfg.shots, seed=seed)  # the k-shot set retrikt.train gives the student
        mem = embed_examples(embedder, task, shot, fmt)
        shot_y = _onehot([e["label"] for e in shot], n)
        per_seed.append(_scores(task, gold, q, mem, shot_y, cfg.ks, cfg.tau))
        both.append(_scores(task, gold, q, np.concatenate([keys, mem]), np.concatenate([soft, shot_y]), cfg.ks,
                            cfg.tau))
    w = None
    if "seed" in store.manifest and soft.sum(0).min() > 0:  # --store-prior kshot, as this seed's student would
        w = prior_weights(soft, kshot_prior([e["label"] for e in shot], n))
        row["teacher_prior"] = _scores(task, gold, q, keys, reweight(soft, w), cfg.ks, cfg.tau)
    row["kshot"] = {k: [s[k] for s in per_seed] for k in cfg.ks}
    row["both"] = {k: [s[k] for s in both] for k in cfg.ks}
    row["spaces"] = {space: _in_space(space, store, task, val, shot, soft, w, cfg) for space in cfg.key_spaces}
    return row


def _in_space(space: str, store, task, val: list[dict], shot: list[dict], soft: np.ndarray, weights, cfg) -> dict:
    """Store kNN (teacher labels, and matched to the k-shot prior) and the k-shot gold kNN with ``space``'s keys
    for the store's entries, its seed's k-shot examples and the validation queries."""
    gold, n = [e["label"] for e in val], task.num_labels
    texts = [dict(e["fields"]) for e in store.entries(range(len(store)))]
    extra = {}
    if space == "teacher":  # the labeller's answer states; the same labeller keys the validation queries
        from retrikt.pipeline.keys import labeller_for
        from retrikt.store.teacher_keys import load_teacher_keys
        tk = load_teacher_keys(store)
        keys, mem = tk.entries, np.stack([tk.kshot[e["idx"]] for e in shot])
        clf, _ = labeller_for(store, cfg.data_dir)
        clf.keep_answer_states()  # one pass gives the labeller's own predictions and the query keys
        pred = clf.predict_proba(val).argmax(1).tolist()
        q = tk.transform(clf.answer_states(val))
        extra["labeller"] = compute_metrics(task, gold, pred)["main"]
    else:
        embedder = _encoder(space)
        fmt = pair_format(store.manifest)
        q, keys, mem = (embed_examples(embedder, task, x, fmt) for x in (val, texts, shot))
    out = {"teacher_soft": _scores(task, gold, q, keys, soft, cfg.ks, cfg.tau),
           "kshot": _scores(task, gold, q, mem, _onehot([e["label"] for e in shot], n), cfg.ks, cfg.tau)} | extra
    if weights is not None:
        out["teacher_prior"] = _scores(task, gold, q, keys, reweight(soft, weights), cfg.ks, cfg.tau)
    return out


def _int_keys(x):
    """JSON keeps the neighbour counts as strings; the tables index them by int."""
    if isinstance(x, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in x.items()}
    return x


def earlier_rows(spec: str) -> list[dict]:
    """Rows of an earlier store_knn results file (``FILE`` or ``FILE:TEXT``), each marked with where it was
    measured."""
    return [_int_keys(r) for r in read_rows(spec, "store_knn")]


def table(rows: list[dict], ks: list[int]) -> str:
    lines = ["| store | entries | majority | memory | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---:|---:|---|" + "---:|" * len(ks)]
    for r in rows:
        where = f" ({r['measured_in']['file']})" if "measured_in" in r else ""
        lead = f"| {r['store']}{where} | {r['entries']} | {100 * r['majority']:.1f} |"
        lines.append(lead + " store, teacher labels | " + " | ".join(f"{100 * r['teacher_soft'][k]:.1f}" for k in ks) + " |")
        if "teacher_prior" in r:
            lines.append(lead + " store, teacher labels matched to the k-shot prior (--store-prior kshot) | " +
                         " | ".join(f"{100 * r['teacher_prior'][k]:.1f}" for k in ks) + " |")
        if "teacher_calibrated" in r:
            lines.append(lead + " store, teacher labels calibrated | " + " | ".join(
                f"{100 * r['teacher_calibrated'][k]:.1f}" for k in ks) + " |")
        if "agreed_only" in r:
            a = r["agreed_only"]
            lines.append(lead + f" store, teacher labels, only the {a['entries']} agreeing entries | " + " | ".join(
                f"{100 * a['scores'][k]:.1f}" for k in ks) + " |")
        lines.append(lead + " store, conditioned labels | " + " | ".join(f"{100 * r['conditioned'][k]:.1f}" for k in ks) + " |")
        if "gold_labels" in r:
            lines.append(lead + f" store, gold labels of its real inputs (labeller {100 * r['labeller_accuracy']:.1f}%"
                         " right) | " + " | ".join(f"{100 * r['gold_labels'][k]:.1f}" for k in ks) + " |")
        for key, name in (("kshot", "32 k-shot examples, gold (baseline)"), ("both", "store + k-shot examples")):
            lines.append(lead + f" {name} | " + " | ".join(_spread(r[key][k]) for k in ks) + " |")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    """A mean, with its spread only where there is more than one value to spread."""
    mean = f"{100 * np.mean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ± {100 * np.std(values):.1f}"


def summary(rows: list[dict], ks: list[int], labels: str = "teacher_soft") -> str:
    """Per task, store kNN (``labels``: teacher labels, or them matched to the k-shot prior) minus kNN over the
    k-shot gold examples, each store against its own seed's k-shot set, then averaged over the task's stores: the
    issue's test of whether a store carries knowledge."""
    lines = ["| task | stores | entries | " + " | ".join(f"k={k}: store / k-shot / Δ" for k in ks) + " |",
             "|---|---:|---|" + "---|" * len(ks)]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task and labels in r]
        if not mine:
            continue
        cells = []
        for k in ks:
            store = np.mean([r[labels][k] for r in mine])
            shot = np.mean([np.mean(r["kshot"][k]) for r in mine])
            cells.append(f"{100 * store:.1f} / {100 * shot:.1f} / {100 * (store - shot):+.1f}")
        entries = " / ".join(str(r["entries"]) for r in mine)
        lines.append(f"| {task} | {len(mine)} | {entries} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spaces_summary(rows: list[dict], ks: list[int]) -> str:
    """Per task and key space, mean over the task's stores: store kNN (teacher labels; matched to the k-shot prior)
    against the k-shot gold kNN in the same space; the labeller's own score where the space is its answer states."""
    lines = ["| task | key space | memory | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---|" + "---:|" * len(ks)]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        spaces = {"store": [{"teacher_soft": r["teacher_soft"], "teacher_prior": r.get("teacher_prior"),
                             "kshot": {k: np.mean(r["kshot"][k]) for k in ks}} for r in mine]}
        for name in dict.fromkeys(s for r in mine for s in r.get("spaces", {})):
            spaces[name] = [r["spaces"][name] for r in mine if name in r.get("spaces", {})]
        for name, cells in spaces.items():
            label = name + (" (" + mine[0]["store_embedder"] + ")" if name == "store" else "")
            if name == "teacher":
                label += f"; labeller alone {100 * np.mean([c['labeller'] for c in cells]):.1f}"
            for key, what in (("teacher_soft", "store, teacher labels"), ("teacher_prior", "store, matched to "
                              "the k-shot prior"), ("kshot", "32 k-shot examples, gold")):
                if any(c.get(key) is None for c in cells):
                    continue
                vals = [np.mean([c[key][k] for c in cells]) for k in ks]
                lines.append(f"| {task} | {label} | {what} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
            delta = [np.mean([c["teacher_soft"][k] - c["kshot"][k] for c in cells]) for k in ks]
            lines.append(f"| {task} | {label} | Δ store − k-shot | " + " | ".join(f"{100 * d:+.1f}" for d in delta)
                         + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(StoreKnnBench, argv, description=__doc__)
    rows = [diagnose(p, cfg) for p in cfg.stores] + [r for spec in cfg.rows_from for r in earlier_rows(spec)]
    if not rows:
        raise SystemExit("error: no stores (--stores) and no earlier rows (--rows-from)")
    meta = run_metadata(config=asdict(cfg), seeds=cfg.seeds)
    atomic_write_json(RESULTS / f"{cfg.name}.json", {**meta, "rows": rows})
    regen = "python -m benchmarks.store_knn" + (f" --stores {' '.join(cfg.stores)}" if cfg.stores else "") + \
        (f" --rows-from {' '.join(cfg.rows_from)}" if cfg.rows_from else "") + f" --name {cfg.name}"
    if not cfg.calibrate:
        regen += " --calibrate false"
    if cfg.key_spaces:
        regen += f" --key-spaces {' '.join(cfg.key_spaces)}"
    md = (f"# kNN over the store vs over the k-shot set (validation, main metric x100)\n\n{table(rows, cfg.ks)}\n\n"
          f"Per task, mean over its stores (teacher labels; each store against its own seed's k-shot set):\n\n"
          f"{summary(rows, cfg.ks)}\n\n"
          + (f"The same, teacher labels matched to the k-shot prior (per-seed stores):\n\n"
             f"{summary(rows, cfg.ks, 'teacher_prior')}\n\n" if any("teacher_prior" in r for r in rows) else "") +
          (f"By key space (mean over each task's stores, teacher labels):\n\n{spaces_summary(rows, cfg.ks)}\n\n"
             if cfg.key_spaces else "") +
          f"β = 0 (retrikt's retrieval half only), τ = {cfg.tau}; k-shot baseline: a per-seed store's own seed, "
          f"an older store's mean ± std over seeds {cfg.seeds}. " +
          ("A store followed by a results file in brackets is read from that file (measured then; the store is no "
           "longer on disk). " if cfg.rows_from else "") +
          f"Commit `{meta['git_commit']}`. Regenerate: `{regen}`\n")
    atomic_write_text(RESULTS / f"{cfg.name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
