"""--method kd: an encoder student distilled on the k-shot set plus the store's generated entries (the teacher's
soft labels), no retrieval at inference: the baseline that isolates what retrieval adds."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retrikt.config import arg
from retrikt.init import INITS
from retrikt.init.start import merge_into_weights, start_student
from retrikt.methods.base import Method, StudentConfig, final_loss, fit_config, resolve_device
from retrikt.student.trainer import FitConfig, MixedBatches, fit, seed_everything


@dataclass
class Config(StudentConfig):
    store: str | None = arg(None, help="knowledge store folder (kd and retrikt methods)")
    allow_foreign_store: bool = arg(False, help="kd / retrikt: accept a store built from another k-shot set than "
                                               "the run's (another seed or --shots); the run then is not k-shot")
    gold_share: float = arg(0.25, help="kd / retrikt: share of every batch taken from the k-shot examples, the rest "
                                       "from the store; 0 = batches from the union with the old epoch rule")
    store_steps: int = arg(0, help="kd / retrikt: optimisation steps with a store; 0 = as many as give the k-shot "
                                   "examples the exposure of --epochs passes (epochs x k-shot size / gold per batch)")
    store_prior: str = arg("none", help="kd / retrikt: re-weight the store's teacher soft labels, one factor per "
                                        "class, so that their mean matches a prior, before training and retrieval: "
                                        "none | kshot (the training examples' label frequencies, add-one smoothed: "
                                        "corrects a labeller that leans to one class on generated text)",
                           choices=["none", "kshot"])


def label_weights(cfg: Config, task, store, gold: list[dict]) -> list[float] | None:
    """--store-prior: the per-class weights that give the store's teacher labels the prior of ``gold``'s labels."""
    if cfg.store_prior == "none":
        return None
    from retrikt.store.prior import kshot_prior, prior_weights
    from retrikt.student.retrieval import _onehot
    n = task.num_labels
    soft = [e.get("soft_label") or _onehot(e, n) for e in store.entries(range(len(store)))]  # as the neighbours vote
    return prior_weights(np.asarray(soft), kshot_prior([e["label"] for e in gold], n)).round(6).tolist()


def store_schedule(cfg: Config, gold: list[dict], store: list[dict], seed: int) -> tuple[FitConfig, object]:
    """(FitConfig, sampler) for training on k-shot examples plus store entries. With --gold-share > 0 every batch
    holds a fixed share of gold examples and the run lasts a fixed number of steps (see --store-steps), whatever the
    store's size; with 0, the old rule: batches from the union, max(2, epochs x k / n) passes over it."""
    fc = fit_config(cfg)
    if cfg.gold_share <= 0:
        fc.epochs = max(2, int(round(cfg.epochs * len(gold) / max(1, len(gold) + len(store)))))
        return fc, None
    sampler = MixedBatches(gold, store, cfg.batch_size, cfg.gold_share, seed)
    steps = cfg.store_steps or max(1, math.ceil(cfg.epochs * len(gold) / sampler.n_gold))
    fc.max_steps = min(steps, cfg.max_steps) if cfg.max_steps else steps  # --max-steps stays a cap
    return fc, sampler


def start_encoder(cfg: Config, task, examples: list[dict], seed: int, device: str):
    """The encoder student as --init says, its module folded into the weights (all of them train)."""
    student, facts = start_student(cfg, task, examples, seed, device)
    merge_into_weights(student)
    return student, facts


def train(cfg: Config, task, examples: list[dict], seed: int):
    from retrikt.student.retrieval import check_store, open_store, store_examples
    seed_everything(seed)
    store = open_store(cfg.store)
    provenance = check_store(store, task, examples, seed, cfg.allow_foreign_store)
    weights = label_weights(cfg, task, store, examples)
    entries = store_examples(store, label_weights=weights)
    student, facts = start_encoder(cfg, task, examples, seed, resolve_device(cfg.device))
    fc, sampler = store_schedule(cfg, examples, entries, seed)
    losses = fit(student, examples + entries, fc, seed, desc=f"kd {task.name} s{seed}", sampler=sampler)
    return student, {**facts, "store": cfg.store, "store_checksum": store.checksum, "store_entries": len(store),
                     **provenance, "label_weights": weights, "steps": len(losses), **final_loss(losses)}


METHOD = Method("kd", Config, train, students=("encoder",), inits=tuple(INITS), needs_store=True,
                help="distillation on the store's generated data, no retrieval at inference")
