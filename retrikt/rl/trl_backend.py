"""RL on the soft prompt through TRL's GRPOTrainer / RLOOTrainer (``--rl grpo|rloo``), with the same reward.

TRL 1.16 accepts a ``PeftModel`` with a PROMPT_TUNING adapter (checked in its source and by the tests): only
``prompt_encoder.default.embedding.weight`` trains, and with ``beta > 0`` TRL adds a frozen copy of the adapter named
"ref" as the KL reference, i.e. the supervised prompt, as in our PPO. Passing ``peft_config`` instead would make the
reference the bare LM (adapter disabled), so we always hand TRL the PeftModel built from the supervised prompt.

Known differences from :mod:`retrikt.rl.ppo`: PEFT ignores ``position_ids`` for prompt learning, so under TRL a
left-padded row sees its pads between the soft prompt and its condition (positions shift by the pad count, in
generation and scoring alike); TRL has no value head (group baselines instead); rewards are per completion group.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrikt.config import arg
from retrikt.io import RetriktError
from retrikt.rl.ppo import RewardFn, _call_reward
from retrikt.teacher.softprompt import SoftPromptGenerator

logger = logging.getLogger(__name__)


@dataclass
class TRLConfig:
    algo: str = arg("grpo", help="TRL trainer: grpo (GRPOTrainer) or rloo (RLOOTrainer)", choices=["grpo", "rloo"])
    steps: int = arg(50, help="optimiser steps")
    batch_size: int = arg(8, help="completions per device batch (a multiple of num_generations)")
    num_generations: int = arg(4, help="completions per condition, the group of the baseline")
    lr: float = arg(1e-3, help="learning rate of the soft prompt (same reasoning as PPOConfig.lr)")
    beta: float = arg(0.05, help="KL coefficient against the supervised prompt (TRL's own default is 0.0)")
    max_new_tokens: int = arg(64, help="tokens generated per completion")
    temperature: float = arg(1.0, help="sampling temperature")
    seed: int = arg(0, help="seed of TRL's trainer")
    output_dir: str = arg("", help="TRL's output folder (checkpoints are not saved); empty: a temporary folder")


def _as_peft(gen: SoftPromptGenerator):
    """The generator's prompt as a trainable PeftModel over the same (frozen) LM.

    Built with get_peft_model and filled in place: PEFT refuses ``is_trainable`` when loading a prompt-learning
    adapter with ``PeftModel.from_pretrained``."""
    from peft import PromptTuningConfig, get_peft_model
    cfg = gen.model.config
    pcfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=gen.n_virtual, token_dim=gen.hidden_size,
                              num_transformer_submodules=1, num_attention_heads=cfg.num_attention_heads,
                              num_layers=cfg.num_hidden_layers, prompt_tuning_init="RANDOM")
    peft_model = get_peft_model(gen.model, pcfg)
    weight = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        weight.copy_(gen.prompt.to(weight.device, weight.dtype))
    return peft_model


def make_trl_reward(reward_fn: RewardFn):
    """Adapt ``reward_fn(samples)`` to TRL's ``f(prompts, completions, completion_ids, **columns)``."""
    def retrikt_reward(prompts, completions, completion_ids=None, label=None, log_metric=None, **_):
        samples = [{"condition": p, "text": c, "tokens": list(ids) if ids is not None else []}
                   for p, c, ids in zip(prompts, completions, completion_ids or [None] * len(prompts))]
        for s, lab in zip(samples, label or []):
            s["label"] = lab
        rewards, parts = _call_reward(reward_fn, samples)
        if log_metric is not None:
            for k, v in parts.items():
                log_metric(f"reward_{k}", float(np.mean(v)))
        return [float(r) for r in rewards]
    return retrikt_reward


def _trainer(cfg: TRLConfig, peft_model, tokenizer, reward, dataset, out: str):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[cfg.algo]
    args = config_cls(output_dir=out, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
                      num_generations=cfg.num_generations, learning_rate=cfg.lr, beta=cfg.beta,
                      max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
                      logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False,
                      use_cpu=not torch.cuda.is_available(), bf16=False, disable_tqdm=True)
    return trainer_cls(model=peft_model, reward_funcs=reward, args=args, train_dataset=dataset,
                       processing_class=tokenizer)


def trl_train(generator: SoftPromptGenerator, reward_fn: RewardFn, conditions: list[str],
              cfg: TRLConfig | None = None, labels: list | None = None) -> list[dict]:
    """Refine ``generator.prompt`` with TRL; the result is copied back into the generator. Returns TRL's logs."""
    from datasets import Dataset
    cfg = cfg or TRLConfig()
    if cfg.algo not in ("grpo", "rloo"):
        raise RetriktError(f"unknown TRL algorithm {cfg.algo!r}; use grpo or rloo")
    if cfg.batch_size % cfg.num_generations:
        raise RetriktError(f"batch_size {cfg.batch_size} is not a multiple of num_generations {cfg.num_generations}")
    if labels is not None and len(labels) != len(conditions):
        raise RetriktError(f"{len(labels)} labels for {len(conditions)} conditions")
    columns = {"prompt": list(conditions), **({"label": list(labels)} if labels is not None else {})}
    model = generator.model
    patched = "forward" in vars(model)
    with tempfile.TemporaryDirectory(prefix="retrikt-trl-") as tmp:
        peft_model = _as_peft(generator)
        trainer = _trainer(cfg, peft_model, generator.tokenizer, make_trl_reward(reward_fn),
                           Dataset.from_dict(columns), cfg.output_dir or str(Path(tmp) / "trl"))
        trainer.train()
        trained = peft_model.get_prompt_embedding_to_save("default")
    with torch.no_grad():
        generator.prompt.copy_(trained.to(generator.prompt.device, torch.float32))
    if not patched and "forward" in vars(model):
        del model.forward  # TRL's fused LM head patch; the plain forward is the class's again
    model.eval().requires_grad_(False)
    return [dict(h) for h in trainer.state.log_history]
