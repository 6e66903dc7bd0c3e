"""The shared student training loop: explicit, one config dataclass, no Trainer magic.

Each training example is a task example dict; it may also carry ``"soft_label"`` (the teacher's distribution,
used for knowledge distillation with a KL loss) and ``"weight"``.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrikt.config import arg

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int = arg(20, help="passes over the training examples (few-shot sets are tiny, so many passes)")
    lr: float = arg(5e-5, help="learning rate of the encoder / adapter parameters")
    head_lr: float = arg(1e-3, help="learning rate of the freshly initialised classification head")
    batch_size: int = arg(8, help="examples per optimisation step")
    weight_decay: float = arg(0.01, help="AdamW weight decay")
    warmup_ratio: float = arg(0.06, help="share of steps with linear warm-up, then linear decay")
    grad_clip: float = arg(1.0, help="gradient norm clip")
    kd_weight: float = arg(1.0, help="weight of the KL-to-teacher loss on examples with a soft label")
    kd_temperature: float = arg(1.0, help="softmax temperature of the student in the KL loss")
    max_steps: int = arg(0, help="stop after this many steps (0 = no limit)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def example_loss(logits: torch.Tensor, batch: list[dict], task, cfg: FitConfig) -> torch.Tensor:
    """Per-batch loss: CE (or MSE) on gold labels, plus KL to the teacher's soft labels where present."""
    weights = torch.tensor([float(e.get("weight", 1.0)) for e in batch], device=logits.device)
    if task.is_regression:
        y = torch.tensor([float(e["label"]) for e in batch], device=logits.device)
        return (weights * (logits - y) ** 2).mean()
    has_soft = [e.get("soft_label") is not None and len(e["soft_label"]) > 0 for e in batch]
    loss = torch.zeros(len(batch), device=logits.device)
    gold = [i for i, e in enumerate(batch) if not has_soft[i] and e.get("label") is not None]
    if gold:
        y = torch.tensor([int(batch[i]["label"]) for i in gold], device=logits.device)
        loss[gold] = F.cross_entropy(logits[gold], y, reduction="none")
    soft = [i for i, s in enumerate(has_soft) if s]
    if soft:
        t = torch.tensor([batch[i]["soft_label"] for i in soft], device=logits.device, dtype=logits.dtype)
        logp = F.log_softmax(logits[soft] / cfg.kd_temperature, -1)
        loss[soft] = cfg.kd_weight * F.kl_div(logp, t, reduction="none").sum(-1) * cfg.kd_temperature ** 2
    return (weights * loss).mean()


def make_optimizer(model: torch.nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith("head.") or ".head." in name else body).append(p)
    groups = [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def fit(model, examples: list[dict], cfg: FitConfig, seed: int, loss_fn=None, desc: str = "train") -> list[float]:
    """Train ``model`` (anything with ``tokenize(examples)`` and ``forward(batch)``) on ``examples``.

    ``loss_fn(model, batch_examples) -> loss`` overrides the default classification / KD loss.
    Returns the loss of each step.
    """
    seed_everything(seed)
    rng = random.Random(seed)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)
    base_lrs = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc=desc, leave=False, disable=None)
    order = list(range(len(examples)))
    while len(losses) < total:
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            if len(losses) >= total:
                break
            batch = [examples[j] for j in order[i:i + cfg.batch_size]]
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * _schedule(len(losses), total, warmup)
            loss = loss_fn(model, batch) if loss_fn else example_loss(model(model.tokenize(batch)), batch,
                                                                       model.task, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses
