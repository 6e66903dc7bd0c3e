"""Build a knowledge store: soft prompt -> generate -> parse -> filter -> embed -> teacher-label -> agreement filter ->
FAISS store. ``--source oracle`` builds a reference store instead: training inputs (minus the seed's k-shot examples)
through the same filter / label / embed / write path, with no prompt tuning or generation.

Every stage that costs minutes is checkpointed in the output folder, so an interrupted build re-run with the same
command continues from its last finished batch: the tuned prompt (``prompt/``, ``prompt-rl/``), each rank's shard
of labelled candidates (``shards/rank-<k>/``: one part per generation batch, its own ``build_log.jsonl``). The
duplicate filters then run over all shards in batch order into the store itself (``parts/``, ``build_log.jsonl``,
the index, the manifest); see :mod:`retrikt.store.shard`. ``accelerate launch`` runs it on N ranks, plain
``python -m retrikt.build`` on one: the same code with one shard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path


from retrikt import models
from retrikt.config import arg
from retrikt.io import RetriktError, append_jsonl
from retrikt.progress import progress
from retrikt.store.filters import Filter, agreement, label_entries, summarise_log
from retrikt.store.oracle import oracle_draw, oracle_inputs
from retrikt.store.samples import condition, embedding_dim, example_key, target, task_text
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
    per_label: int = arg(200, help="samples generated per label (before filtering); --label-mix kshot spreads "
                                   "per_label x labels in all over the labels")
    source: str = arg("generated", help="what the store holds: generated (soft-prompted teacher samples) | oracle (a "
                                        "reference store: training inputs other than the seed's k-shot examples, "
                                        "labelled by the same labeller; no generation)",
                      choices=["generated", "oracle"])
    label_mix: str = arg("kshot", help="samples per label: kshot (in proportion to the k-shot set's label counts, "
                                       "each label it holds at least one batch) | uniform (per_label each)",
                         choices=["kshot", "uniform"])
    keep_unfinished: bool = arg(False, help="keep samples cut off before end-of-sequence (by --max-new-tokens or "
                                            "--batch-timeout); dropped by default, counted as unfinished")
    drop_label_words: bool = arg(True, help="drop a sample whose text names its own conditioned label (its name, or "
                                            "its verbaliser unless that is yes / no / maybe / true / false); counted "
                                            "as label_words either way")
    min_agreement: float = arg(0.5, help="keep a sample only when the labeller's argmax is its conditioned label with "
                                         "at least this probability; 0 keeps all (counted as disagree either way)")
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
    max_new_tokens: int = arg(128, help="longest generated sample, in tokens; 0 = auto: 1.5 x the longest k-shot "
                                        "target in teacher tokens, plus 8")
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
         "dedup_threshold": 0.9999,  # random tiny embeddings are all close: only drop true duplicates
         # a random generator rarely ends a sample and a random labeller agrees by chance: keep them, or no smoke
         # store would have entries
         "keep_unfinished": True, "min_agreement": 0.0}


def prompt_key(cfg: BuildConfig) -> str:
    """What the tuned prompt depends on; a saved prompt with another key is not reused."""
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    blob = {k: getattr(cfg, k) for k in keys}
    if cfg.task_text != "name":  # prompts tuned before the option existed keep their key
        blob["task_text"] = cfg.task_text
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


BATCH_STRIDE = 100_000  # batch id = label x BATCH_STRIDE + the batch's number within its label


def label_counts(task, cfg: BuildConfig, kshot: list[dict]) -> list[int]:
    """Samples to generate (an oracle store: inputs to draw) per label.

    uniform: ``per_label`` each. kshot: ``per_label x num_labels`` in all, split in proportion to the k-shot set's
    label counts: the floors, then the leftover one at a time to the largest remainders (ties: the lower label); then
    each label the k-shot set holds is raised to one batch (``batch_size``, or an equal share of the total when that
    is smaller), one sample at a time from the largest count (ties: the lower label). A label the k-shot set lacks
    gets none: the prompt and the labeller saw no example of it."""
    n = task.num_labels
    if cfg.label_mix == "uniform":
        return [cfg.per_label] * n
    seen = Counter(int(e["label"]) for e in kshot)
    total = cfg.per_label * n
    exact = [total * seen[lab] / max(1, sum(seen.values())) for lab in range(n)]
    counts = [math.floor(x) for x in exact]
    for lab in sorted(range(n), key=lambda lab: (counts[lab] - exact[lab], lab))[:total - sum(counts)]:
        counts[lab] += 1
    present = [lab for lab in range(n) if seen[lab]]
    least = min(cfg.batch_size, total // max(1, len(present)))
    for lab in present:
        while counts[lab] < least:  # the largest count is above `least` while any present label is below it
            donor = max(range(n), key=lambda d: (counts[d], -d))
            counts[donor], counts[lab] = counts[donor] - 1, counts[lab] + 1
    return counts


def batch_plan(counts: list[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(batch_id, label, n) for every batch, ``counts[label]`` samples per label. An id depends only on the label and
    the batch's number within it, and the counts only on the config and the seed's k-shot set, so a resumed build
    plans the same batches and skips the finished ones."""
    plan = []
    for label, count in enumerate(counts):
        for j in range(math.ceil(count / batch_size)):
            plan.append((label * BATCH_STRIDE + j, label, min(batch_size, count - j * batch_size)))
    return plan


def auto_max_new_tokens(task, tok, kshot: list[dict]) -> tuple[int, int]:
    """(max_new_tokens, longest k-shot target in tokens): 1.5 x the longest target, rounded up, plus 8, so a sample
    as long as the longest real example still ends with room to spare."""
    longest = max(len(tok(target(task, e), add_special_tokens=False)["input_ids"]) for e in kshot)
    return math.ceil(1.5 * longest) + 8, longest


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


def _generated_draw(cfg: BuildConfig, task, gen):
    """A batch of samples for :func:`generate_shard`: ``n`` generations conditioned on ``label``, seeded by the
    batch id, so a re-run batch generates the same samples."""
    def draw(batch_id: int, label: int, n: int) -> list[dict]:
        samples = gen.generate([condition(task, label, cfg.task_text)], n_per_condition=n,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               batch_size=cfg.batch_size, seed=cfg.seed * 1_000_003 + batch_id,
                               max_time=cfg.batch_timeout)
        return [dict(s, label=label) for s in samples]
    return draw


def generate_shard(cfg: BuildConfig, draw, filt: Filter, labeller: LMClassifier, embedder, meta: dict,
                   folder: Path, batches: list[tuple[int, int, int]]) -> None:
    """Draw (generate, or take the oracle inputs of), filter and label ``batches`` into the shard ``folder``;
    batches it already holds are skipped. ``draw(batch_id, label, n)`` gives a batch's samples."""
    from retrikt.store import StoreWriter
    with StoreWriter(folder, meta) as shard:
        repair_log(folder / LOG)
        done = shard.done_batches()
        todo = [b for b in batches if b[0] not in done]
        logger.info("%s: %d of %d batches left", folder, len(todo), len(batches))
        for batch_id, label, n in progress(todo, desc=f"batches {folder.name}", leave=False):
            tg = time.perf_counter()
            samples = draw(batch_id, label, n)
            gen_s = time.perf_counter() - tg
            kept, emb, stats = filt(samples, embedder)
            entries = label_entries(labeller, kept)
            keep, agreed = agreement(kept, entries, cfg.min_agreement)
            entries = [entries[i] for i in keep]
            for e in entries:
                e["meta"][BATCH_TAG] = batch_id
            append_jsonl(folder / LOG, stats | agreed | {
                "batch_id": batch_id, "label": label, "candidates": len(entries), "generate_seconds": gen_s,
                "shard": folder.name, "new_tokens": sum(len(s.get("tokens", ())) for s in samples)})
            shard.add_batch(batch_id, entries, emb[keep])


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
    if not 0 <= cfg.min_agreement <= 1:
        raise RetriktError(f"--min-agreement is a probability (0 disables the filter), got {cfg.min_agreement}")


def _meta(cfg: BuildConfig, task, embedder, kshot: list[dict], counts: list[int]) -> dict:
    return {"task": task.name, "teacher": cfg.teacher, "config": asdict(cfg),
            "embedder": {"name": cfg.embedder, "dim": embedding_dim(embedder), "normalize": True},
            "source": cfg.source, "generator": cfg.teacher if cfg.source == "generated" else None,
            "labeller": labeller_spec(cfg), "seed": cfg.seed, "kshot_idx": [e["idx"] for e in kshot],
            "label_counts": counts}


def build_store(cfg: BuildConfig) -> Path:
    """Run (or resume) a whole build; returns the store folder, finished when this returns.

    Under ``accelerate launch`` every rank runs this: rank 0 tunes the prompt, each rank generates its round-robin
    share of the batches into its shard, rank 0 merges the shards. One process is the same with one shard."""
    from retrikt.dist import process_state
    from retrikt.store import StoreWriter
    task = get_task(cfg.task)
    _check_config(task, cfg)
    suffix = "-oracle" if cfg.source == "oracle" else ""
    out = Path(cfg.out or f"stores/{task.name}-{cfg.teacher.replace('/', '_')}{suffix}")
    state = process_state(cfg.dist_timeout)
    _check_rl_backend(cfg, out, state.num_processes)
    pool, kshot, forbidden = _task_data(task, cfg)
    t0 = time.perf_counter()
    model, tok, embedder = _load_models(cfg, state)
    cfg, auto = _resolve_max_new_tokens(cfg, task, tok, kshot)
    counts = label_counts(task, cfg, kshot)
    drawn = oracle_inputs(task, pool, kshot, counts, cfg.seed) if cfg.source == "oracle" else None
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
            draw = _generated_draw(cfg, task, shared_generator(cfg, task, model, tok, kshot, embedder, out, state,
                                                               labeller))
        filt = Filter(task, forbidden, lenient=cfg.parse_mode == "lenient", keep_unfinished=cfg.keep_unfinished,
                      drop_label_words=cfg.drop_label_words)
        generate_shard(cfg, draw, filt, labeller, embedder, meta, shard_dir(out, state.process_index),
                       rank_batches(plan, state.process_index, state.num_processes))
        state.wait_for_everyone()
        if writer is not None:
            _finish(writer, task, plan, out, cfg, state.num_processes, t0)
    state.wait_for_everyone()
    return out


def _finish(writer, task, plan: list[tuple[int, int, int]], out: Path, cfg: BuildConfig, world: int,
            t0: float) -> None:
    """Rank 0: merge the shards through the duplicate filters, write the index and the manifest."""
    stats = summarise_log(merge_shards(writer, task, plan, out, cfg.dedup_threshold))
    writer.finalize(index_kind=cfg.index, extra_meta={"stats": stats, "world_size": world,
                                                      "build_seconds": time.perf_counter() - t0})
    logger.info("store %s: %d entries of %d %s; filters caught %d unfinished, %d naming their label, "
                "%d disagreeing; keep rate %.2f, teacher agreement %.2f", out, stats["kept"], stats["generated"],
                "drawn inputs" if cfg.source == "oracle" else "samples", stats["unfinished"], stats["label_words"],
                stats["disagree"], stats["keep_rate"], stats["agreement"])
