"""Reward of a generated sample: quality (does the teacher agree with the conditioned label) + diversity.

Pure function of its inputs: the parser, the teacher classifier, the embedder and the optional fluency scorer are
injected, so the project's PPO and the TRL backends share it and tests can feed hand-made numbers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from retrikt.config import arg
from retrikt.io import RetriktError

logger = logging.getLogger(__name__)

ParseFn = Callable[[str], "dict | None"]
QualityFn = Callable[[list[dict], list[Any]], Sequence[float]]
EmbedFn = Callable[[list[str]], np.ndarray]
FluencyFn = Callable[[list[dict]], Sequence[float]]


@dataclass
class RewardConfig:
    w_quality: float = arg(1.0, help="weight of quality: the teacher's probability of the conditioned label")
    w_diversity: float = arg(0.5, help="weight of diversity: 1 - max cosine similarity to accepted samples and "
                                       "to the rest of the batch")
    w_fluency: float = arg(0.0, help="weight of fluency: mean token log-prob under the frozen LM (needs fluency_fn)")
    diversity_vs_batch: bool = arg(True, help="also compare each sample with the other samples of its batch")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise RetriktError(f"embed_fn must return a 2-D array [n, dim], got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def diversity_scores(emb: np.ndarray, accepted: np.ndarray | None, vs_batch: bool = True) -> np.ndarray:
    """1 - max cosine similarity of each row of ``emb`` to ``accepted`` and (``vs_batch``) to the other rows,
    clipped to [0, 1]; 1 when there is nothing to compare with. An exact duplicate scores 0."""
    emb = _normalise(emb)
    n = emb.shape[0]
    best = np.full(n, -np.inf)
    if accepted is not None and len(accepted):
        acc = _normalise(accepted)
        if acc.shape[1] != emb.shape[1]:
            raise RetriktError(f"accepted embeddings have dim {acc.shape[1]}, samples have dim {emb.shape[1]}")
        best = np.maximum(best, (emb @ acc.T).max(1))
    if vs_batch and n > 1:
        sim = emb @ emb.T
        np.fill_diagonal(sim, -np.inf)
        best = np.maximum(best, sim.max(1))
    div = np.where(np.isinf(best), 1.0, 1.0 - best)
    return np.clip(div, 0.0, 1.0)


def sample_labels(samples: list[dict]) -> list[Any]:
    missing = [i for i, s in enumerate(samples) if s.get("label") is None]
    if missing:
        raise RetriktError(f"samples {missing[:5]} carry no 'label' (the label they were conditioned on)")
    return [s["label"] for s in samples]


def compute_rewards(samples: list[dict], parse_fn: ParseFn, quality_fn: QualityFn, embed_fn: EmbedFn,
                    accepted_embeddings: np.ndarray | None = None, cfg: RewardConfig | None = None,
                    fluency_fn: FluencyFn | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rewards [n] and their parts for generated ``samples`` (dicts with ``text`` and the conditioned ``label``).

    - quality: ``quality_fn(parsed_examples, labels)`` -> probability of the conditioned label; 0 if unparsable.
    - diversity: :func:`diversity_scores` of ``embed_fn(texts)`` among the parsable samples; 0 if unparsable,
      so garbage cannot earn reward by being unlike everything else.
    - fluency: ``fluency_fn(samples)`` (mean token log-prob), only when ``cfg.w_fluency`` is non-zero.
    """
    cfg = cfg or RewardConfig()
    n = len(samples)
    labels = sample_labels(samples)
    parsed = [parse_fn(s["text"]) for s in samples]
    ok = np.array([p is not None for p in parsed], dtype=bool)
    idx = np.flatnonzero(ok)
    quality, diversity, fluency = np.zeros(n), np.zeros(n), np.zeros(n)
    if len(idx):
        q = np.asarray(quality_fn([parsed[i] for i in idx], [labels[i] for i in idx]), dtype=np.float64)
        if q.shape != (len(idx),):
            raise RetriktError(f"quality_fn returned shape {q.shape} for {len(idx)} examples")
        quality[idx] = q
        if cfg.w_diversity:
            emb = embed_fn([samples[i]["text"] for i in idx])
            diversity[idx] = diversity_scores(emb, accepted_embeddings, cfg.diversity_vs_batch)
    if cfg.w_fluency:
        if fluency_fn is None:
            raise RetriktError("RewardConfig.w_fluency is non-zero but no fluency_fn was given")
        fluency = np.asarray(fluency_fn(samples), dtype=np.float64).reshape(n)
    rewards = cfg.w_quality * quality + cfg.w_diversity * diversity + cfg.w_fluency * fluency
    logger.debug("rewards: %d/%d parsed, quality %.3f, diversity %.3f", len(idx), n, quality.mean(),
                 diversity.mean())
    return rewards, {"quality": quality, "diversity": diversity, "fluency": fluency, "parsed": ok.astype(np.float64)}
