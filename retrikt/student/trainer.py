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
from retrikt.progress import progress

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
    micro_batch_size: int = arg(0, help="split each batch into micro-batches of this many examples and accumulate "
                                        "their gradients (0 = whole batch): activation memory scales with it, the "
                                        "update does not change (single-process training)")


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


def _batch_loss(model, batch: list[dict], cfg: FitConfig, loss_fn) -> torch.Tensor:
    return loss_fn(model, batch) if loss_fn else example_loss(model(model.tokenize(batch)), batch, model.task, cfg)


def _accumulated_step(model, batch: list[dict], cfg: FitConfig, loss_fn) -> float:
    """Backward of the batch's mean loss, one micro-batch at a time: each micro-batch's mean is weighted by its
    share, so the summed gradient is the whole batch's (fine-tuning a 0.5B LM on CPU otherwise keeps ~10 GiB
    of activations for a batch of 8)."""
    size = cfg.micro_batch_size if 0 < cfg.micro_batch_size < len(batch) else len(batch)
    total = 0.0
    for i in range(0, len(batch), size):
        part = batch[i:i + size]
        loss = _batch_loss(model, part, cfg, loss_fn) * (len(part) / len(batch))
        loss.backward()
        total += float(loss.detach())
    return total


class _LossModule(torch.nn.Module):
    """A step's loss as a module: DDP syncs gradients only for what runs through its own forward, and a ``loss_fn``
    may call anything on the model (the retrieval loss calls ``embed`` and ``head`` directly)."""

    def __init__(self, model, cfg: FitConfig, loss_fn):
        super().__init__()
        self.model, self.cfg, self.loss_fn = model, cfg, loss_fn

    def forward(self, batch: list[dict], scale: float) -> torch.Tensor:
        return _batch_loss(self.model, batch, self.cfg, self.loss_fn) * scale


class _DataParallelStep:
    """Forward + backward of one global batch split over the ranks, gradients all-reduced by DDP."""

    def __init__(self, model, cfg: FitConfig, loss_fn, rank: int, world: int):
        from torch.nn.parallel import DistributedDataParallel
        device = next(p.device for p in model.parameters() if p.requires_grad)
        # find_unused_parameters: e.g. BERT's pooler, or a projection only some losses use, gets no gradient
        self.ddp = DistributedDataParallel(_LossModule(model, cfg, loss_fn), find_unused_parameters=True,
                                           device_ids=[device] if device.type == "cuda" else None)
        self.rank, self.world = rank, world

    def __call__(self, batch: list[dict]) -> float:
        mine = batch[self.rank::self.world]
        # DDP averages gradients over ranks; weighting each rank's mean loss by its share of the batch makes that
        # average the gradient of the whole batch's mean loss, as on one process (also for a short last batch).
        scale = len(mine) * self.world / len(batch)
        if not mine:  # fewer examples than ranks: still join the all-reduce, contributing nothing
            mine, scale = batch[:1], 0.0
        loss = self.ddp(mine, scale)
        loss.backward()
        total = loss.detach().clone()
        torch.distributed.all_reduce(total)
        return float(total) / self.world


class MixedBatches:
    """Batches with a fixed share of gold (k-shot) examples, the rest store entries, each pool cycled in its own
    reshuffled order. With a store 30x the k-shot set, batches drawn from the union were ~97% teacher entries and an
    epoch rule showed the gold examples twice; here each batch holds ``round(share x batch_size)`` gold examples (at
    least one), so the gold examples get the exposure a fine-tune would, whatever the store's size."""

    def __init__(self, gold: list[dict], store: list[dict], batch_size: int, share: float, seed: int):
        if not gold:
            raise ValueError("MixedBatches needs gold examples")
        self.n_gold = batch_size if not store else min(batch_size, max(1, round(share * batch_size)))
        self.pools = [(gold, self.n_gold), (store, batch_size - self.n_gold if store else 0)]
        self.rng = random.Random(seed)
        self.cursors = [self._order(pool) for pool, _ in self.pools]

    def _order(self, pool: list[dict]) -> list[int]:
        order = list(range(len(pool)))
        self.rng.shuffle(order)
        return order

    def __call__(self, step: int) -> list[dict]:
        batch = []
        for i, (pool, n) in enumerate(self.pools):
            for _ in range(n):
                if not self.cursors[i]:
                    self.cursors[i] = self._order(pool)
                batch.append(pool[self.cursors[i].pop()])
        return batch


def _batches(examples: list[dict], cfg: FitConfig, rng: random.Random):
    """The default batch stream: passes over ``examples`` in reshuffled order."""
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            yield [examples[j] for j in order[i:i + cfg.batch_size]]


def fit(model, examples: list[dict], cfg: FitConfig, seed: int, loss_fn=None, desc: str = "train",
        sampler: MixedBatches | None = None, local: bool = False) -> list[float]:
    """Train ``model`` (anything with ``tokenize(examples)`` and ``forward(batch)``) on ``examples``.

    ``loss_fn(model, batch_examples) -> loss`` overrides the default classification / KD loss; it should be a mean
    over the batch's examples (then data-parallel training equals one process up to float rounding).
    ``sampler(step) -> batch`` (:class:`MixedBatches`) replaces the passes over ``examples``; the run then lasts
    ``cfg.max_steps`` steps. ``local``: this process trains alone even under a launcher (e.g. rank 0 adapting the
    teacher while the other ranks wait), so no gradient is all-reduced.
    Under ``accelerate launch`` every rank calls this with the same examples and seed: each rank computes a
    disjoint share of every global batch (the batches of a one-process run) and DDP all-reduces the gradients.
    Returns the loss of each step (the global batch's, on every rank).
    """
    from retrikt.dist import world
    seed_everything(seed)
    rng = random.Random(seed)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = cfg.max_steps if sampler is not None else min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)
    base_lrs = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    model.train()
    rank, n_ranks = (0, 1) if local else world()
    if total == 0 or not (examples or sampler):
        return losses
    step = _DataParallelStep(model, cfg, loss_fn, rank, n_ranks) if n_ranks > 1 else None
    bar = progress(total=total, desc=desc, leave=False, disable=rank != 0)
    stream = _batches(examples, cfg, rng) if sampler is None else (sampler(i) for i in range(total))
    for batch in stream:
        if len(losses) >= total:
            break
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * _schedule(len(losses), total, warmup)
        opt.zero_grad(set_to_none=True)
        if step is None:
            losses.append(_accumulated_step(model, batch, cfg, loss_fn))
        else:
            losses.append(step(batch))
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    del step  # drops DDP's gradient hooks from the parameters
    model.eval()
    return losses
