"""One evaluation harness for every student: metrics, per-example predictions, speed and size."""
from __future__ import annotations

import logging
import time

import numpy as np

from retrikt.tasks import compute_metrics, load_split

logger = logging.getLogger(__name__)


def evaluate(student, task, split: str = "validation", examples: list[dict] | None = None,
             data_dir=None, limit: int | None = None, batch_size: int | None = None) -> dict:
    """Score ``student`` (anything with ``predict_proba`` and ``num_parameters``) on ``task``'s ``split``.

    Returns metrics (official, plus ``main``), per-example predictions and probabilities, examples/s (wall-clock of
    ``predict_proba`` over the whole split, retrieval included for retrieval students) and the parameter count.
    """
    if examples is None:
        examples = load_split(task, split, data_dir=data_dir)
    if limit:
        examples = examples[:limit]
    labelled = [e for e in examples if e.get("label") is not None]
    if not labelled:
        raise ValueError(f"{task.name}/{split}: no labelled examples to evaluate on")
    kw = {"batch_size": batch_size} if batch_size else {}
    t0 = time.perf_counter()
    probs = np.asarray(student.predict_proba(labelled, **kw))
    seconds = time.perf_counter() - t0
    preds = probs if task.is_regression else probs.argmax(-1)
    labels = [e["label"] for e in labelled]
    metrics = compute_metrics(task, labels, preds.tolist(), examples=labelled)
    return {
        "task": task.name,
        "split": split,
        "n": len(labelled),
        "metrics": metrics,
        "main": metrics["main"],
        "examples_per_s": len(labelled) / seconds if seconds > 0 else float("inf"),
        "eval_seconds": seconds,
        "num_parameters": int(student.num_parameters()),
        "predictions": [{"idx": e.get("idx"), "label": e["label"],
                         "pred": p.item() if hasattr(p, "item") else p,
                         "probs": None if task.is_regression else [round(float(x), 5) for x in pr]}
                        for e, p, pr in zip(labelled, preds, probs)],
    }


def evaluate_variants(student, task, examples: list[dict]) -> dict:
    """Scores of ``student``'s other settings (``variant_settings()``: ablations of one trained retrieval student)
    on ``examples`` (those its chosen setting was scored on): {name: {settings, main, metrics}}. For the record,
    never to choose."""
    variants = student.variant_settings() if hasattr(student, "variant_settings") else {}
    out = {}
    chosen = dict(student.settings.__dict__) if variants else {}
    labelled = [e for e in examples if e.get("label") is not None]
    for name, settings in variants.items():
        student.settings.__dict__.update(settings)
        try:
            probs = np.asarray(student.predict_proba(labelled))
        finally:
            student.settings.__dict__.update(chosen)
        metrics = compute_metrics(task, [e["label"] for e in labelled], probs.argmax(-1).tolist(), examples=labelled)
        out[name] = {"settings": settings, "main": metrics["main"], "metrics": metrics}
        logger.info("%s: %s %.4f", name, task.name, metrics["main"])
    return out
