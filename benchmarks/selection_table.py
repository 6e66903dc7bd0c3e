"""The settings-selection study: each retrikt student under the chosen (calibrated CV) setting beside the same
student under the other rules it was also scored with (variants), and kd / fine-tune on the same stores.

    python -m benchmarks.selection_table --runs benchmarks/results/selection-calibrated/runs

``RUNS/<slice>/`` holds ``retrikt.train`` / ``retrikt.compare`` result JSONs (one slice per store recipe). Writes
benchmarks/results/selection_calibrated.{json,md}. With ``--tasks``, the slices are those tasks of one runs folder
(a compare grid) and of ``--extra`` folders (students trained apart, e.g. without the relational loss): the ablation
table,

    python -m benchmarks.selection_table --runs benchmarks/results/grid/runs --tasks sst2 rte \
        --extra benchmarks/results/ablations/runs --name ablations --title "Ablations of the retrieval student"
"""
from __future__ import annotations

import shlex
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.eval import load_results
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS

NO_MARGIN = "no SE margin (session-11 rule)"
VARIANTS = ("no retrieval at inference", "keys store", "keys student", "keys teacher", NO_MARGIN,
            "uncalibrated log-loss (session-8 rule)", "accuracy rule (old criterion)")
NO_RELATIONAL = "retrikt, no relational loss (trained apart)"


@dataclass
class SelectionTable:
    runs: str = arg("benchmarks/results/selection-calibrated/runs", help="folder of <slice>/ result folders")
    name: str = arg("selection_calibrated", help="results file stem")
    title: str = arg("Settings selection: calibrated CV vs the older rules, on the same students",
                     help="heading of the Markdown table")
    tasks: list[str] = arg([], help="slice one runs folder by task instead of by sub-folder (empty: sub-folders)")
    extra: list[str] = arg([], help="with --tasks: more runs folders whose results join their task's slice")


def _cell(values: dict[int, float], seeds: list[int]) -> list[str]:
    cells = [f"{100 * values[s]:.1f}" if s in values else "–" for s in seeds]
    have = [values[s] for s in seeds if s in values]
    mean = f"{100 * np.mean(have):.1f}" + (f" ± {100 * np.std(have, ddof=1):.1f}" if len(have) > 1 else "") if have else "–"
    return cells + [mean + (f" (n = {len(have)} seeds)" if 0 < len(have) < len(seeds) else "")]


def _cv_without_margin(sel: dict) -> bool:
    return not sel.get("se_margin") and "cv" in str(sel.get("method", "")).lower()


def slice_rows(runs: list[dict], seeds: list[int]) -> tuple[list[tuple[str, dict]], list[str]]:
    rows, chosen = [], []
    for method in ("finetune", "kd"):
        vals = {r["seed"]: r["main"] for r in runs if r["method"] == method}
        if vals:
            rows.append((method, vals))
    rk = {r["seed"]: r for r in runs if r["method"] == "retrikt" and not r.get("config", {}).get("no_relational")}
    norel = {r["seed"]: r["main"] for r in runs
             if r["method"] == "retrikt" and r.get("config", {}).get("no_relational")}
    if rk:
        rows.append(("retrikt, chosen setting", {s: r["main"] for s, r in rk.items()}))
        for v in VARIANTS:
            vals = {s: r["variants"][v]["main"] for s, r in rk.items() if v in r.get("variants", {})}
            if v == NO_MARGIN and vals:  # a CV run without the SE margin (older, or margin 0) was chosen by that rule
                vals |= {s: r["main"] for s, r in rk.items() if _cv_without_margin(r.get("selection", {}))}
            if vals:
                rows.append((f"retrikt, {v}", vals))
        if norel:
            rows.append((NO_RELATIONAL, norel))
        for s, r in sorted(rk.items()):
            sel, ret = r.get("selection", {}), r["retrieval"]
            share = max(Counter(p["pred"] for p in r["predictions"]).values()) / len(r["predictions"])
            chosen.append(f"seed {s}: {sel.get('method', '?')}: keys {ret['keys']}, β {ret['beta']}, k {ret['k']}, "
                          f"τ {ret['tau']}; {r['store_entries']} store entries; one class {100 * share:.0f}%")
    return rows, chosen


def slices(cfg: SelectionTable) -> list[tuple[str, list[dict]]]:
    if not cfg.tasks:
        return [(p.name, load_results(p)) for p in sorted(Path(cfg.runs).iterdir()) if p.is_dir()]
    runs = load_results(cfg.runs) + [r for folder in cfg.extra for r in load_results(folder)]
    return [(t, [r for r in runs if r["task"] == t]) for t in cfg.tasks]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(SelectionTable, argv, description=__doc__)
    seeds = [1, 2, 3]
    md, out = [f"# {cfg.title}", ""], {}
    for name, runs in slices(cfg):
        rows, chosen = slice_rows(runs, seeds)
        out[name] = {"rows": {row: vals for row, vals in rows}, "chosen": chosen}
        md += [f"## {name}", "", "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
               "|---|" + "---:|" * (len(seeds) + 1)]
        md += ["| " + " | ".join([row] + _cell(vals, seeds)) + " |" for row, vals in rows]
        md += [""] + [f"- {c}" for c in chosen] + [""]
    meta = run_metadata(config=asdict(cfg), seeds=seeds)
    atomic_write_json(RESULTS / f"{cfg.name}.json", {**meta, "slices": out})
    md.append(f"Variants are the same trained student scored under another rule's setting (never chosen on validation). "
              f"Regenerate: `python -m benchmarks.selection_table {shlex.join(argv)}`; "
              f"commit `{meta['git_commit']}`.")
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
