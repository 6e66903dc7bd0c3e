"""Choosing a retrieval student's inference settings (k, β, τ, labels, keys) on its k-shot set, never on validation.

The default (``--cv-folds 4``): k-fold cross-validation over the whole k-shot set, every setting scored by the
log-loss of the out-of-fold predictions after a temperature fitted to them (calibrated log-loss), ties to the
student's own prediction. The old rule (``--cv-folds 0``): accuracy on a quarter of the k-shot set held out, kept for
the ablation.
"""
from __future__ import annotations

import itertools
import random

import numpy as np

from retrikt.student.retrieval import RetrievalStudent, neighbour_vote


def choose_settings(model: RetrievalStudent, dev: list[dict], grid_k=(1, 4, 8, 16), grid_beta=(0.0, 0.25, 0.5, 0.75, 1.0),
                    grid_tau=(0.05, 0.1, 0.5), grid_labels=("teacher",)) -> dict:
    """Pick k, β, τ maximising the main metric on held-out k-shot examples (never the validation split)."""
    from retrikt.tasks import compute_metrics
    if not dev:
        return {}
    p, scores, ids = model._student_and_neighbours(dev, max(grid_k))
    labels = [e["label"] for e in dev]
    best, best_score = {}, -np.inf
    for votes, k, beta, tau in itertools.product(grid_labels, grid_k, grid_beta, grid_tau):
        pred = model.mix(p, scores, ids, min(k, ids.shape[1]), beta, tau, votes).argmax(1)
        score = compute_metrics(model.task, labels, pred.tolist())["main"]
        if score > best_score + 1e-9:  # ties keep the earlier (teacher labels, smaller k, more retrieval) setting
            best, best_score = {"labels": votes, "k": k, "beta": beta, "tau": tau}, score
    return best | {"dev_main": best_score, "dev_n": len(dev)}


GRID_K, GRID_BETA, GRID_TAU = (1, 4, 8, 16), (0.0, 0.25, 0.5, 0.75, 1.0), (0.05, 0.1, 0.5)


def retrieval_votes(model: RetrievalStudent, examples: list[dict], grid_labels=("teacher",), grid_k=GRID_K,
                    grid_tau=GRID_TAU, grid_keys=("store",)) -> tuple[np.ndarray, dict]:
    """The student's own probabilities [n, C] on ``examples`` and the retrieval half of the mixture for every
    (labels, k, τ, keys) of the grid: what :func:`cv_select` needs from one fold's model, whose memory may be its
    own."""
    votes = {"teacher": model.teacher_probs, "conditioned": model.conditioned_probs}
    ret = {}
    for keys in grid_keys:
        p, scores, ids = model._student_and_neighbours(examples, max(grid_k), keys=keys)
        for name, k, tau in itertools.product(grid_labels, grid_k, grid_tau):
            ret[(name, k, tau, keys)] = neighbour_vote(scores, ids, votes[name], min(k, ids.shape[1]), tau)
    return p, ret


# Temperatures a setting's mixture may be rescaled by before its log-loss is read: 0.05 (sharper) to 20 (flatter).
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))


def calibrated_log_loss(mix: np.ndarray, y: np.ndarray, per_example: bool = False):
    """(log-loss of ``mix`` rescaled by the temperature that minimises it, that temperature): one scalar fitted on
    the same predictions, so what is scored is how well a setting ranks the answers, not how confident it is. The
    argmax, and so every prediction, does not depend on the temperature. ``per_example``: also each example's loss
    at that temperature (what the standard-error margin of :func:`pick_setting` is computed from)."""
    z = np.log(np.clip(mix, 1e-6, 1.0))[None] / TEMPERATURES[:, None, None]  # [T, n, C]
    zmax = z.max(2, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(2)) + zmax[..., 0]
    each = lse - z[:, np.arange(len(y)), y]  # [T, n]
    ll = each.mean(1)
    i = int(np.argmin(ll))
    if per_example:
        return float(ll[i]), float(TEMPERATURES[i]), each[i]
    return float(ll[i]), float(TEMPERATURES[i])


def cv_select(p: np.ndarray, ret: dict, labels, grid_beta=GRID_BETA, tol: float = 0.005,
              calibrate: bool = True, se_margin: float = 1.0) -> tuple[dict, list[dict]]:
    """(chosen setting, every setting's log-loss) over out-of-fold predictions of the k-shot set.

    Log-loss, not accuracy: on 8 held-out examples accuracy moves in 12.5-point steps and ties are the rule. But raw
    log-loss mostly measures confidence: fold students trained on a few dozen examples are overconfident, so any
    soft vote lowers it (smoothing) and a sharp vote that ranks the answers better raises it. So each setting is
    scored after its own temperature (``calibrate``; ``raw_log_loss`` keeps the uncalibrated score), the grid also
    holds the student smoothed towards the uniform distribution (labels ``uniform``; its argmax is the student's),
    and retrieval is chosen only where it beats both by more than ``tol`` nats and ``se_margin`` standard errors;
    among such settings the one that trusts the student most wins (largest β, then k, then τ). A setting whose out-of-fold predictions are all one
    class (``one_class``) is not chosen while another is not: the temperature rescales but never shifts the
    decision, so a vote that ranks well yet never crosses it (a store voting its majority label everywhere) wins
    the log-loss and scores only the majority class (MCC 0)."""
    y = np.asarray(labels, dtype=int)
    rows = []
    uniform = np.full_like(p, 1.0 / p.shape[1])
    for (name, k, tau, keys), r in list(ret.items()) + [(("uniform", 0, 0.0, "none"), uniform)]:
        for beta in grid_beta:
            mix = beta * p + (1 - beta) * r
            each = -np.log(np.clip(mix[np.arange(len(y)), y], 1e-6, 1.0))
            raw = float(each.mean())
            ll, temp, each = calibrated_log_loss(mix, y, per_example=True) if calibrate else (raw, 1.0, each)
            pred = mix.argmax(1)
            acc = float((pred == y).mean())
            rows.append({"labels": name, "k": k, "beta": beta, "tau": tau, "keys": keys, "log_loss": ll,
                         "raw_log_loss": raw, "temperature": round(temp, 4), "accuracy": round(acc, 5),
                         "one_class": bool(len(np.unique(pred)) == 1 < len(np.unique(y))),
                         "losses": [round(float(v), 5) for v in each]})
    return pick_setting(rows, tol, se_margin=se_margin), rows


def pick_setting(rows: list[dict], tol: float = 0.005, guard: bool = True, se_margin: float = 0.0) -> dict:
    """The setting cv_select chooses among ``rows`` (every setting's out-of-fold log-loss): the student alone
    (β = 1) when it, or the student smoothed towards uniform, is near the best; else, among the settings near the
    best, the largest β, then k, then τ. Near: within ``tol`` nats, or within ``se_margin`` standard errors of the
    per-example loss differences to the best setting (rows carrying ``losses``), the one-standard-error rule: on
    32 out-of-fold examples a setting that wins by less than its own noise is not evidence that retrieval helps.
    ``guard``: only among the settings that do not predict one class for every out-of-fold example, where any do
    not (rows of older runs carry no flag: all are kept)."""
    if guard:
        rows = [r for r in rows if not r.get("one_class")] or rows
    top = min(rows, key=lambda r: r["log_loss"])
    near = [r for r in rows if r["log_loss"] <= top["log_loss"] + max(tol, se_margin * paired_se(r, top))]
    alone = [r for r in rows if r["beta"] >= 1 and r["labels"] != "uniform"]
    if alone and any(r["beta"] >= 1 or r["labels"] == "uniform" for r in near):
        return dict(max(alone, key=lambda r: (r["k"], r["tau"])))
    return dict(max(near, key=lambda r: (r["beta"], r["k"], r["tau"])))


def paired_se(row: dict, top: dict) -> float:
    """Standard error of the mean per-example loss difference between two settings scored on the same out-of-fold
    examples (0 where either row predates per-example losses)."""
    a, b = row.get("losses"), top.get("losses")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return 0.0
    d = np.asarray(a) - np.asarray(b)
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def pick_by_accuracy(rows: list[dict]) -> dict:
    """The old rule's criterion on the same out-of-fold predictions, for the ablation: the highest accuracy, ties
    to teacher labels, the smallest k, the most retrieval (smallest β), the smallest τ, as :func:`choose_settings`
    breaks them. Isolates the criterion from the old rule's other weakness, its 8-example holdout."""
    order = {"teacher": 0, "conditioned": 1}
    cands = [r for r in rows if r["labels"] != "uniform" and "accuracy" in r]
    return dict(min(cands, key=lambda r: (-r["accuracy"], order.get(r["labels"], 2), r["k"], r["beta"], r["tau"])))


def pick_by_raw_log_loss(rows: list[dict], tol: float = 0.005) -> dict:
    """The session-8 rule on the same out-of-fold predictions, for the ablation: :func:`pick_setting` on the
    uncalibrated log-loss (and without the one-class guard, which it predates)."""
    return pick_setting([r | {"log_loss": r["raw_log_loss"]} for r in rows if "raw_log_loss" in r], tol, guard=False)


def beta_curve(rows: list[dict], smoothing: bool = False) -> dict:
    """The best out-of-fold log-loss at each β of the retrieval settings (``smoothing``: of the student smoothed
    towards uniform instead): what the selection traded off, for the run's record."""
    out: dict[float, float] = {}
    for r in rows:
        if (r["labels"] == "uniform") != smoothing:
            continue
        out[r["beta"]] = min(out.get(r["beta"], np.inf), r["log_loss"])
    return {str(b): round(v, 5) for b, v in sorted(out.items())}


def folds_of(n: int, k: int, seed: int) -> list[list[int]]:
    """``k`` disjoint folds covering ``range(n)``, in a seeded order."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return [idx[f::k] for f in range(k)]


def split_holdout(train: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    if share <= 0 or len(train) < 8:
        return train, []
    idx = list(range(len(train)))
    random.Random(seed).shuffle(idx)
    n_dev = max(1, int(round(share * len(train))))
    return [train[i] for i in idx[n_dev:]], [train[i] for i in idx[:n_dev]]
