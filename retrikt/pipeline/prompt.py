"""The generator's soft prompt: tuned on the seed's k-shot pairs (and RL-refined), saved, and shared by the ranks."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from retrikt.io import RetriktError
from retrikt.pipeline.config import BuildConfig, prompt_key, refine_key
from retrikt.pipeline.conditions import Conditioner
from retrikt.store.samples import task_text

logger = logging.getLogger(__name__)


def tuned_generator(cfg: BuildConfig, task, model, tok, kshot: list[dict], out: Path):
    from retrikt.teacher.softprompt import SoftPromptConfig, SoftPromptGenerator
    folder, key = out / "prompt", prompt_key(cfg)
    if (folder / "manifest.json").exists() and json.loads((folder / "manifest.json").read_text()).get("key") == key:
        logger.info("reusing the tuned soft prompt in %s", folder)
        return SoftPromptGenerator.load(folder, model, tok)
    gen = SoftPromptGenerator(model, tok, n_virtual=cfg.prompt_tokens,
                              init_text=f"Write a new example of the {task_text(task, cfg.task_text)} task with "
                                        "the given label.")
    lr = cfg.prompt_lr or 0.25 * gen.embedding_rms()
    meta = {"key": key, "lr": lr}
    if cfg.prompt_epochs > 0:  # 0: the instruction's own embeddings, untuned (the A/B's baseline)
        logger.info("prompt tuning lr %.2g (token-embedding RMS %.3g)", lr, gen.embedding_rms())
        pairs = Conditioner(cfg, task, tok, kshot).pairs(kshot, cfg.seed)
        tune = SoftPromptConfig(lr=lr, epochs=cfg.prompt_epochs, batch_size=cfg.prompt_batch_size, seed=cfg.seed)
        _check_demos_fit(cfg, task, gen, pairs, tune.max_length)
        log = gen.train_supervised(pairs, tune)
        meta |= {"loss_first": log[0]["loss"], "loss_last": log[-1]["loss"]}
    gen.save(folder, meta=meta)
    gen.snapshot_reference()
    return gen


def _check_demos_fit(cfg: BuildConfig, task, gen, pairs: list[tuple[str, str]], max_length: int) -> None:
    """Same-label demonstrations lengthen every condition; on a task of long examples (CB) a few of them leave no
    room for the target, which the tuner would report without naming the option that caused it."""
    if not cfg.gen_demos:
        return
    longest = max(len(gen._tokenize(c, True)) for c, _ in pairs)  # counted as the tuner counts them
    if longest >= max_length:
        raise RetriktError(f"--gen-demos {cfg.gen_demos}: with its same-label demonstrations a {task.name} "
                           f"condition is up to {longest} tokens, and prompt tuning keeps {max_length} per pair "
                           "(condition and target): use fewer --gen-demos")


def check_rl_backend(cfg: BuildConfig, out: Path, world: int) -> None:
    """TRL's GRPO / RLOO trainers bring their own Accelerator, which under accelerate launch would wait in collectives
    for ranks that are not training (only rank 0 refines the prompt). Refuse unless the refined prompt is saved."""
    if world == 1 or cfg.rl not in ("grpo", "rloo"):
        return
    manifest = out / "prompt-rl" / "manifest.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("key") != refine_key(cfg):
        raise RetriktError(f"--rl {cfg.rl} cannot run inside accelerate launch (TRL's trainer would wait for the "
                           f"other ranks); use --rl ppo, or run the build with one process until {manifest.parent} "
                           "is saved (the log says so), stop it, and launch again: the refined prompt is reused")


def shared_generator(cfg: BuildConfig, task, model, tok, kshot: list[dict], embedder, out: Path, state, labeller):
    """Rank 0 tunes (and RL-refines) the soft prompt and saves it; the other ranks wait for it, then load it."""
    if state.is_main_process:
        gen = tuned_generator(cfg, task, model, tok, kshot, out)
        if cfg.rl != "none":
            from retrikt.pipeline.refine import refine_prompt
            gen = refine_prompt(cfg, task, gen, model, tok, kshot, embedder, out, labeller)
    state.wait_for_everyone()
    if state.is_main_process:
        return gen
    from retrikt.teacher.softprompt import SoftPromptGenerator
    folder = out / ("prompt" if cfg.rl == "none" else "prompt-rl")
    if not (folder / "manifest.json").exists():
        raise RetriktError(f"rank {state.process_index}: rank 0 left no soft prompt in {folder}")
    return SoftPromptGenerator.load(folder, model, tok)
