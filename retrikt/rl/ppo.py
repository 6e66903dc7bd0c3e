"""PPO on the soft prompt of a frozen teacher: one explicit loop in the style of CleanRL's single-file PPO.

Policy: the frozen LM + the trainable soft prompt. Critic: a linear value head (fp32) on the LM's last hidden state.
Per-token reward: -kl_coef * (log pi - log pi_ref) against the supervised (reference) prompt, plus the sequence
reward on the last generated token (Ziegler et al. 2019). GAE, clipped surrogate, clipped value loss, minibatch
epochs. Only the soft prompt and the value head are trained; the LM's weights are checked untouched every step.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from retrikt.config import arg
from retrikt.io import RetriktError, append_jsonl, atomic_path, read_jsonl
from retrikt.progress import progress
from retrikt.teacher.softprompt import ResponseBatch, SoftPromptGenerator

logger = logging.getLogger(__name__)

RewardFn = Callable[[list[dict]], "np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]"]


@dataclass
class PPOConfig:
    steps: int = arg(50, help="PPO iterations; each generates one rollout batch and updates on it")
    rollout_batch: int = arg(16, help="samples generated per iteration")
    n_minibatches: int = arg(4, help="minibatches the rollout is split into per PPO epoch")
    ppo_epochs: int = arg(4, help="passes over each rollout (4 in Ziegler et al. 2019 and TRL)")
    lr: float = arg(1e-3, help="AdamW lr of the soft prompt. Adam moves each element by ~lr per update, so the "
                               "right lr scales with the token-embedding RMS (Qwen2.5 0.017, SmolLM2 0.136): 1e-3 "
                               "is ~0.06 RMS per update on Qwen, the ratio that gave clip fraction 0.1-0.2 and "
                               "approx-KL 0.01-0.03 on tiny models; use ~8e-3 for SmolLM2")
    value_lr: float = arg(1e-3, help="AdamW lr of the value head (a fresh linear layer)")
    clip_range: float = arg(0.2, help="PPO ratio clip epsilon (Schulman et al. 2017; TRL 0.2)")
    value_clip_range: float = arg(0.2, help="clip of the value update around the rollout values (TRL 0.2)")
    vf_coef: float = arg(0.1, help="weight of the value loss (TRL 0.1)")
    ent_coef: float = arg(0.0, help="weight of the entropy bonus (0: the KL penalty already keeps entropy)")
    gamma: float = arg(1.0, help="discount (1.0: one sequence-level reward per episode, as in RLHF)")
    lam: float = arg(0.95, help="GAE lambda (TRL 0.95)")
    init_kl_coef: float = arg(0.05, help="initial coefficient of the per-token KL penalty (TRL PPO 0.05)")
    adaptive_kl: bool = arg(True, help="adapt the KL coefficient towards kl_target (Ziegler et al. 2019)")
    kl_target: float = arg(6.0, help="target sequence KL in nats of the adaptive controller (Ziegler et al. 2019)")
    kl_horizon: int = arg(10000, help="horizon of the adaptive KL controller in samples (Ziegler et al. 2019)")
    whiten_advantages: bool = arg(True, help="normalise advantages to mean 0, std 1 over each rollout")
    max_grad_norm: float = arg(1.0, help="clip the global gradient norm of prompt + value head (0 disables)")
    max_new_tokens: int = arg(64, help="tokens generated per sample")
    temperature: float = arg(1.0, help="sampling temperature; log-probs use the same temperature")
    top_p: float = arg(1.0, help="nucleus sampling; keep 1.0 so log-probs match the sampling distribution")
    gen_batch_size: int = arg(8, help="samples generated per model.generate call")
    max_time: float = arg(0.0, help="wall-clock seconds per generation batch (0: no limit)")
    seed: int = arg(0, help="seed of condition order, sampling and minibatch order")


# ------------------------------------------------------------------------------------------------ pure math
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the unmasked entries (unbiased variance); masked entries become 0."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = ((x - mean) ** 2 * mask).sum() / (mask.sum() - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded [B, T] tensors; returns (advantages, returns).

    The value after a sequence's last token is 0 (the episode ends there)."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    last = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(values.shape[1])):
        next_v = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], 1) * mask
    return adv, adv + values


def ppo_losses(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float,
               value_clip_range: float) -> dict[str, torch.Tensor]:
    """Clipped surrogate and clipped value loss, token-level means over ``mask``; plus clip fraction and
    approx-KL (the k3 estimator, mean of (r - 1) - log r)."""
    mask = mask.to(new_logp.dtype)
    logratio = new_logp - old_logp
    ratio = torch.exp(logratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    v_clipped = old_values + torch.clamp(values - old_values, -value_clip_range, value_clip_range)
    vf = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    with torch.no_grad():
        clip_frac = masked_mean((pg2 > pg1).to(mask.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
    return {"policy_loss": masked_mean(torch.max(pg1, pg2), mask), "value_loss": 0.5 * masked_mean(vf, mask),
            "clip_frac": clip_frac, "approx_kl": approx_kl}


class KLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (fixed when ``adaptive`` is False)."""

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool = True):
        self.value, self.target, self.horizon, self.adaptive = init, target, horizon, adaptive

    def update(self, current_kl: float, n_samples: int) -> None:
        if self.adaptive:
            err = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + err * n_samples / self.horizon


class ValueHead(torch.nn.Module):
    """Per-token value: a linear layer on the LM's last hidden state, kept in fp32."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class Rollout:
    samples: list[dict]
    batch: ResponseBatch
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    parts: dict[str, np.ndarray]


def _call_reward(reward_fn: RewardFn, samples: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    out = reward_fn(samples)
    rewards, parts = out if isinstance(out, tuple) else (out, {})
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if rewards.shape[0] != len(samples) or not np.all(np.isfinite(rewards)):
        raise RetriktError(f"reward_fn must return {len(samples)} finite rewards, got {rewards[:8]}")
    return rewards, parts


@torch.no_grad()
def rollout(gen: SoftPromptGenerator, value_head: ValueHead, reward_fn: RewardFn, conds: list[str],
            labels: list | None, cfg: PPOConfig, step: int) -> Rollout:
    """Sample under the current prompt, score, and record log-probs, reference log-probs and values."""
    samples = gen.generate(conds, 1, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.gen_batch_size,
                           seed=cfg.seed * 100_003 + step, max_time=cfg.max_time or None)
    for s, lab in zip(samples, labels or [None] * len(samples)):
        if lab is not None:
            s["label"] = lab
    rewards, parts = _call_reward(reward_fn, samples)
    batch = gen.encode([s["condition"] for s in samples], [s["tokens"] for s in samples])
    logp, _, hidden = gen.response_forward(batch, "policy", cfg.temperature)
    ref_logp, _, _ = gen.response_forward(batch, "reference", cfg.temperature)
    values = value_head(hidden) * batch.resp_mask
    return Rollout(samples, batch, logp, ref_logp, values, torch.tensor(rewards, dtype=torch.float32,
                   device=logp.device), parts)


def advantages(ro: Rollout, kl_coef: float, cfg: PPOConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, returns, per-sequence KL) with the score on each sequence's last token."""
    mask = ro.batch.resp_mask.float()
    kl = (ro.logp - ro.ref_logp) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(last), device=last.device), last] += ro.scores
    adv, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask)
    return adv, returns, kl.sum(1)


def check_frozen(gen: SoftPromptGenerator) -> None:
    """Raise unless every LM weight is frozen and gradient-free (only prompt and value head may learn)."""
    bad = [n for n, p in gen.model.named_parameters() if p.requires_grad or p.grad is not None]
    if bad:
        raise RuntimeError(f"PPO must train only the soft prompt and value head; LM parameters {bad[:3]} "
                           "require or hold gradients")


def ppo_update(gen: SoftPromptGenerator, value_head: ValueHead, opt: torch.optim.Optimizer, ro: Rollout,
               adv: torch.Tensor, returns: torch.Tensor, cfg: PPOConfig, g: torch.Generator) -> dict[str, float]:
    mask = ro.batch.resp_mask.float()
    params = [gen.prompt, *value_head.parameters()]
    stats: dict[str, list[float]] = {}
    for _ in range(cfg.ppo_epochs):
        for mb in torch.randperm(len(ro.batch), generator=g).chunk(cfg.n_minibatches):
            mb = mb.to(mask.device)
            logp, ent, hidden = gen.response_forward(ro.batch.select(mb), "policy", cfg.temperature)
            # the critic reads the prompt's features but does not move the prompt: value fitting must not
            # trade against the policy through 20 shared vectors
            values = value_head(hidden.detach())
            out = ppo_losses(logp, ro.logp[mb], adv[mb], values, ro.values[mb], returns[mb], mask[mb],
                             cfg.clip_range, cfg.value_clip_range)
            out["entropy"] = masked_mean(ent, mask[mb])
            loss = out["policy_loss"] + cfg.vf_coef * out["value_loss"] - cfg.ent_coef * out["entropy"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            check_frozen(gen)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            for k, v in out.items():
                stats.setdefault(k, []).append(v.item())
    return {k: float(np.mean(v)) for k, v in stats.items()}


def _step_record(step: int, ro: Rollout, seq_kl: torch.Tensor, kl_coef: float, upd: dict, t0: float) -> dict:
    rec: dict[str, Any] = {"step": step, "reward": ro.scores.mean().item(), "reward_std": ro.scores.std(correction=0).item()}
    rec.update({f"reward_{k}": float(np.mean(v)) for k, v in ro.parts.items()})
    rec.update(kl=seq_kl.mean().item(), kl_coef=kl_coef, **upd,
               response_len=ro.batch.resp_mask.sum(1).float().mean().item(),
               finished=float(np.mean([s.get("finished", True) for s in ro.samples])),
               seconds=time.perf_counter() - t0)
    return rec


def ppo_train(generator: SoftPromptGenerator, reward_fn: RewardFn, conditions: list[str], cfg: PPOConfig | None = None,
              log_path: str | Path | None = None, labels: list | None = None) -> list[dict]:
    """Refine ``generator.prompt`` with PPO against ``reward_fn(samples) -> rewards | (rewards, parts)``.

    The current prompt becomes the KL reference. ``labels[i]`` (optional) is attached to samples of
    ``conditions[i]`` as ``sample['label']`` for the reward. Returns (and appends to ``log_path``) one record
    per step."""
    cfg = cfg or PPOConfig()
    if not conditions:
        raise RetriktError("ppo_train got no conditions")
    if labels is not None and len(labels) != len(conditions):
        raise RetriktError(f"{len(labels)} labels for {len(conditions)} conditions")
    if cfg.rollout_batch < cfg.n_minibatches:
        raise RetriktError(f"rollout_batch {cfg.rollout_batch} < n_minibatches {cfg.n_minibatches}")
    rms = generator.embedding_rms()
    logger.info("PPO prompt lr %.3g = %.3f x the token-embedding RMS %.4f", cfg.lr, cfg.lr / rms, rms)
    generator.snapshot_reference()
    check_frozen(generator)
    with torch.random.fork_rng(devices=[]):  # a seeded head without reseeding the caller's RNG
        torch.manual_seed(cfg.seed)
        value_head = ValueHead(generator.hidden_size).to(generator.device)
    opt = torch.optim.AdamW([{"params": [generator.prompt], "lr": cfg.lr},
                             {"params": value_head.parameters(), "lr": cfg.value_lr}], weight_decay=0.0)
    kl_ctl = KLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon, cfg.adaptive_kl)
    rng, g = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    for step in progress(range(cfg.steps), desc="ppo"):
        t0 = time.perf_counter()
        pick = rng.choice(len(conditions), cfg.rollout_batch, replace=len(conditions) < cfg.rollout_batch)
        ro = rollout(generator, value_head, reward_fn, [conditions[i] for i in pick],
                     None if labels is None else [labels[i] for i in pick], cfg, step)
        adv, returns, seq_kl = advantages(ro, kl_ctl.value, cfg)
        upd = ppo_update(generator, value_head, opt, ro, adv, returns, cfg, g)
        rec = _step_record(step, ro, seq_kl, kl_ctl.value, upd, t0)
        kl_ctl.update(rec["kl"], cfg.rollout_batch)
        log.append(rec)
        if log_path:
            append_jsonl(log_path, rec)
        logger.info("ppo step %d: reward %.3f kl %.3f policy %.4f value %.4f clip %.2f", step, rec["reward"],
                    rec["kl"], rec["policy_loss"], rec["value_loss"], rec["clip_frac"])
    return log


def plot_log(jsonl: str | Path, png: str | Path) -> Path:
    """One panel per logged metric against the step (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    recs = read_jsonl(jsonl)
    if not recs:
        raise RetriktError(f"{jsonl}: no records to plot")
    keys = [k for k in recs[0] if k != "step" and isinstance(recs[0][k], (int, float))]
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows))
    FigureCanvasAgg(fig)
    steps = [r.get("step", i) for i, r in enumerate(recs)]
    for i, k in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(steps, [r.get(k, float("nan")) for r in recs])
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return png
