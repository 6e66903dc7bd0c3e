"""Build a knowledge store: soft prompt -> generate -> parse -> filter -> teacher-label -> embed -> FAISS store.

Every stage that costs minutes is checkpointed in the output folder, so an interrupted build re-run with the same
command continues from its last finished batch: the tuned prompt (``prompt/``, ``prompt-rl/``), one store part per
generation batch (``parts/``), and per-batch statistics (``build_log.jsonl``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retrikt import models
from retrikt.config import arg
from retrikt.io import RetriktError, append_jsonl, read_jsonl
from retrikt.store.samples import condition, embed_text, example_key, near_duplicates, parse, target
from retrikt.student.lm import LMClassifier
from retrikt.tasks import get_task, load_split, sample_few_shot

logger = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    task: str = arg("cb", help="task name")
    teacher: str = arg("qwen-0.5b", help="teacher causal LM: generator and labeller")
    embedder: str = arg("minilm-l6", help="sentence-transformers model that embeds store entries")
    out: str | None = arg(None, help="store folder (default stores/<task>-<teacher>)")
    per_label: int = arg(200, help="samples generated per label (before filtering)")
    shots: int = arg(32, help="k-shot examples the soft prompt is tuned on (same sampling as retrikt.train)")
    seed: int = arg(1, help="seed of the k-shot sample and of generation")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    prompt_tokens: int = arg(20, help="virtual tokens of the soft prompt (RetriKT / Lester et al.: 20-100)")
    prompt_epochs: int = arg(20, help="supervised prompt-tuning epochs over the k-shot pairs")
    prompt_lr: float = arg(0.0, help="prompt-tuning learning rate; 0 = 0.25 x the teacher's token-embedding RMS "
                                     "(Lester et al.'s 0.3 suits T5's large embeddings; measured best 0.03 on "
                                     "SmolLM2 whose RMS is 0.136, so Qwen2.5's 0.017 gives ~4e-3)")
    prompt_batch_size: int = arg(8, help="pairs per prompt-tuning step")
    temperature: float = arg(1.0, help="sampling temperature")
    top_p: float = arg(0.9, help="nucleus sampling threshold")
    max_new_tokens: int = arg(128, help="longest generated sample, in tokens")
    batch_size: int = arg(8, help="generation batch size (left-padded, KV cache)")
    batch_timeout: float = arg(600.0, help="wall-clock seconds allowed per generation batch")
    dedup_threshold: float = arg(0.95, help="drop a sample whose embedding cosine to a kept one is above this")
    label_demos: int = arg(4, help="k-shot demonstrations in the teacher's labelling prompt")
    parse_mode: str = arg("strict", help="strict: every field line must be present; lenient: split the words "
                          "over the fields (only for smoke runs with random tiny models)", choices=["strict", "lenient"])
    index: str = arg("auto", help="FAISS index: auto | flat | hnsw | ivf | ivfpq")
    rl: str = arg("none", help="refine the soft prompt by RL before generating: none | ppo | grpo | rloo",
                  choices=["none", "ppo", "grpo", "rloo"])
    rl_steps: int = arg(20, help="RL steps (rollout batches)")
    rl_batch: int = arg(16, help="samples per PPO rollout batch")
    device: str = arg("auto", help="auto | cpu | cuda")


SMOKE = {"teacher": "tiny-causal", "embedder": "tiny-encoder", "per_label": 8, "shots": 8, "prompt_epochs": 2,
         "max_new_tokens": 24, "batch_size": 8, "label_demos": 1, "rl_steps": 2, "rl_batch": 4, "parse_mode": "lenient",
         "dedup_threshold": 0.9999}  # random tiny embeddings are all close: only drop true duplicates


def prompt_key(cfg: BuildConfig) -> str:
    """What the tuned prompt depends on; a saved prompt with another key is not reused."""
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    return hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def batch_plan(task, cfg: BuildConfig) -> list[tuple[int, int, int]]:
    """(batch_id, label, n) for every generation batch; ids are stable so a resumed build skips finished ones."""
    plan = []
    for label in range(task.num_labels):
        for j in range(math.ceil(cfg.per_label / cfg.batch_size)):
            n = min(cfg.batch_size, cfg.per_label - j * cfg.batch_size)
            plan.append((label * 100_000 + j, label, n))
    return plan


def tuned_generator(cfg: BuildConfig, task, model, tok, kshot: list[dict], out: Path):
    from retrikt.store.softprompt import SoftPromptConfig, SoftPromptGenerator
    folder, key = out / "prompt", prompt_key(cfg)
    if (folder / "manifest.json").exists() and json.loads((folder / "manifest.json").read_text()).get("key") == key:
        logger.info("reusing the tuned soft prompt in %s", folder)
        return SoftPromptGenerator.load(folder, model, tok)
    gen = SoftPromptGenerator(model, tok, n_virtual=cfg.prompt_tokens,
                              init_text=f"Write a new example of the {task.name} task with the given label.")
    pairs = [(condition(task, int(e["label"])), target(task, e)) for e in kshot]
    lr = cfg.prompt_lr or 0.25 * gen.embedding_rms()
    logger.info("prompt tuning lr %.2g (token-embedding RMS %.3g)", lr, gen.embedding_rms())
    log = gen.train_supervised(pairs, SoftPromptConfig(lr=lr, epochs=cfg.prompt_epochs,
                                                       batch_size=cfg.prompt_batch_size, seed=cfg.seed))
    gen.save(folder, meta={"key": key, "lr": lr, "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"]})
    gen.snapshot_reference()
    return gen


def embedding_dim(embedder) -> int:
    get = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(get())


def _embed(embedder, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, embedding_dim(embedder)), dtype=np.float32)
    return np.asarray(embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False), dtype=np.float32)


class Filter:
    """Parse, drop copies of train/validation examples and duplicates; remembers what was accepted."""

    def __init__(self, task, forbidden: set[str], seen: set[str], accepted: np.ndarray | None, threshold: float,
                 lenient: bool = False):
        self.task, self.forbidden, self.seen, self.accepted, self.threshold = task, forbidden, seen, accepted, threshold
        self.lenient = lenient

    def __call__(self, samples: list[dict], embedder) -> tuple[list[dict], np.ndarray, dict]:
        stats = {"generated": len(samples), "parsed": 0, "copies": 0, "exact_dups": 0, "near_dups": 0}
        kept = []
        for s in samples:
            fields = parse(self.task, s["text"], lenient=self.lenient)
            if fields is None:
                continue
            stats["parsed"] += 1
            key = example_key(self.task, fields)
            if key in self.forbidden:
                stats["copies"] += 1
            elif key in self.seen:
                stats["exact_dups"] += 1
            else:
                self.seen.add(key)
                kept.append({"fields": fields, "tokens": len(s["tokens"]), "finished": s.get("finished", True)})
        emb = _embed(embedder, [embed_text(self.task, k["fields"]) for k in kept])
        drop = near_duplicates(emb, self.accepted, self.threshold)
        stats["near_dups"] = int(drop.sum())
        kept, emb = [k for k, d in zip(kept, drop) if not d], emb[~drop]
        self.accepted = emb if self.accepted is None else np.concatenate([self.accepted, emb])
        return kept, emb, stats


def _label(labeller: LMClassifier, task, kept: list[dict], label: int) -> list[dict]:
    if not kept:
        return []
    probs = labeller.predict_proba([{**k["fields"], "idx": -1} for k in kept])
    return [{"fields": k["fields"], "label": label, "soft_label": [round(float(x), 6) for x in p],
             "meta": {"teacher_label": int(p.argmax()), "agree": bool(p.argmax() == label), "tokens": k["tokens"],
                      "finished": k["finished"]}} for k, p in zip(kept, probs)]


def summarise_log(log: list[dict]) -> dict:
    """Totals over the build log, keeping the last record of each batch (a re-run batch is logged twice)."""
    last = {r["batch_id"]: r for r in log}
    tot = {k: sum(r[k] for r in last.values()) for k in ("generated", "parsed", "copies", "exact_dups", "near_dups",
                                                         "kept", "agree", "new_tokens")}
    gen_s = sum(r["generate_seconds"] for r in last.values())
    return tot | {"batches": len(last), "generate_seconds": gen_s,
                  "tokens_per_s": tot["new_tokens"] / gen_s if gen_s else 0.0,
                  "parse_rate": tot["parsed"] / max(1, tot["generated"]),
                  "keep_rate": tot["kept"] / max(1, tot["generated"]),
                  "agreement": tot["agree"] / max(1, tot["kept"])}


def build_store(cfg: BuildConfig) -> Path:
    """Run (or resume) a whole build; returns the finished store folder."""
    from retrikt.store import StoreWriter
    from retrikt.student.methods import resolve_device
    task = get_task(cfg.task)
    if task.is_regression:
        raise RetriktError(f"store building conditions generation on a label; {task.name} is a regression task")
    out = Path(cfg.out or f"stores/{task.name}-{cfg.teacher.replace('/', '_')}")
    pool = load_split(task, "train", data_dir=cfg.data_dir)
    kshot = sample_few_shot(pool, n=cfg.shots, seed=cfg.seed) if cfg.shots else pool
    forbidden = {example_key(task, e) for e in pool}
    forbidden |= {example_key(task, e) for e in load_split(task, "validation", data_dir=cfg.data_dir)}
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    models.check_ram(cfg.teacher)
    model, tok = models.load_causal_lm(cfg.teacher, device=device)
    embedder = models.load_sentence_transformer(cfg.embedder, device=device)
    meta = {"task": task.name, "teacher": cfg.teacher, "config": asdict(cfg),
            "embedder": {"name": cfg.embedder, "dim": embedding_dim(embedder), "normalize": True},
            "kshot_idx": [e["idx"] for e in kshot]}
    writer = StoreWriter(out, meta)
    with writer:
        gen = tuned_generator(cfg, task, model, tok, kshot, out)
        if cfg.rl != "none":
            from retrikt.rl.refine import refine_prompt
            gen = refine_prompt(cfg, task, gen, model, tok, kshot, embedder, out)
        labeller = LMClassifier(model, tok, task, demos=kshot[:cfg.label_demos])
        done = writer.done_batches()
        prev = writer.accepted_entries()
        filt = Filter(task, forbidden, {example_key(task, e["fields"]) for e in prev},
                      writer.accepted_embeddings() if prev else None, cfg.dedup_threshold,
                      lenient=cfg.parse_mode == "lenient")
        todo = [b for b in batch_plan(task, cfg) if b[0] not in done]
        logger.info("%s: %d of %d generation batches left", out, len(todo), len(batch_plan(task, cfg)))
        for batch_id, label, n in todo:
            tg = time.perf_counter()
            samples = gen.generate([condition(task, label)], n_per_condition=n, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                   seed=cfg.seed * 1_000_003 + batch_id, max_time=cfg.batch_timeout)
            gen_s = time.perf_counter() - tg
            kept, emb, stats = filt(samples, embedder)
            entries = _label(labeller, task, kept, label)
            append_jsonl(out / "build_log.jsonl", stats | {
                "batch_id": batch_id, "label": label, "kept": len(entries),
                "agree": sum(e["meta"]["agree"] for e in entries), "generate_seconds": gen_s,
                "new_tokens": sum(len(s["tokens"]) for s in samples)})
            writer.add_batch(batch_id, entries, emb)
        stats = summarise_log(read_jsonl(out / "build_log.jsonl"))
        path = writer.finalize(index_kind=cfg.index, extra_meta={"stats": stats,
                                                                 "build_seconds": time.perf_counter() - t0})
    logger.info("store %s: %d entries, parse rate %.2f, keep rate %.2f, teacher agreement %.2f", path,
                stats["kept"], stats["parse_rate"], stats["keep_rate"], stats["agreement"])
    return path
