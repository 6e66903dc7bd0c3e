"""Build a knowledge store: soft prompt -> generate -> parse -> filter -> teacher-label -> embed -> FAISS store.

Every stage that costs minutes is checkpointed in the output folder, so an interrupted build re-run with the same
command continues from its last finished batch: the tuned prompt (``prompt/``, ``prompt-rl/``), each rank's shard
of labelled candidates (``shards/rank-<k>/``: one part per generation batch, its own ``build_log.jsonl``). The
duplicate filters then run over all shards in batch order into the store itself (``parts/``, ``build_log.jsonl``,
the index, the manifest); see :mod:`retrikt.store.shard`. ``accelerate launch`` runs it on N ranks, plain
``python -m retrikt.build`` on one: the same code with one shard.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retrikt import models
from retrikt.config import arg
from retrikt.io import RetriktError, append_jsonl
from retrikt.store.samples import (condition, embed_text, embed_texts, embedding_dim, example_key, parse,
                                    target, task_text)
from retrikt.store.shard import BATCH_TAG, LOG, merge_shards, rank_batches, repair_log, shard_dir
from retrikt.tasks import get_task, load_split, sample_few_shot
from retrikt.teacher.adapted import AdaptConfig, adapt_config
from retrikt.teacher.labeller import LABELLERS, make_labeller
from retrikt.teacher.lm import LMClassifier

logger = logging.getLogger(__name__)


@dataclass
class BuildConfig(AdaptConfig):
    task: str = arg("cb", help="task name")
    teacher: str = arg("qwen-0.5b", help="teacher causal LM: the generator (and the labeller unless "
                                         "--labeller-model names another)")
    labeller: str = arg("adapted", help="how the store is labelled: adapted (the labeller model with a LoRA trained "
                                        "on the seed's k-shot set, cached) | icl (--label-demos of the seed's k-shot "
                                        "examples in context) | zero-shot", choices=list(LABELLERS))
    labeller_model: str | None = arg(None, help="causal LM that labels the store (default: --teacher); its "
                                                "tokenizer may differ from the generator's")
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
    task_text: str = arg("name", help="how the generator's condition and the soft prompt's init text name the "
                                      "task: name (its id) | description (its one-line description)",
                         choices=["name", "description"])
    label_demos: int = arg(4, help="--labeller icl: k-shot demonstrations in the labelling prompt")
    label_calibration: str = arg("none", help="--labeller icl / zero-shot: none | content-free (divide by the label "
                                              "probabilities of content-free inputs with the same demonstrations)",
                                 choices=["none", "content-free"])
    parse_mode: str = arg("strict", help="strict: every field line must be present; lenient: split the words "
                          "over the fields (only for smoke runs with random tiny models)", choices=["strict", "lenient"])
    index: str = arg("auto", help="FAISS index: auto | flat | hnsw | ivf | ivfpq")
    rl: str = arg("none", help="refine the soft prompt by RL before generating: none | ppo | grpo | rloo",
                  choices=["none", "ppo", "grpo", "rloo"])
    rl_steps: int = arg(20, help="RL steps (rollout batches)")
    rl_batch: int = arg(16, help="samples per PPO rollout batch")
    rl_lr: float = arg(1e-3, help="PPO: AdamW lr of the soft prompt. Adam moves each element by about lr per update "
                                  "whatever the reward's scale, so this, not --rl-kl-coef, bounds the prompt's drift")
    rl_kl_coef: float = arg(0.05, help="PPO: initial coefficient of the per-token KL penalty to the supervised "
                                       "prompt (TRL 0.05). The adaptive controller's horizon is 10k samples, so in a "
                                       "run of a few hundred samples this value is, in effect, fixed")
    device: str = arg("auto", help="auto | cpu | cuda (under accelerate launch: each rank's own GPU)")
    dist_timeout: float = arg(14400.0, help="seconds a rank may wait at a barrier under accelerate launch (rank 0 "
                                            "tunes / RL-refines the prompt and merges the shards meanwhile)")


SMOKE = {"teacher": "tiny-causal", "embedder": "tiny-encoder", "per_label": 8, "shots": 8, "prompt_epochs": 2,
         "max_new_tokens": 24, "batch_size": 8, "label_demos": 1, "rl_steps": 2, "rl_batch": 4, "parse_mode": "lenient",
         "dedup_threshold": 0.9999}  # random tiny embeddings are all close: only drop true duplicates


def prompt_key(cfg: BuildConfig) -> str:
    """What the tuned prompt depends on; a saved prompt with another key is not reused."""
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    blob = {k: getattr(cfg, k) for k in keys}
    if cfg.task_text != "name":  # prompts tuned before the option existed keep their key
        blob["task_text"] = cfg.task_text
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def batch_plan(task, cfg: BuildConfig) -> list[tuple[int, int, int]]:
    """(batch_id, label, n) for every generation batch; ids are stable so a resumed build skips finished ones."""
    plan = []
    for label in range(task.num_labels):
        for j in range(math.ceil(cfg.per_label / cfg.batch_size)):
            n = min(cfg.batch_size, cfg.per_label - j * cfg.batch_size)
            plan.append((label * 100_000 + j, label, n))
    return plan


def tuned_generator(cfg: BuildConfig, task, model, tok, kshot: list[dict], out: Path):
    from retrikt.teacher.softprompt import SoftPromptConfig, SoftPromptGenerator
    folder, key = out / "prompt", prompt_key(cfg)
    if (folder / "manifest.json").exists() and json.loads((folder / "manifest.json").read_text()).get("key") == key:
        logger.info("reusing the tuned soft prompt in %s", folder)
        return SoftPromptGenerator.load(folder, model, tok)
    gen = SoftPromptGenerator(model, tok, n_virtual=cfg.prompt_tokens,
                              init_text=f"Write a new example of the {task_text(task, cfg.task_text)} task with "
                                        "the given label.")
    pairs = [(condition(task, int(e["label"]), cfg.task_text), target(task, e)) for e in kshot]
    lr = cfg.prompt_lr or 0.25 * gen.embedding_rms()
    logger.info("prompt tuning lr %.2g (token-embedding RMS %.3g)", lr, gen.embedding_rms())
    log = gen.train_supervised(pairs, SoftPromptConfig(lr=lr, epochs=cfg.prompt_epochs,
                                                       batch_size=cfg.prompt_batch_size, seed=cfg.seed))
    gen.save(folder, meta={"key": key, "lr": lr, "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"]})
    gen.snapshot_reference()
    return gen


class Filter:
    """The per-batch filters, which need nothing outside the batch: parse, drop copies of train / validation
    examples and repeats within the batch, embed the rest. The filters against earlier batches (duplicates of
    anything accepted before) run in batch order when the shards are merged (:class:`retrikt.store.shard.Dedup`)."""

    def __init__(self, task, forbidden: set[str], lenient: bool = False):
        self.task, self.forbidden, self.lenient = task, forbidden, lenient

    def __call__(self, samples: list[dict], embedder) -> tuple[list[dict], np.ndarray, dict]:
        stats = {"generated": len(samples), "parsed": 0, "copies": 0, "exact_dups": 0, "near_dups": 0}
        kept, seen = [], set()
        for s in samples:
            fields = parse(self.task, s["text"], lenient=self.lenient)
            if fields is None:
                continue
            stats["parsed"] += 1
            key = example_key(self.task, fields)
            if key in self.forbidden:
                stats["copies"] += 1
            elif key in seen:
                stats["exact_dups"] += 1
            else:
                seen.add(key)
                kept.append({"fields": fields, "tokens": len(s["tokens"]), "finished": s.get("finished", True)})
        emb = embed_texts(embedder, [embed_text(self.task, k["fields"]) for k in kept])
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


def _check_rl_backend(cfg: BuildConfig, out: Path, world: int) -> None:
    """TRL's GRPO / RLOO trainers bring their own Accelerator, which under accelerate launch would wait in collectives
    for ranks that are not training (only rank 0 refines the prompt). Refuse unless the refined prompt is saved."""
    if world == 1 or cfg.rl not in ("grpo", "rloo"):
        return
    from retrikt.rl.refine import _key
    manifest = out / "prompt-rl" / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("key") != _key(cfg):
        raise RetriktError(f"--rl {cfg.rl} cannot run inside accelerate launch (TRL's trainer would wait for the "
                           f"other ranks); use --rl ppo, or run the build with one process until {manifest.parent} "
                           "is saved (the log says so), stop it, and launch again: the refined prompt is reused")


def shared_generator(cfg: BuildConfig, task, model, tok, kshot: list[dict], embedder, out: Path, state, labeller):
    """Rank 0 tunes (and RL-refines) the soft prompt and saves it; the other ranks wait for it, then load it."""
    if state.is_main_process:
        gen = tuned_generator(cfg, task, model, tok, kshot, out)
        if cfg.rl != "none":
            from retrikt.rl.refine import refine_prompt
            gen = refine_prompt(cfg, task, gen, model, tok, kshot, embedder, out, labeller)
    state.wait_for_everyone()
    if state.is_main_process:
        return gen
    from retrikt.teacher.softprompt import SoftPromptGenerator
    folder = out / ("prompt" if cfg.rl == "none" else "prompt-rl")
    if not (folder / "manifest.json").exists():
        raise RetriktError(f"rank {state.process_index}: rank 0 left no soft prompt in {folder}")
    return SoftPromptGenerator.load(folder, model, tok)


def labeller_spec(cfg: BuildConfig) -> dict:
    """What labels the store, as the manifest records it beside the generator (``teacher``)."""
    spec = {"kind": cfg.labeller, "model": cfg.labeller_model or cfg.teacher}
    if cfg.labeller == "adapted":
        spec["recipe"] = {k: v for k, v in asdict(adapt_config(cfg)).items() if k != "teacher_cache"}
    elif cfg.labeller == "icl":
        spec.update(demos=cfg.label_demos, calibration=cfg.label_calibration)
    else:
        spec["calibration"] = cfg.label_calibration
    return spec


def _labeller(cfg: BuildConfig, task, kshot: list[dict], model, tok, state) -> LMClassifier:
    """The store's labeller; the generator's loaded copy serves it unless it is another model or adapted."""
    from retrikt.dist import rank_device
    same = (cfg.labeller_model or cfg.teacher) == cfg.teacher
    if cfg.labeller == "adapted" and not state.is_main_process:
        state.wait_for_everyone()  # rank 0 trains (or finds) the adapter first; the others then load it
    clf, info = make_labeller(cfg.labeller, cfg.labeller_model or cfg.teacher, task, kshot, cfg.seed,
                              demos=cfg.label_demos, calibration=cfg.label_calibration, adapt=adapt_config(cfg),
                              device=rank_device(cfg.device), model=model if same else None,
                              tokenizer=tok if same else None)
    if cfg.labeller == "adapted" and state.is_main_process:
        state.wait_for_everyone()
    logger.info("labeller: %s", info)
    return clf


def _load_models(cfg: BuildConfig, state):
    from retrikt.dist import rank_device
    device = rank_device(cfg.device)
    # Ranks load at once: a missing cache entry is built by one of them while the others wait on its lock.
    models.check_ram(cfg.teacher)
    model, tok = models.load_causal_lm(cfg.teacher, device=device)
    return model, tok, models.load_sentence_transformer(cfg.embedder, device=device)


def generate_shard(cfg: BuildConfig, task, gen, filt: Filter, labeller: LMClassifier, embedder, meta: dict,
                   folder: Path, batches: list[tuple[int, int, int]]) -> None:
    """Generate, filter and label ``batches`` into the shard ``folder``; batches it already holds are skipped."""
    from retrikt.store import StoreWriter
    with StoreWriter(folder, meta) as shard:
        repair_log(folder / LOG)
        done = shard.done_batches()
        todo = [b for b in batches if b[0] not in done]
        logger.info("%s: %d of %d generation batches left", folder, len(todo), len(batches))
        for batch_id, label, n in tqdm(todo, desc=f"batches {folder.name}", leave=False, disable=None):
            tg = time.perf_counter()
            samples = gen.generate([condition(task, label, cfg.task_text)], n_per_condition=n,
                                   max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                   seed=cfg.seed * 1_000_003 + batch_id, max_time=cfg.batch_timeout)
            gen_s = time.perf_counter() - tg
            kept, emb, stats = filt(samples, embedder)
            entries = _label(labeller, task, kept, label)
            for e in entries:
                e["meta"][BATCH_TAG] = batch_id
            append_jsonl(folder / LOG, stats | {"batch_id": batch_id, "label": label, "candidates": len(entries),
                                                "generate_seconds": gen_s, "shard": folder.name,
                                                "new_tokens": sum(len(s["tokens"]) for s in samples)})
            shard.add_batch(batch_id, entries, emb)


def _task_data(task, cfg: BuildConfig) -> tuple[list[dict], set[str]]:
    """The k-shot examples the prompt is tuned on, and the keys of every train / validation example (copies)."""
    pool = load_split(task, "train", data_dir=cfg.data_dir)
    kshot = sample_few_shot(pool, n=cfg.shots, seed=cfg.seed) if cfg.shots else pool
    forbidden = {example_key(task, e) for e in pool}
    forbidden |= {example_key(task, e) for e in load_split(task, "validation", data_dir=cfg.data_dir)}
    return kshot, forbidden


def build_store(cfg: BuildConfig) -> Path:
    """Run (or resume) a whole build; returns the store folder, finished when this returns.

    Under ``accelerate launch`` every rank runs this: rank 0 tunes the prompt, each rank generates its round-robin
    share of the batches into its shard, rank 0 merges the shards. One process is the same with one shard."""
    from retrikt.dist import process_state
    from retrikt.store import StoreWriter
    task = get_task(cfg.task)
    if task.is_regression:
        raise RetriktError(f"store building conditions generation on a label; {task.name} is a regression task")
    out = Path(cfg.out or f"stores/{task.name}-{cfg.teacher.replace('/', '_')}")
    state = process_state(cfg.dist_timeout)
    _check_rl_backend(cfg, out, state.num_processes)
    kshot, forbidden = _task_data(task, cfg)
    t0 = time.perf_counter()
    model, tok, embedder = _load_models(cfg, state)
    meta = {"task": task.name, "teacher": cfg.teacher, "config": asdict(cfg),
            "embedder": {"name": cfg.embedder, "dim": embedding_dim(embedder), "normalize": True},
            "generator": cfg.teacher, "labeller": labeller_spec(cfg), "seed": cfg.seed,
            "kshot_idx": [e["idx"] for e in kshot]}
    plan = batch_plan(task, cfg)
    # Rank 0 holds the store folder's lock for the whole build, so a second build into it is refused at once.
    with StoreWriter(out, meta) if state.is_main_process else contextlib.nullcontext() as writer:
        labeller = _labeller(cfg, task, kshot, model, tok, state)
        gen = shared_generator(cfg, task, model, tok, kshot, embedder, out, state, labeller)
        filt = Filter(task, forbidden, lenient=cfg.parse_mode == "lenient")
        generate_shard(cfg, task, gen, filt, labeller, embedder, meta, shard_dir(out, state.process_index),
                       rank_batches(plan, state.process_index, state.num_processes))
        state.wait_for_everyone()
        if writer is not None:
            stats = summarise_log(merge_shards(writer, task, plan, out, cfg.dedup_threshold))
            writer.finalize(index_kind=cfg.index, extra_meta={"stats": stats, "world_size": state.num_processes,
                                                              "build_seconds": time.perf_counter() - t0})
            logger.info("store %s: %d entries, parse rate %.2f, keep rate %.2f, teacher agreement %.2f", out,
                        stats["kept"], stats["parse_rate"], stats["keep_rate"], stats["agreement"])
    state.wait_for_everyone()
    return out
