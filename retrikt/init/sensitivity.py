"""Sensitivity of teacher parameters, layer selection and best-block search for parametric transfer.

Zhong et al., "Seeking Neural Nuggets: Knowledge Transfer in LLMs from a Parametric Perspective" (ICLR 2024):
the sensitivity of a parameter is S = |θ · ∂L/∂θ|, summed over a few seed samples, with the loss on the answer
tokens only. Layers are ranked by their summed S; inside each kept matrix the contiguous block of the student's
shape with the highest summed S is found with a summed-area table.

Memory: the gradients are consumed by post-accumulate-grad hooks one parameter at a time and freed at once, so
no full set of gradients ever exists. Because a block sum is linear in S, :func:`compute_block_scores` keeps,
per parameter, only the map of block sums for the block shape it will be asked for ((H-h+1) x (W-w+1), about
five times smaller than S for Qwen 1.5B -> 0.5B) plus a scalar total for layer ranking.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from retrikt.progress import progress

from retrikt.io import RetriktError

logger = logging.getLogger(__name__)

# Chunk of the fp64 prefix-sum scratch in window_sums (elements): 8M doubles = 64 MB.
_SCRATCH = 1 << 23


# ----------------------------------------------------------------------------------------------- block search

def _check_window(shape: tuple[int, int], window: Sequence[int]) -> tuple[int, int]:
    h, w = int(window[0]), int(window[1])
    if not (1 <= h <= shape[0] and 1 <= w <= shape[1]):
        raise RetriktError(f"block {h}x{w} does not fit in a {shape[0]}x{shape[1]} matrix "
                           "(only dimension reduction is supported)")
    return h, w


def window_sums(S: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Sum of every contiguous ``window``-shaped block of ``S``: ``[H-h+1, W-w+1]`` in fp64.

    Entry ``[r, c]`` is ``S[r:r+h, c:c+w].sum()``. This is the summed-area table evaluated one axis at a time:
    the difference along rows is taken before the prefix sum along columns (the two commute), so the fp64
    scratch is ``(H-h+1) x W`` instead of ``(H+1) x (W+1)``, and the row prefix sums run in column chunks.
    """
    if S.dim() != 2:
        raise RetriktError(f"sensitivity must be a matrix, got shape {tuple(S.shape)}")
    H, W = S.shape
    h, w = _check_window((H, W), window)
    rows = torch.empty(H - h + 1, W + 1, dtype=torch.float64, device=S.device)
    rows[:, 0] = 0
    step = max(1, _SCRATCH // (H + 1))
    prefix = torch.empty(H + 1, min(step, W), dtype=torch.float64, device=S.device)
    prefix[0] = 0
    for j in range(0, W, step):   # column chunks bound the fp64 scratch; one pass when it fits
        k = min(step, W - j)
        chunk = prefix[:, :k]
        chunk[1:] = S[:, j:j + k]
        chunk.cumsum_(0)
        torch.sub(chunk[h:], chunk[:H - h + 1], out=rows[:, 1 + j:1 + j + k])
    del prefix
    rows.cumsum_(1)
    return rows[:, w:] - rows[:, :W - w + 1]


def best_block(S: torch.Tensor, out_shape: Sequence[int]) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``out_shape`` block of ``S`` with the largest sum (first one on ties)."""
    sums = window_sums(S, out_shape)
    return _argmax2d(sums)


def _argmax2d(m: torch.Tensor) -> tuple[int, int]:
    row, col = divmod(int(torch.argmax(m)), m.shape[1])
    return row, col


def best_block_loop(S: torch.Tensor, out_shape: Sequence[int]) -> tuple[int, int]:
    """Reference: a Python loop over every top-left corner reading a summed-area table, as the authors' code does.

    O((H-h+1)(W-w+1)) interpreted steps; for tests and the benchmark only.
    """
    H, W = S.shape
    h, w = _check_window((H, W), out_shape)
    sat = torch.zeros(H + 1, W + 1, dtype=torch.float64)
    sat[1:, 1:] = S.detach().to("cpu", torch.float64).cumsum(0).cumsum(1)
    best, where = -float("inf"), (0, 0)
    for r in range(H - h + 1):
        for c in range(W - w + 1):
            total = sat[r + h, c + w] - sat[r, c + w] - sat[r + h, c] + sat[r, c]
            if total > best:
                best, where = total, (r, c)
    return where


def random_block(shape: Sequence[int], out_shape: Sequence[int], generator: torch.Generator) -> tuple[int, int]:
    """Uniformly random top-left corner of an ``out_shape`` block (the paper's random-extraction ablation)."""
    h, w = _check_window((int(shape[0]), int(shape[1])), out_shape)
    row = int(torch.randint(int(shape[0]) - h + 1, (1,), generator=generator))
    col = int(torch.randint(int(shape[1]) - w + 1, (1,), generator=generator))
    return row, col


# ------------------------------------------------------------------------------------------- layer selection

def select_layers(layer_scores: Sequence[float] | torch.Tensor, n: int, mode: str = "sensitivity",
                  seed: int = 0) -> list[int]:
    """Teacher layers to keep, in depth order: the ``n`` highest-scoring ones, or ``n`` at random.

    The i-th returned layer initialises student layer i. Ties go to the shallower layer.
    """
    scores = [float(s) for s in layer_scores]
    if not 1 <= n <= len(scores):
        raise RetriktError(f"cannot keep {n} of {len(scores)} teacher layers: the student must not be deeper "
                           "than the teacher")
    if mode == "sensitivity":
        keep = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n]
    elif mode == "random":
        keep = random.Random(seed).sample(range(len(scores)), n)
    else:
        raise RetriktError(f"layer selection {mode!r} is unknown; use 'sensitivity' or 'random'")
    return sorted(keep)


# ------------------------------------------------------------------------------------------------ seed samples

def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 512,
                 add_eos: bool = True) -> list[tuple[list[int], int]]:
    """Token ids of ``prompt + answer`` and the prompt length; the prompt is cut from the left to fit."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RetriktError(f"seed pair {i}: expected (prompt: str, answer: str), got {pair!r:.80}")
        prompt = list(tokenizer(pair[0], add_special_tokens=True)["input_ids"])
        answer = list(tokenizer(pair[1], add_special_tokens=False)["input_ids"])
        if add_eos and eos is not None:
            answer.append(int(eos))
        if not prompt or not answer:
            raise RetriktError(f"seed pair {i}: the {'prompt' if not prompt else 'answer'} encodes to no tokens")
        answer = answer[:max_length - 1]
        prompt = prompt[-(max_length - len(answer)):]
        out.append((prompt + answer, len(prompt)))
    return out


def _batches(encoded: list[tuple[list[int], int]], batch_size: int, pad_id: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)
        for b, (seq, n_prompt) in enumerate(chunk):
            ids[b, :len(seq)] = torch.tensor(seq)
            mask[b, :len(seq)] = 1
            labels[b, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
        yield ids.to(device), mask.to(device), labels.to(device)


def seed_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each sample's mean cross-entropy on its answer tokens.

    A per-sample mean (not a batch mean) makes batch size 1 reproduce the reference loss exactly. Logits are
    only computed from the first answer position on when the model supports ``logits_to_keep``: the LM head
    over a 150k vocabulary is a large share of the teacher's compute.
    """
    T = input_ids.shape[1]
    start = int((labels != -100).float().argmax(dim=1).min()) - 1   # logits[t] predict token t+1
    accepts = _forward_params(model)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "use_cache" in accepts:
        kwargs["use_cache"] = False
    if "logits_to_keep" in accepts:
        kwargs["logits_to_keep"] = T - start
    logits = model(**kwargs).logits[:, -(T - start):-1].float()
    targets = labels[:, start + 1:]
    token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                             reduction="none")
    n_tokens = (targets != -100).sum(dim=1).clamp(min=1)
    return (token_loss.sum(dim=1) / n_tokens).sum()


def _forward_params(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


# ------------------------------------------------------------------------------------------------- sensitivity

@contextlib.contextmanager
def _grads_only_for(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Eval mode and requires_grad only on ``params`` for the block; the model's own flags come back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        model.train(training)


def _accumulate(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], targets: Sequence[str],
                consume: Callable[[str, torch.Tensor], None], device=None, batch_size: int = 1,
                max_length: int = 512, add_eos: bool = True) -> None:
    """Backpropagate the seed loss per batch; hand ``|θ·grad|`` (fp32) of each target to ``consume(name, S)``."""
    named = dict(model.named_parameters(remove_duplicate=False))
    missing = [t for t in targets if t not in named]
    if missing:
        raise RetriktError(f"sensitivity targets not in the model: {', '.join(missing[:5])}")
    by_param: dict[int, list[str]] = defaultdict(list)   # tied weights: one hook feeds every name
    for t in targets:
        by_param[id(named[t])].append(t)
    params = {id(named[names[0]]): named[names[0]] for names in by_param.values()}
    device = torch.device(device) if device is not None else next(model.parameters()).device

    def hook(p: torch.Tensor) -> None:
        s = (p.detach().float() * p.grad.float()).abs_()
        p.grad = None   # frees this gradient before the next one is produced
        for name in by_param[id(p)]:
            consume(name, s)

    encoded = encode_pairs(tokenizer, pairs, max_length, add_eos)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    with _grads_only_for(model, list(params.values())):
        handles = [p.register_post_accumulate_grad_hook(hook) for p in params.values()]
        try:
            bar = progress(total=len(encoded), desc="sensitivity", unit="sample", leave=False)
            for ids, mask, labels in _batches(encoded, max(1, batch_size), int(pad), device):
                seed_loss(model, ids, mask, labels).backward()
                bar.update(ids.shape[0])
            bar.close()
        finally:
            for h in handles:
                h.remove()


def compute_sensitivity(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], targets: Sequence[str],
                        device=None, batch_size: int = 1, max_length: int = 512,
                        add_eos: bool = True) -> dict[str, torch.Tensor]:
    """S = Σ over seed batches of |θ · ∂L/∂θ| (fp32, the parameter's shape) for each named target parameter.

    ``pairs`` are ``(prompt, answer)`` strings; the loss covers the answer tokens only. With ``batch_size=1``
    (the paper's setting) the absolute value is taken per sample.
    """
    out: dict[str, torch.Tensor] = {}

    def consume(name: str, s: torch.Tensor) -> None:
        out[name] = out[name].add_(s) if name in out else s.clone()

    _accumulate(model, tokenizer, pairs, targets, consume, device, batch_size, max_length, add_eos)
    return out


@dataclass
class BlockScores:
    """Per-parameter sensitivity reduced to what extraction needs.

    ``totals[name]`` is the sum of S (for layer ranking); ``maps[name]`` holds the block sums of S for the block
    shape ``windows[name]`` (a ``(1, 1)`` window means the map is S itself).
    """
    totals: dict[str, float] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_sensitivity(cls, sensitivity: dict[str, torch.Tensor]) -> "BlockScores":
        return cls(totals={n: float(s.sum(dtype=torch.float64)) for n, s in sensitivity.items()},
                   maps=dict(sensitivity), windows={n: (1, 1) for n in sensitivity})

    def best(self, name: str, window: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of the ``window`` block of parameter ``name`` with the largest summed S."""
        if name not in self.maps:
            raise RetriktError(f"no sensitivity recorded for {name}")
        have = self.windows[name]
        if tuple(have) == tuple(window):
            return _argmax2d(self.maps[name])
        if tuple(have) == (1, 1):
            return best_block(self.maps[name], window)
        raise RetriktError(f"{name}: sensitivity was reduced for {have[0]}x{have[1]} blocks, "
                           f"asked for {window[0]}x{window[1]}")


def compute_block_scores(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], targets: Sequence[str],
                         windows: dict[str, tuple[int, int]], device=None, batch_size: int = 1,
                         max_length: int = 512, add_eos: bool = True) -> BlockScores:
    """Like :func:`compute_sensitivity`, but keep only totals and, for names in ``windows``, block-sum maps.

    Block sums are linear in S, so summing each batch's map equals the map of the summed S.
    """
    scores = BlockScores(windows={n: tuple(w) for n, w in windows.items()})
    totals: dict[str, float] = defaultdict(float)

    def consume(name: str, s: torch.Tensor) -> None:
        totals[name] += float(s.sum(dtype=torch.float64))
        if name in windows:
            m = window_sums(s, windows[name]).float()
            scores.maps[name] = scores.maps[name].add_(m) if name in scores.maps else m

    _accumulate(model, tokenizer, pairs, targets, consume, device, batch_size, max_length, add_eos)
    scores.totals = dict(totals)
    return scores
