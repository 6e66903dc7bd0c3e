"""Reference rows every table needs: the majority class, and which runs predict (almost) one class.

On F1-scored tasks, predicting the majority class everywhere scores above most 32-shot students, and a retrieval
student that collapsed to one class (β = 0, k = 1) topped a demo table that way. A table shows both facts.
"""
from __future__ import annotations

from collections import Counter

from retrikt.tasks import compute_metrics, get_task, load_split

ONE_CLASS_SHARE = 0.9  # a run whose predictions are at least this share one class is marked


def majority_record(task_name: str, data_dir=None, eval_limit: int = 0) -> dict | None:
    """A results record for 'predict the training split's most common label everywhere' (known without looking at
    validation; for COPA, always the same choice), scored like every run; None for regression and span tasks."""
    task = get_task(task_name)
    if task.is_regression or task.kind not in ("classification", "multiple_choice"):
        return None
    train = [e for e in load_split(task, "train", data_dir=data_dir) if e.get("label") is not None]
    majority = Counter(int(e["label"]) for e in train).most_common(1)[0][0]
    val = [e for e in load_split(task, "validation", data_dir=data_dir) if e.get("label") is not None]
    val = val[:eval_limit] if eval_limit else val
    metrics = compute_metrics(task, [e["label"] for e in val], [majority] * len(val), examples=val)
    return {"method": "majority", "student": "–", "task": task.name, "seed": 0, "main": metrics["main"],
            "metrics": metrics, "n": len(val), "num_parameters": 0, "examples_per_s": 0.0,
            "majority_label": task.label_names[majority]}


def one_class_share(record: dict) -> float | None:
    """The share of a run's predictions that fall in its most predicted class (None without predictions)."""
    preds = [p.get("pred") for p in record.get("predictions") or []]
    if not preds or not all(isinstance(p, int) for p in preds):
        return None
    return Counter(preds).most_common(1)[0][1] / len(preds)


def collapsed(record: dict, share: float = ONE_CLASS_SHARE) -> bool:
    s = one_class_share(record)
    return s is not None and s >= share
