"""RL refinement of the store generator's soft prompt, as a stage of ``python -m retrikt.build --rl ppo``.

The reward is the same function for every backend: quality = the teacher-classifier's probability of the
conditioned label (the labeller the store itself uses), diversity = 1 - max cosine to the other samples of the batch
and to the k-shot examples (so copying the training data earns nothing). The refined prompt is saved to
``prompt-rl/`` and reused by a resumed build with the same settings; the per-step log goes to ``rl_log.jsonl`` and
``rl_log.png``.
"""
from __future__ import annotations

import functools
import json
import random
import logging
from pathlib import Path

import numpy as np

from retrikt.io import RetriktError
from retrikt.pipeline.conditions import Conditioner
from retrikt.pipeline.config import refine_key
from retrikt.rl.reward import RewardConfig, compute_rewards
from retrikt.store.samples import embed_examples, parse
from retrikt.teacher.lm import LMClassifier

logger = logging.getLogger(__name__)


def make_reward_fn(task, labeller: LMClassifier, embedder, kshot: list[dict], lenient: bool = False,
                   cfg: RewardConfig | None = None):
    """reward_fn(samples) -> (rewards, parts) over generated samples carrying their conditioned ``label``."""
    def quality(examples: list[dict], labels: list[int]) -> np.ndarray:
        probs = labeller.predict_proba([{**e, "idx": -1} for e in examples])
        return probs[np.arange(len(labels)), np.asarray(labels, dtype=int)]

    # Diversity is measured on the same text the store embeds, so parse first and embed the fields.
    def parse_fn(text: str):
        return parse(task, text, lenient=lenient)

    def embed_generated(texts: list[str]) -> np.ndarray:
        return embed_examples(embedder, task, [parse_fn(t) or {f: t for f in task.text_fields} for t in texts])

    accepted = embed_examples(embedder, task, kshot) if kshot else None
    return functools.partial(compute_rewards, parse_fn=parse_fn, quality_fn=quality, embed_fn=embed_generated,
                             accepted_embeddings=accepted, cfg=cfg or RewardConfig())


def refine_prompt(cfg, task, gen, model, tok, kshot: list[dict], embedder, out: Path, labeller: LMClassifier):
    """RL-refine ``gen``'s prompt with the store's own ``labeller`` as the quality reward (or reuse a saved one)."""
    from retrikt.teacher.softprompt import SoftPromptGenerator
    folder, key = Path(out) / "prompt-rl", refine_key(cfg)
    if (folder / "manifest.json").exists() and json.loads((folder / "manifest.json").read_text()).get("key") == key:
        logger.info("reusing the RL-refined soft prompt in %s", folder)
        return SoftPromptGenerator.load(folder, model, tok)
    reward_fn = make_reward_fn(task, labeller, embedder, kshot, lenient=cfg.parse_mode == "lenient")
    labels = list(range(task.num_labels))
    rng = random.Random(cfg.seed)  # one fixed context per label: the reward compares samples of one condition
    conditions = [Conditioner(cfg, task, tok, kshot)(y, rng) for y in labels]
    log_path = Path(out) / "rl_log.jsonl"
    log_path.unlink(missing_ok=True)  # a new run: the old log belongs to an unfinished or different refinement
    if cfg.rl == "ppo":
        from retrikt.rl.ppo import PPOConfig, plot_log, ppo_train
        ppo_train(gen, reward_fn, conditions, PPOConfig(steps=cfg.rl_steps, max_new_tokens=cfg.max_new_tokens,
                                                        rollout_batch=cfg.rl_batch, n_minibatches=min(4, cfg.rl_batch),
                                                        init_kl_coef=cfg.rl_kl_coef, lr=cfg.rl_lr, seed=cfg.seed),
                  log_path=log_path, labels=labels)
        plot_log(log_path, Path(out) / "rl_log.png")
    elif cfg.rl in ("grpo", "rloo"):
        from retrikt.rl.trl_backend import TRLConfig, trl_train
        trl_train(gen, reward_fn, conditions, TRLConfig(algo=cfg.rl, steps=cfg.rl_steps, seed=cfg.seed,
                                                        max_new_tokens=cfg.max_new_tokens), labels=labels)
    else:
        raise RetriktError(f"unknown RL method {cfg.rl!r}; use ppo, grpo or rloo")
    gen.save(folder, meta={"key": key, "rl": cfg.rl, "steps": cfg.rl_steps})
    return gen
