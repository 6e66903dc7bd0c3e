"""Prior matching of a store's teacher labels (``--store-prior kshot``).

A labeller adapted on 32 examples can lean to one class on generated text even where it is right on real text, and a
student that distils or retrieves those labels inherits the lean. The correction multiplies each class's probability
by one constant per class, chosen so that the labels' mean equals a target prior: the label-shift adjustment of
Saerens, Latinne & Decaestecker (2002, Neural Computation 14(1)), with the prior fixed instead of estimated. The
generator is conditioned in proportion to the k-shot label counts, so their frequencies are the prior the store was
meant to have; only the labels of the examples a student trains on are used.
"""
from __future__ import annotations

import numpy as np

from retrikt.io import RetriktError


def kshot_prior(labels: list[int], n: int, smoothing: float = 1.0) -> np.ndarray:
    """Label frequencies of the k-shot examples, add-``smoothing`` so a class absent from them keeps some mass."""
    if n < 2:
        raise RetriktError("--store-prior needs a classification task (a regression store has no label prior)")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n)[:n].astype(np.float64)
    return (counts + smoothing) / (counts.sum() + smoothing * n)


def prior_weights(soft: np.ndarray, target: np.ndarray, iters: int = 500, tol: float = 1e-7) -> np.ndarray:
    """Per-class weights w (max 1) such that the rows of ``soft`` times w, renormalised, have mean ``target``.
    Fixed-point scaling w ← w · target / mean; it converges when every class has some probability mass."""
    soft = np.asarray(soft, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if soft.ndim != 2 or soft.shape[1] != target.shape[0]:
        raise RetriktError(f"--store-prior: soft labels of shape {soft.shape} do not match a prior over "
                           f"{target.shape[0]} classes")
    if (soft.sum(0) <= 0).any():
        raise RetriktError("--store-prior: a class has no probability mass in the store's labels; nothing to "
                           "re-weight it with")
    w = np.ones(soft.shape[1])
    for _ in range(iters):
        mean = reweight(soft, w).mean(0)
        if np.abs(mean - target).max() < tol:
            break
        w = w * target / mean
        w = w / w.max()
    return w


def reweight(soft: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row of ``soft`` times ``weights``, renormalised to sum to one."""
    q = np.asarray(soft, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    return q / q.sum(1, keepdims=True)
