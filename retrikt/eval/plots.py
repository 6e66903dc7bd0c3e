"""Comparison plots (PNG, matplotlib Agg): main metric per method and task; metric vs. size and speed."""
from __future__ import annotations

from pathlib import Path

from retrikt.eval.results import task_average

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_compare(rows: list[dict], tasks: list[str], out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "accuracy_by_task.png", out / "accuracy_vs_size_speed.png"]
    labels = [f"{r['method']}\n{r['student']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks) * max(1, len(rows)) / 3), 4))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(tasks))
    for i, r in enumerate(rows):
        means = [100 * np.mean(r["per_task"][t]) if t in r["per_task"] else np.nan for t in tasks]
        stds = [100 * np.std(r["per_task"][t]) if t in r["per_task"] else 0 for t in tasks]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=stds, label=labels[i].replace("\n", " / "))
    ax.set_xticks(x, tasks)
    ax.set_ylabel("main metric (x100)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    partial = [lab.replace("\n", " / ") for r, lab in zip(rows, labels) if task_average(r, tasks) is None]
    for r, lab in zip(rows, labels):
        if task_average(r, tasks) is None:
            continue  # an average over fewer tasks would not be comparable
        avg = 100 * task_average(r, tasks)
        axes[0].scatter(r["num_parameters"] or np.nan, avg)
        axes[0].annotate(lab.replace("\n", " / "), (r["num_parameters"] or 0, avg), fontsize=7)
        axes[1].scatter(r["examples_per_s"] or np.nan, avg)
        axes[1].annotate(lab.replace("\n", " / "), (r["examples_per_s"] or 0, avg), fontsize=7)
    for a, xl in zip(axes, ["parameters", "examples / s (CPU)"]):
        a.set_xscale("log")
        a.xaxis.set_minor_formatter(plt.NullFormatter())  # minor log labels collide over one decade
        a.set_xlabel(xl)
        a.set_ylabel("average main metric (x100)")
    if partial:
        fig.suptitle("not shown (some tasks missing): " + ", ".join(partial), fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
