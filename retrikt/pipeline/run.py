"""Build a knowledge store: soft prompt -> generate -> parse -> filter -> embed -> teacher-label -> agreement filter ->
FAISS store. ``--source oracle`` builds a reference store instead: training inputs (minus the seed's k-shot examples)
through the same filter / label / embed / write path, with no prompt tuning or generation.

Every stage that costs minutes is checkpointed in the output folder, so an interrupted build re-run with the same
command continues from its last finished batch: the tuned prompt (``prompt/``, ``prompt-rl/``), each rank's shard
of labelled candidates (``shards/rank-<k>/``: one part per generation batch, its own ``build_log.jsonl``). The
duplicate filters then run over all shards in batch order into the store itself (``parts/``, ``build_log.jsonl``,
the index, the manifest); see :mod:`retrikt.store.shard`. The stages live beside this orchestrator in
:mod:`retrikt.pipeline` (config, plan, prompt, refine, filters, oracle); :mod:`retrikt.store` keeps only storage. ``accelerate launch`` runs it on N ranks, plain
``python -m retrikt.build`` on one: the same code with one shard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from retrikt import models
from retrikt.io import IntegrityError, RetriktError, append_jsonl, atomic_write_json, peak_rss_gib, read_manifest
from retrikt.pipeline.config import BuildConfig
from retrikt.pipeline.filters import Filter, YieldWatch, agreement, label_entries, summarise_log
from retrikt.pipeline.oracle import oracle_draw, oracle_inputs
from retrikt.pipeline.perturb import check_perturb, perturbed_draw
from retrikt.pipeline.plan import (BATCH_STRIDE, MAX_SAMPLES_FACTOR, auto_max_new_tokens, batch_plan, label_counts,
                                   more_batches, sampling_seed)
from retrikt.pipeline.conditions import Conditioner
from retrikt.pipeline.prompt import check_rl_backend, shared_generator
from retrikt.progress import progress
from retrikt.store.samples import embed_examples, embedding_dim, example_key, missing_field
from retrikt.store.shard import (BATCH_TAG, LOG, SHARDS, count_kept, last_records, merge_shards, rank_batches,
                                 repair_log, shard_dir)
from retrikt.tasks import get_task, load_split, sample_few_shot
from retrikt.teacher.adapted import adapt_config
from retrikt.teacher.labeller import make_labeller
from retrikt.teacher.lm import LMClassifier

logger = logging.getLogger(__name__)
ROUNDS = "rounds.json"  # --min-entries: rank 0's last decision, read by the other ranks


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
    """The generator (none for an oracle store: its labeller loads what it needs) and the embedder."""
    from retrikt.dist import rank_device
    device = rank_device(cfg.device)
    model = tok = None
    if cfg.source == "generated":
        # Ranks load at once: a missing cache entry is built by one of them while the others wait on its lock.
        models.check_ram(cfg.teacher)
        model, tok = models.load_causal_lm(cfg.teacher, device=device)
    return model, tok, models.load_sentence_transformer(cfg.embedder, device=device)


def _resolve_max_new_tokens(cfg: BuildConfig, task, tok, kshot: list[dict]) -> tuple[BuildConfig, dict]:
    """The config with --max-new-tokens 0 (auto) replaced by the chosen length, and what the manifest records of
    the choice; the manifest's config then holds the length the samples were generated with."""
    if cfg.max_new_tokens < 0:
        raise RetriktError(f"--max-new-tokens must be >= 0 (0 = auto), got {cfg.max_new_tokens}")
    if cfg.max_new_tokens or cfg.source == "oracle":
        return cfg, {}
    chosen, longest = auto_max_new_tokens(task, tok, kshot)
    logger.info("--max-new-tokens auto: %d (the longest of the %d k-shot targets is %d teacher tokens)", chosen,
                len(kshot), longest)
    return dataclasses.replace(cfg, max_new_tokens=chosen), {"max_new_tokens_auto": {"longest_kshot_target": longest,
                                                                                     "chosen": chosen}}


def _generated_draw(cfg: BuildConfig, task, gen, conditioner):
    """A batch of samples for :func:`generate_shard`: ``n`` generations conditioned on ``label``, seeded by the
    batch id (sampling and the demonstrations' draw), so a re-run batch generates the same samples."""
    def draw(batch_id: int, label: int, n: int) -> list[dict]:
        seed = sampling_seed(cfg) * 1_000_003 + batch_id
        samples = gen.generate(conditioner.batch(label, n, seed), n_per_condition=1,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               batch_size=cfg.batch_size, seed=seed, max_time=cfg.batch_timeout)
        if cfg.complete_fields:
            samples = complete_fields(cfg, task, gen, samples, seed)
        return [dict(s, label=label) for s in samples]
    return draw


def complete_fields(cfg: BuildConfig, task, gen, samples: list[dict], seed: int) -> list[dict]:
    """Continue each finished sample that stopped after its first field(s) from the next field's cue, once. Some
    soft prompts end most samples after the premise (CB seed 3, sessions 18-19) and longer tuning does not teach
    them the second field; the first field is then worth keeping and the cue asks for the rest."""
    todo = [(i, f) for i, s in enumerate(samples) if s["finished"] and (f := missing_field(task, s["text"]))]
    if not todo:
        return samples
    heads = [samples[i]["text"].rstrip() + f"\n{f}:" for i, f in todo]
    more = gen.generate([samples[i]["condition"] + h for (i, _), h in zip(todo, heads)], n_per_condition=1,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        # its own seed, not the batch's (which would replay the first pass's draws); derived from
                        # the batch seed, so a re-run batch continues the same samples the same way
                        batch_size=cfg.batch_size, seed=seed + 500_009, max_time=cfg.batch_timeout)
    out = list(samples)
    for (i, _), head, m in zip(todo, heads, more):
        out[i] = dict(samples[i], text=head + m["text"], finished=m["finished"], completed=True,
                      tokens=list(samples[i].get("tokens", ())) + list(m.get("tokens", ())))
    return out


def generate_shard(cfg: BuildConfig, draw, filt: Filter, labeller: LMClassifier, embedder, meta: dict,
                   folder: Path, batches: list[tuple[int, int, int]]) -> None:
    """Draw (generate, or take the oracle inputs of), filter and label ``batches`` into the shard ``folder``;
    batches it already holds are skipped. ``draw(batch_id, label, n)`` gives a batch's samples."""
    from retrikt.store import StoreWriter
    with StoreWriter(folder, meta) as shard:
        repair_log(folder / LOG)
        done, logged = shard.done_batches(), last_records(folder / LOG)
        # a batch written at another size (an earlier run planned it otherwise) is redone; records before the
        # field was logged are taken as they are
        redo = {b for b, _, n in batches if b in done and logged.get(b, {}).get("n", n) != n}
        todo = [b for b in batches if b[0] not in done or b[0] in redo]
        logger.info("%s: %d of %d batches left", folder, len(todo), len(batches))
        watch = YieldWatch()
        for batch_id, label, n in progress(todo, desc=f"batches {folder.name}", leave=False):
            tg = time.perf_counter()
            samples = draw(batch_id, label, n)
            gen_s = time.perf_counter() - tg
            kept, emb, stats = filt(samples, embedder)
            if cfg.source == "generated" and cfg.perturb_label < 0:
                watch.add(stats, cfg.prompt_epochs, cfg.keep_unfinished)
            entries = label_entries(labeller, kept)
            keep, agreed = agreement(kept, entries, cfg.min_agreement)
            entries = [entries[i] for i in keep]
            for e in entries:
                e["meta"][BATCH_TAG] = batch_id
            append_jsonl(folder / LOG, stats | agreed | {
                "batch_id": batch_id, "label": label, "n": n, "candidates": len(entries), "generate_seconds": gen_s,
                "shard": folder.name, "new_tokens": sum(len(s.get("tokens", ())) for s in samples)})
            shard.add_batch(batch_id, entries, emb[keep], overwrite=batch_id in redo)


def _task_data(task, cfg: BuildConfig) -> tuple[list[dict], list[dict], set[str]]:
    """The training split, its k-shot examples (the prompt is tuned and the labeller adapted on them), and the keys
    no entry may have: every train / validation example for a generated store (copies); for an oracle store, drawn
    from the training split, the validation and k-shot examples (also training inputs with the same text)."""
    pool = load_split(task, "train", data_dir=cfg.data_dir)
    kshot = sample_few_shot(pool, n=cfg.shots, seed=cfg.seed) if cfg.shots else pool
    forbidden = {example_key(task, e) for e in (pool if cfg.source == "generated" else kshot)}
    forbidden |= {example_key(task, e) for e in load_split(task, "validation", data_dir=cfg.data_dir)}
    return pool, kshot, forbidden


def _check_config(task, cfg: BuildConfig) -> None:
    if task.is_regression:
        raise RetriktError(f"store building conditions generation on a label; {task.name} is a regression task")
    if cfg.source == "oracle" and cfg.rl != "none":
        raise RetriktError(f"--source oracle generates nothing, so --rl {cfg.rl} has no prompt to refine")
    if cfg.source == "oracle" and not cfg.shots:
        raise RetriktError("--source oracle draws the training inputs outside the k-shot set; --shots 0 takes them "
                           "all")
    if cfg.perturb_label >= 0:
        if cfg.source == "oracle":
            raise RetriktError("--perturb-label corrupts generated samples; --source oracle generates none")
        check_perturb(task, cfg.perturb_label)
    if cfg.draw < 0:
        raise RetriktError(f"--draw counts draws from 0 (the seed's own), got {cfg.draw}")
    if cfg.min_entries < 0 or cfg.max_samples < 0:
        raise RetriktError(f"--min-entries and --max-samples count (0 = off / the default), got {cfg.min_entries} "
                           f"and {cfg.max_samples}")
    if cfg.max_samples and not cfg.min_entries:
        raise RetriktError("--max-samples caps the rounds of --min-entries; without it a build generates the "
                           "planned samples (--per-label)")
    if not 0 <= cfg.min_agreement <= 1:
        raise RetriktError(f"--min-agreement is a probability (0 disables the filter), got {cfg.min_agreement}")


def _meta(cfg: BuildConfig, task, embedder, kshot: list[dict], counts: list[int]) -> dict:
    return {"task": task.name, "teacher": cfg.teacher, "config": asdict(cfg),
            "embedder": {"name": cfg.embedder, "dim": embedding_dim(embedder), "normalize": True,
                         "pair_format": "pair"},
            "source": cfg.source, "generator": cfg.teacher if cfg.source == "generated" else None,
            "labeller": labeller_spec(cfg), "seed": cfg.seed, "draw": cfg.draw,
            "kshot_idx": [e["idx"] for e in kshot], "label_counts": counts}


def build_store(cfg: BuildConfig) -> Path:
    """Run (or resume) a whole build; returns the store folder, finished when this returns.

    Under ``accelerate launch`` every rank runs this: rank 0 tunes the prompt, each rank generates its round-robin
    share of the batches into its shard, rank 0 merges the shards. One process is the same with one shard."""
    from retrikt.dist import process_state
    from retrikt.store import StoreWriter
    task = get_task(cfg.task)
    _check_config(task, cfg)
    if cfg.source == "oracle" and cfg.min_entries:  # a recipe's size target is for the generated store
        logger.info("--source oracle: --min-entries %d ignored; the oracle store draws the planned inputs "
                    "(--per-label)", cfg.min_entries)
        cfg = dataclasses.replace(cfg, min_entries=0, max_samples=0)
    suffix = "-oracle" if cfg.source == "oracle" else ""
    out = Path(cfg.out or f"stores/{task.name}-{cfg.teacher.replace('/', '_')}{suffix}")
    state = process_state(cfg.dist_timeout)
    check_rl_backend(cfg, out, state.num_processes)
    pool, kshot, forbidden = _task_data(task, cfg)
    t0 = time.perf_counter()
    model, tok, embedder = _load_models(cfg, state)
    cfg, auto = _resolve_max_new_tokens(cfg, task, tok, kshot)
    counts = label_counts(task, cfg, kshot)
    if cfg.max_samples and cfg.max_samples < sum(counts):
        raise RetriktError(f"--max-samples {cfg.max_samples} is below the {sum(counts)} samples planned by "
                           f"--per-label {cfg.per_label}")
    drawn = oracle_inputs(task, pool, kshot, counts, sampling_seed(cfg)) if cfg.source == "oracle" else None
    if drawn is not None:  # a label may run out of training inputs
        counts = [len(drawn[lab]) for lab in range(task.num_labels)]
    plan = batch_plan(counts, cfg.batch_size)
    meta = _meta(cfg, task, embedder, kshot, counts) | auto
    # Rank 0 holds the store folder's lock for the whole build, so a second build into it is refused at once.
    with StoreWriter(out, meta) if state.is_main_process else contextlib.nullcontext() as writer:
        labeller = _labeller(cfg, task, kshot, model, tok, state)
        if drawn is not None:
            draw = oracle_draw(task, drawn, cfg.batch_size, BATCH_STRIDE)
        else:
            gen = shared_generator(cfg, task, model, tok, kshot, embedder, out, state, labeller)
            draw = _generated_draw(cfg, task, gen, Conditioner(cfg, task, tok, kshot))
            if cfg.perturb_label >= 0:
                draw = perturbed_draw(task, draw, cfg.perturb_label, sampling_seed(cfg),
                                      lenient=cfg.parse_mode == "lenient")
        reference = embed_examples(embedder, task, kshot) if drawn is None else None
        filt = Filter(task, forbidden, lenient=cfg.parse_mode == "lenient", keep_unfinished=cfg.keep_unfinished,
                      drop_label_words=cfg.drop_label_words, reference=reference, threshold=cfg.dedup_threshold)
        if cfg.teacher_keys and hasattr(labeller, "keep_answer_states"):
            labeller.keep_answer_states()  # the keys then reuse the labelling pass instead of a second one
        plan = generate_rounds(cfg, task, out, plan, meta, state, lambda batches: generate_shard(
            cfg, draw, filt, labeller, embedder, meta, shard_dir(out, state.process_index),
            rank_batches(batches, state.process_index, state.num_processes)))
        if writer is not None:
            _finish(writer, task, plan, out, cfg, state.num_processes, t0)
            if cfg.teacher_keys and hasattr(labeller, "answer_states"):
                from retrikt.pipeline.keys import add_teacher_keys
                add_teacher_keys(out, classifier=(labeller, kshot))
            elif cfg.teacher_keys:
                logger.warning("%s: the labeller (%s) has no hidden states; no teacher keys written", out,
                               type(labeller).__name__)
    state.wait_for_everyone()
    return out


def generate_rounds(cfg: BuildConfig, task, out: Path, plan: list[tuple[int, int, int]], meta: dict, state,
                    generate) -> list[tuple[int, int, int]]:
    """Generate the plan's batches (``generate(batches)``: this rank's share, finished ones skipped); with
    --min-entries, then further rounds (plan.more_batches) until the store keeps that many entries or reaches
    --max-samples. Returns the plan with its rounds. Rank 0 counts what the merge would keep and writes each round
    to ``shards/rounds.json`` for the other ranks; a resumed build counts the same shards and plans the same rounds."""
    planned = sum(n for _, _, n in plan)
    while True:
        generate(plan)
        state.wait_for_everyone()
        if not cfg.min_entries:
            return plan
        path = Path(out) / SHARDS / ROUNDS
        if state.is_main_process:
            kept = count_kept(task, plan, out, meta, cfg.dedup_threshold)
            extra = more_batches(plan, meta["label_counts"], kept, cfg)
            samples = sum(n for _, _, n in plan)
            if extra:
                logger.info("%s: %d entries of %d samples, short of --min-entries %d: %d more samples", out, kept,
                            samples, cfg.min_entries, sum(n for _, _, n in extra))
            elif not kept:
                logger.warning("%s: no entry kept of %d samples, so no round is sized by a keep rate; see the build "
                               "log's filter counts", out, samples)
            elif kept < cfg.min_entries:
                logger.warning("%s: %d entries of %d samples, short of --min-entries %d; stopping at the cap of %d "
                               "samples (--max-samples)", out, kept, samples, cfg.min_entries,
                               cfg.max_samples or MAX_SAMPLES_FACTOR * planned)
            atomic_write_json(path, {"kept": kept, "samples": samples, "extra": extra})
        state.wait_for_everyone()
        extra = [tuple(b) for b in json.loads(path.read_text(encoding="utf-8"))["extra"]]
        if not extra:
            return plan
        plan = plan + extra


def _finished_manifest(out: Path) -> dict:
    """The manifest of a finished store at ``out`` ({} for a new or unfinished one)."""
    try:
        return read_manifest(out, verify=False)
    except IntegrityError:
        return {}


def _finish(writer, task, plan: list[tuple[int, int, int]], out: Path, cfg: BuildConfig, world: int,
            t0: float) -> None:
    """Rank 0: merge the shards through the duplicate filters, write the index and the manifest."""
    stats = summarise_log(merge_shards(writer, task, plan, out, cfg.dedup_threshold))
    # a re-run that grows a finished store (--min-entries) adds to its cost: its seconds, the larger of the peaks
    # (the process's peak so far: inside retrikt.compare it may include earlier builds of the same process)
    before = _finished_manifest(out)
    grown = bool(before) and len(plan) > before.get("counts", {}).get("batches", 0)
    seconds = time.perf_counter() - t0
    if before:  # a re-run of a finished store: what its builds cost, plus this run only if it generated more
        seconds = before.get("build_seconds", seconds) + (seconds if grown else 0.0)
    extra = {"stats": stats, "world_size": world, "build_seconds": seconds,
             "peak_rss_gib": max(peak_rss_gib(), before.get("peak_rss_gib", 0.0))}
    if grown:
        extra["earlier_runs_seconds"] = before.get("build_seconds", 0.0)
    if cfg.min_entries:
        planned = sum(writer.meta["label_counts"])
        extra["min_entries"] = {"target": cfg.min_entries, "reached": stats["kept"] >= cfg.min_entries,
                                "planned_samples": planned, "samples": sum(n for _, _, n in plan),
                                "cap": cfg.max_samples or MAX_SAMPLES_FACTOR * planned}
    writer.finalize(index_kind=cfg.index, extra_meta=extra)
    logger.info("store %s: %d entries of %d %s; filters caught %d unfinished, %d naming their label, "
                "%d disagreeing; keep rate %.2f, teacher agreement %.2f", out, stats["kept"], stats["generated"],
                "drawn inputs" if cfg.source == "oracle" else "samples", stats["unfinished"], stats["label_words"],
                stats["disagree"], stats["keep_rate"], stats["agreement"])
    if stats["completed"]:
        logger.info("store %s: %d samples stopped after their first field(s) and were continued; %d of them parse",
                    out, stats["completed"], stats["completed_parsed"])
