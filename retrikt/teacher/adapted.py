"""The adapted teacher: the teacher LLM with a LoRA trained on the seed's own k-shot set, cached on disk.

A zero-shot 0.5B teacher knows less than a 32-shot MiniLM fine-tune (CB 57.1 vs 67.9 in the committed grid), so it
cannot teach it; the same LLM with a LoRA trained on the same 32 examples can. LoRA rather than (IA)³ or prompt
tuning because it is the module the project already measured on these tasks and the one the parametric baseline
trains, so the two teacher rows differ only in what they start from; merged into the weights it costs nothing when
labelling thousands of store entries.

The adapter is saved in PEFT format (``PeftModel.from_pretrained`` loads it) under a key of everything it depends on
(teacher, task, seed, shots, the k-shot examples' indices, the recipe), so every later step of a seed (the teacher
row, store labelling, RL rewards) reuses it, and a changed recipe or k-shot set trains a new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from retrikt import models
from retrikt.config import arg
from retrikt.io import MANIFEST, RetriktError, read_manifest

logger = logging.getLogger(__name__)


@dataclass
class AdaptConfig:
    adapt_r: int = arg(16, help="adapted teacher: LoRA rank (the parametric paper's same-budget LoRA: r 16, alpha r)")
    adapt_alpha: int = arg(16, help="adapted teacher: LoRA alpha")
    adapt_lr: float = arg(3e-4, help="adapted teacher: learning rate (the parametric paper fine-tunes LoRA at 3e-4)")
    adapt_epochs: int = arg(3, help="adapted teacher: passes over the k-shot set (the parametric paper: 3)")
    adapt_batch_size: int = arg(8, help="adapted teacher: examples per optimisation step")
    adapt_max_length: int = arg(256, help="adapted teacher: max tokens per training / scoring input")
    teacher_cache: str | None = arg(None, help="folder of adapted-teacher adapters (default: $RETRIKT_TEACHER_CACHE, "
                                               "else $RETRIKT_CACHE/teachers, else ~/.cache/retrikt/teachers)")


RECIPE = ("adapt_r", "adapt_alpha", "adapt_lr", "adapt_epochs", "adapt_batch_size", "adapt_max_length")


def adapt_config(cfg) -> AdaptConfig:
    """The AdaptConfig fields of any config that carries them (TrainConfig, BuildConfig)."""
    return AdaptConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(AdaptConfig)})


def cache_root(cfg: AdaptConfig) -> Path:
    if cfg.teacher_cache or os.environ.get("RETRIKT_TEACHER_CACHE"):
        return Path(cfg.teacher_cache or os.environ["RETRIKT_TEACHER_CACHE"]).expanduser()
    return Path(os.environ.get("RETRIKT_CACHE") or "~/.cache/retrikt").expanduser() / "teachers"


def adapter_key(teacher: str, task, kshot: list[dict], seed: int, cfg: AdaptConfig) -> dict:
    """Everything the adapter depends on. The k-shot indices and a hash of their prompts and labels, not just seed
    and shots: a changed data file, sampler or prompt gives another k-shot set from the same seed."""
    # what the examples say, too: a relabelled or edited data file keeps its indices
    content = [[task.prompt(e), task.continuations(e), e.get("label")] for e in kshot]
    return {"teacher": str(teacher), "task": task.name, "seed": int(seed), "shots": len(kshot),
            "kshot_idx": [e.get("idx") for e in kshot], "recipe": {k: getattr(cfg, k) for k in RECIPE},
            "kshot_sha256": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()}


def adapter_folder(key: dict, cfg: AdaptConfig) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = str(key["teacher"]).replace("/", "_")
    return cache_root(cfg) / f"{key['task']}-{slug}-s{key['seed']}-k{key['shots']}-{digest}"


def cached_key(folder: Path) -> dict | None:
    """The key a finished adapter folder was trained under (None when absent or unfinished)."""
    if not (folder / MANIFEST).exists():
        return None
    read_manifest(folder, verify=True)
    sidecar = json.loads((folder / "retrikt_adapter.json").read_text(encoding="utf-8"))
    return (sidecar.get("extra") or {}).get("key")


def adapted_teacher(teacher: str, task, kshot: list[dict], seed: int, cfg: AdaptConfig, device="cpu",
                    merge: bool = True):
    """(model, tokenizer, info): the teacher with its seed's LoRA, trained now or loaded from the cache.

    ``merge`` folds the LoRA into the weights (inference only: scoring runs at the base model's speed)."""
    from peft import PeftModel

    from retrikt.init.adapters import lora_config_for, save_adapter, seeded_peft_model
    from retrikt.student.trainer import FitConfig, fit
    from retrikt.teacher.lm import LMClassifier
    if not kshot:
        raise RetriktError("the adapted teacher needs labelled k-shot examples (got none)")
    key = adapter_key(teacher, task, kshot, seed, cfg)
    folder = adapter_folder(key, cfg)
    model, tok = models.load_causal_lm(teacher, device=device)
    t0 = time.perf_counter()
    if cached_key(folder) == key:
        logger.info("reusing the adapted teacher in %s", folder)
        peft_model, reused = PeftModel.from_pretrained(model, str(folder)), True
    else:
        peft_model = seeded_peft_model(model, lora_config_for(model, cfg.adapt_r, cfg.adapt_alpha, True), seed)
        fc = FitConfig(epochs=cfg.adapt_epochs, lr=cfg.adapt_lr, batch_size=cfg.adapt_batch_size, micro_batch_size=2)
        clf = LMClassifier(peft_model, tok, task, max_length=cfg.adapt_max_length)
        # local: under accelerate launch only rank 0 adapts (the others wait for the saved adapter)
        losses = fit(clf, kshot, fc, seed, desc=f"adapt {teacher} {task.name} s{seed}", local=True)
        save_adapter(peft_model, folder, init_seed=seed, task=task.name,
                     extra={"key": key, "final_loss": losses[-1] if losses else None})
        logger.info("adapted teacher saved to %s (%d steps, final loss %s)", folder, len(losses),
                    f"{losses[-1]:.3f}" if losses else "-")
        reused = False
    peft_model.eval()
    out = peft_model.merge_and_unload() if merge else peft_model
    return out, tok, {"adapter": str(folder), "adapter_reused": reused, "adapt_seconds": time.perf_counter() - t0,
                      "adapt_recipe": key["recipe"]}
