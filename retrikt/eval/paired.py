"""Paired comparisons of two rows of a table: is one method's lead over another more than evaluation noise?

Two rows scored on the same validation examples with the same seeds differ on only some examples, and a table's
mean ± std hides that pairing. For each task this compares row A with row B on the seeds both have: the difference
of the main metric per seed and its mean, the examples where exactly one of them is right (pooled over seeds) with
the exact McNemar test on them, and a paired bootstrap interval of the mean difference (the same resampled examples
for both rows, the metric recomputed, so it holds for F1 and Matthews correlation too).

What these do not measure: they treat the trained students as fixed. Another training run or another draw of a
store moves a row too; the per-seed differences show that spread, the p-value and the interval do not.
"""
from __future__ import annotations

import statistics

import numpy as np

from retrikt.io import RetriktError
from retrikt.tasks import compute_metrics, get_task

DEFAULT_PAIRS = ("retrikt:kd", "retrikt:finetune", "kd:finetune")


def row_label(record: dict) -> str:
    """The row a results record belongs to, as :func:`retrikt.eval.results.summarise` names it."""
    return record["method"] + (f"-{record['tag']}" if record.get("tag") else "")


def parse_pairs(specs) -> list[tuple[str, str]]:
    """``["retrikt:kd", ...]`` -> ``[("retrikt", "kd"), ...]`` (``["none"]`` -> no pairs), with an error naming a
    malformed one."""
    if list(specs) == ["none"]:
        return []
    out = []
    for s in specs:
        a, sep, b = str(s).partition(":")
        if not sep or not a or not b or a == b:
            raise RetriktError(f"paired comparison {s!r}: expected ROW_A:ROW_B with two different rows, e.g. retrikt:kd")
        out.append((a, b))
    return out


def _by_idx(record: dict) -> dict:
    preds = record.get("predictions")
    if not preds:
        raise RetriktError(f"{record['task']} {row_label(record)} seed {record['seed']}: the results file holds no "
                           "per-example predictions, so it cannot be paired")
    return {p["idx"]: p for p in preds}


def matched_seeds(results: list[dict], a: str, b: str, task: str) -> list[tuple[int, list, list, list]]:
    """(seed, labels, A's predictions, B's predictions) for every seed where both rows have a run on ``task``,
    aligned by example index; an error where the two runs were scored on different examples."""
    runs = {(row_label(r), r["seed"]): r for r in results if r["task"] == task}
    out = []
    for seed in sorted({s for (lab, s) in runs if lab == a} & {s for (lab, s) in runs if lab == b}):
        pa, pb = _by_idx(runs[(a, seed)]), _by_idx(runs[(b, seed)])
        if pa.keys() != pb.keys():
            raise RetriktError(f"{task} seed {seed}: {a} and {b} were scored on different examples "
                               f"({len(pa)} vs {len(pb)}; an --eval-limit differs?): they cannot be paired")
        idx = sorted(pa)
        out.append((seed, [pa[i]["label"] for i in idx], [pa[i]["pred"] for i in idx], [pb[i]["pred"] for i in idx]))
    return out


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test: the binomial test of ``a_only`` successes in ``a_only + b_only`` at 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest
    return float(binomtest(a_only, n, 0.5).pvalue)


def confusion_metric(name: str, cm: np.ndarray) -> np.ndarray:
    """Metric ``name`` from a stack of confusion matrices [B, C, C] (rows gold, columns predicted), as the task
    metrics compute it from labels (F1 binary on label 1; macro F1 over the labels present; multiclass MCC)."""
    cm = cm.astype(float)
    total = cm.sum((1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    gold, pred = cm.sum(2), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "accuracy":
            return diag.sum(1) / total
        if name in ("f1", "f1a"):
            return np.nan_to_num(2 * diag[:, 1] / (gold[:, 1] + pred[:, 1]))
        if name == "f1_macro":
            present = (gold + pred) > 0
            return np.where(present, 2 * diag / (gold + pred), 0).sum(1) / present.sum(1)
        if name == "mcc":
            num = diag.sum(1) * total - (gold * pred).sum(1)
            den = np.sqrt((total ** 2 - (pred ** 2).sum(1)) * (total ** 2 - (gold ** 2).sum(1)))
            return np.where(den > 0, num / den, 0.0)
    raise RetriktError(f"no confusion-matrix form of metric {name!r}")


def _resampled(task, y: np.ndarray, p: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The main metric of predictions ``p`` on each resample of example indices ``draws`` [B, n]."""
    name = task.metrics[0]
    if task.is_regression or name not in ("accuracy", "f1", "f1a", "f1_macro", "mcc"):
        return np.array([compute_metrics(task, y[j], p[j])["main"] for j in draws])
    c = task.num_labels
    cells = np.arange(len(draws))[:, None] * c * c + y[draws] * c + p[draws]
    cm = np.bincount(cells.ravel(), minlength=len(draws) * c * c).reshape(len(draws), c, c)
    return confusion_metric(name, cm)


def paired_bootstrap(task, seeds: list[tuple], n_boot: int = 2000, rng_seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over seeds of main(A) − main(B), resampling each seed's examples with replacement
    (the same resample for both rows)."""
    task = get_task(task)
    rng = np.random.default_rng(rng_seed)
    diffs = np.zeros(n_boot)
    for _, y, pa, pb in seeds:
        y, pa, pb = np.asarray(y), np.asarray(pa), np.asarray(pb)
        draws = rng.integers(0, len(y), (n_boot, len(y)))
        diffs += _resampled(task, y, pa, draws) - _resampled(task, y, pb, draws)
    lo, hi = np.percentile(diffs / len(seeds), [2.5, 97.5])
    return float(lo), float(hi)


def compare_rows(results: list[dict], a: str, b: str, task: str, n_boot: int = 2000) -> dict | None:
    """Row A against row B on ``task`` (None where they share no seed): see the module docstring."""
    seeds = matched_seeds(results, a, b, task)
    if not seeds:
        return None
    t = get_task(task)
    deltas = [compute_metrics(t, y, pa)["main"] - compute_metrics(t, y, pb)["main"] for _, y, pa, pb in seeds]
    out = {"task": task, "a": a, "b": b, "seeds": [s for s, *_ in seeds], "n": len(seeds[0][1]),
           "delta_per_seed": deltas, "delta": statistics.fmean(deltas),
           "a_wins": sum(d > 0 for d in deltas), "b_wins": sum(d < 0 for d in deltas)}
    if not t.is_regression:  # right / wrong per example; a test of the metric itself only where it is accuracy
        a_only = sum(int(p == g != q) for _, y, pa, pb in seeds for g, p, q in zip(y, pa, pb))
        b_only = sum(int(q == g != p) for _, y, pa, pb in seeds for g, p, q in zip(y, pa, pb))
        out |= {"a_only_right": a_only, "b_only_right": b_only}
        if t.metrics[0] == "accuracy":
            out["mcnemar_p"] = mcnemar_p(a_only, b_only)
    out["ci95"] = list(paired_bootstrap(t, seeds, n_boot))
    return out


def paired_records(results: list[dict], pairs: list[tuple[str, str]], tasks: list[str],
                   n_boot: int = 2000) -> list[dict]:
    """:func:`compare_rows` for every pair and task with runs of both rows."""
    return [c for a, b in pairs for t in tasks if (c := compare_rows(results, a, b, t, n_boot)) is not None]


def paired_table(records: list[dict]) -> str:
    """A Markdown table of :func:`paired_records` ("" if there are none)."""
    lines = []
    for c in records:
        per_seed = " / ".join(f"{d * 100:+.1f}" for d in c["delta_per_seed"])
        disc = f"{c['a_only_right']} / {c['b_only_right']}" if "a_only_right" in c else "–"
        p = f"{c['mcnemar_p']:.3f}" if "mcnemar_p" in c else "–"
        lo, hi = c["ci95"]
        lines.append(f"| {c['a']} − {c['b']} | {c['task']} | {c['delta'] * 100:+.1f} | {per_seed} | {c['a_wins']} / "
                     f"{len(c['seeds'])} | {disc} | {p} | [{lo * 100:+.1f}, {hi * 100:+.1f}] |")
    if not lines:
        return ""
    head = ["| rows | task | Δ mean | Δ per seed | A ahead on seeds | only A / only B right | McNemar p | "
            "95% CI of Δ |", "|---|---|---:|---|---:|---:|---:|---|"]
    note = ("Δ: main metric x100, row A minus row B, over the seeds both have; only A / only B right: validation "
            "examples pooled over those seeds; McNemar p: exact, two-sided, on those (accuracy-scored tasks only: "
            "on F1 or Matthews correlation more examples right need not mean a higher score); CI: paired "
            "bootstrap over validation examples. The p-value and the interval treat the trained students as "
            "fixed: they measure evaluation noise, not how far another training run or store draw would move a "
            "row.")
    return "\n".join(head + lines + ["", note])
