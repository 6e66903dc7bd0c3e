"""--method kd: an encoder student distilled on the k-shot set plus the store's generated entries (the teacher's
soft labels), no retrieval at inference: the baseline that isolates what retrieval adds."""
from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import arg
from retrikt.init import INITS
from retrikt.init.start import merge_into_weights, start_student
from retrikt.methods.base import Method, StudentConfig, final_loss, fit_config, resolve_device
from retrikt.student.trainer import FitConfig, fit, seed_everything


@dataclass
class Config(StudentConfig):
    store: str | None = arg(None, help="knowledge store folder (kd and retrikt methods)")
    allow_foreign_store: bool = arg(False, help="kd / retrikt: accept a store built from another k-shot set than "
                                               "the run's (another seed or --shots); the run then is not k-shot")


def union_fit_config(cfg: Config, n_kshot: int, n_total: int) -> FitConfig:
    fc = fit_config(cfg)
    # Keep the step budget of `epochs` passes over the k-shot set, but see every store entry at least twice.
    fc.epochs = max(2, int(round(cfg.epochs * n_kshot / max(1, n_total))))
    return fc


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
    data = examples + store_examples(store)
    student, facts = start_encoder(cfg, task, examples, seed, resolve_device(cfg.device))
    losses = fit(student, data, union_fit_config(cfg, len(examples), len(data)), seed, desc=f"kd {task.name} s{seed}")
    return student, {**facts, "store": cfg.store, "store_checksum": store.checksum, "store_entries": len(store),
                     **provenance, **final_loss(losses)}


METHOD = Method("kd", Config, train, students=("encoder",), inits=tuple(INITS), needs_store=True,
                help="distillation on the store's generated data, no retrieval at inference")
