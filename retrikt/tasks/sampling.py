"""Seeded low-resource subsets: k examples per label, or n in total (stratified by label when labels are ints).

Reproducible across runs, machines and Python versions: the pool is first sorted by ``idx`` (so the order
examples arrive in does not matter) and shuffled by a Fisher-Yates loop driven only by
``random.Random(seed).random()``, the one part of ``random`` whose output Python promises never to change.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import Sequence

import numpy as np

from retrikt.io import RetriktError
from retrikt.tasks.registry import Task, get_task

logger = logging.getLogger(__name__)


def _shuffled(items: Sequence[dict], rng: random.Random) -> list[dict]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def _is_class_label(label: object) -> bool:
    return isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_))


def _by_label(pool: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {}
    for ex in pool:
        groups.setdefault(int(ex["label"]), []).append(ex)
    return groups


def _label_kind(pool: list[dict]) -> str:
    """'class' (all int labels), 'none' (some unlabelled) or 'score' (regression floats)."""
    labels = [ex.get("label") for ex in pool]
    if any(v is None for v in labels):
        return "none"
    return "class" if all(_is_class_label(v) for v in labels) else "score"


def _quotas(counts: dict[int, int], n: int) -> dict[int, int]:
    """Per-label sizes summing to ``n``, in proportion to ``counts`` (largest remainder, ties by label),
    then, when n allows, one for every label, taken from the largest quota."""
    labels = sorted(counts)
    total = sum(counts.values())
    exact = {lab: n * counts[lab] / total for lab in labels}
    quota = {lab: math.floor(exact[lab]) for lab in labels}
    leftover = n - sum(quota.values())
    for lab in sorted(labels, key=lambda lab: (-(exact[lab] - quota[lab]), lab))[:leftover]:
        quota[lab] += 1
    if n >= len(labels):
        for lab in labels:
            if quota[lab] == 0:
                donor = max(labels, key=lambda d: (quota[d], -d))
                quota[donor] -= 1
                quota[lab] = 1
    return quota


def _k_per_label(pool: list[dict], k: int, rng: random.Random, task: Task | None) -> list[dict]:
    kind = _label_kind(pool)
    if kind != "class":
        raise RetriktError("k_per_label needs int class labels; "
                           + ("some examples are unlabelled" if kind == "none" else "regression tasks take n="))
    groups = _by_label(pool)
    wanted = range(task.num_labels) if task is not None else sorted(groups)
    short = {lab: len(groups.get(lab, [])) for lab in wanted if len(groups.get(lab, [])) < k}
    if short:
        raise RetriktError(f"k_per_label={k} but label(s) have fewer examples: "
                           + ", ".join(f"label {lab} has {c}" for lab, c in short.items()))
    chosen = [ex for lab in sorted(groups) for ex in _shuffled(groups[lab], rng)[:k]]
    return _shuffled(chosen, rng)


def _n_total(pool: list[dict], n: int, rng: random.Random) -> list[dict]:
    if n > len(pool):
        raise RetriktError(f"n={n} but only {len(pool)} examples to sample from")
    if _label_kind(pool) != "class":
        return _shuffled(pool, rng)[:n]
    groups = _by_label(pool)
    quota = _quotas({lab: len(g) for lab, g in groups.items()}, n)
    chosen = [ex for lab in sorted(groups) for ex in _shuffled(groups[lab], rng)[:quota[lab]]]
    return _shuffled(chosen, rng)


def sample_few_shot(examples: Sequence[dict], k_per_label: int | None = None, n: int | None = None,
                    seed: int = 0, *, task: Task | str | None = None) -> list[dict]:
    """A seeded subset of ``examples`` (the same dicts, not copies), in shuffled order.

    ``k_per_label=k``: k examples of each label (RetriktError when a label has fewer; with ``task``, every
    label of the task must be present). ``n=n``: n in total, stratified by label for classification (in
    proportion to the label counts, each label at least once when n >= the number of labels), else a plain
    sample.
    """
    if (k_per_label is None) == (n is None):
        raise RetriktError("sample_few_shot: give exactly one of k_per_label or n")
    size = k_per_label if k_per_label is not None else n
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise RetriktError(f"sample_few_shot: {'k_per_label' if n is None else 'n'} must be a positive int, "
                           f"got {size!r}")
    if not examples:
        raise RetriktError("sample_few_shot: no examples to sample from")
    task = get_task(task) if task is not None else None
    pool = sorted(examples, key=lambda ex: ex.get("idx", 0))  # stable: ties keep their input order
    rng = random.Random(seed)
    if k_per_label is not None:
        out = _k_per_label(pool, int(k_per_label), rng, task)
    else:
        out = _n_total(pool, int(n), rng)
    if _label_kind(out) == "class":
        logger.info("sampled %d examples (seed %d), per label %s", len(out), seed,
                    dict(sorted(Counter(int(ex["label"]) for ex in out).items())))
    return out
