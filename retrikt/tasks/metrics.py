"""Official GLUE / SuperGLUE metrics with scikit-learn and scipy (``evaluate.load`` would need the hub)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from retrikt.io import RetriktError
from retrikt.tasks.registry import Task, get_task

logger = logging.getLogger(__name__)


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y == p))


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(y, p, average="binary", pos_label=1, zero_division=0.0))


def _f1_macro(y: np.ndarray, p: np.ndarray) -> float:
    # over the labels present in either array, as jiant / SuperGLUE's scorer do
    return float(f1_score(y, p, average="macro", zero_division=0.0))


def _mcc(y: np.ndarray, p: np.ndarray) -> float:
    return float(matthews_corrcoef(y, p))


def _correlation(fn: Any, y: np.ndarray, p: np.ndarray) -> float:
    if np.std(y) == 0 or np.std(p) == 0:
        logger.warning("constant labels or predictions: correlation undefined, reporting nan")
        return float("nan")
    return float(fn(y, p)[0])


_METRICS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "f1a": _f1,  # MultiRC: binary F1 over all answer options
    "f1_macro": _f1_macro,
    "mcc": _mcc,
    "pearson": lambda y, p: _correlation(stats.pearsonr, y, p),
    "spearman": lambda y, p: _correlation(stats.spearmanr, y, p),
    # GLUE's leaderboard scores STS-B by the mean of the two correlations
    "pearson_spearman_mean": lambda y, p: (_correlation(stats.pearsonr, y, p)
                                           + _correlation(stats.spearmanr, y, p)) / 2,
}


def exact_match(labels: np.ndarray, predictions: np.ndarray, examples: Sequence[dict]) -> float:
    """MultiRC EM: the fraction of questions whose answer options are all predicted right."""
    if len(examples) != len(labels):
        raise RetriktError(f"exact match: {len(examples)} examples for {len(labels)} labels")
    correct: dict[Any, bool] = {}
    for ex, y, p in zip(examples, labels, predictions):
        try:
            key = (ex["paragraph_idx"], ex["question_idx"])
        except KeyError:
            raise RetriktError("exact match needs 'paragraph_idx' and 'question_idx' in each example "
                               "(as load_split('multirc', ...) gives)") from None
        correct[key] = correct.get(key, True) and bool(y == p)
    return float(np.mean(list(correct.values())))


def _as_array(values: Any, name: str, regression: bool) -> np.ndarray:
    values = list(values) if not isinstance(values, np.ndarray) else values
    if any(v is None for v in values):
        first = next(i for i, v in enumerate(values) if v is None)
        raise RetriktError(f"{name}[{first}] is None (unlabelled test data cannot be scored)")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise RetriktError(f"{name} must be one value per example, got shape {arr.shape}"
                           + ("; take argmax of probabilities first" if arr.ndim == 2 else ""))
    if regression:
        return arr.astype(float)
    if arr.dtype.kind == "f":
        fractional = arr[np.mod(arr, 1) != 0]
        if len(fractional):
            raise RetriktError(f"{name} must be label ints, got non-integer values such as {fractional[0]}")
    elif arr.dtype.kind not in "iub":
        raise RetriktError(f"{name} must be label ints, got dtype {arr.dtype}")
    return arr.astype(int)


def compute_metrics(task: Task | str, labels: Sequence, predictions: Sequence, *,
                    examples: Sequence[dict] | None = None) -> dict[str, float]:
    """Each of ``task.metrics`` plus ``main`` (the first). Predictions are label ints (floats for regression).

    MultiRC's ``em`` needs ``examples`` (for the question ids); without them only ``f1a`` is reported.
    """
    task = get_task(task)
    if task.skip_reason:
        raise RetriktError(f"task {task.name} is not supported: {task.skip_reason}")
    y = _as_array(labels, "labels", task.is_regression)
    p = _as_array(predictions, "predictions", task.is_regression)
    if len(y) != len(p):
        raise RetriktError(f"{len(y)} labels but {len(p)} predictions (task {task.name})")
    if len(y) == 0:
        raise RetriktError(f"no examples to score (task {task.name})")
    if not task.is_regression:
        for name, arr in (("labels", y), ("predictions", p)):
            bad = arr[(arr < 0) | (arr >= task.num_labels)]
            if len(bad):
                raise RetriktError(f"{name} hold {bad[0]}, outside 0..{task.num_labels - 1} "
                                   f"(task {task.name}: {list(task.label_names or ())})")
    out: dict[str, float] = {}
    for metric in task.metrics:
        if metric == "em":
            if examples is None:
                logger.debug("%s: no examples given, skipping exact match", task.name)
                continue
            out[metric] = exact_match(y, p, examples)
        else:
            out[metric] = _METRICS[metric](y, p)
    out["main"] = out[task.metrics[0]]
    return out
