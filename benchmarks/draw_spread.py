"""How much does the draw of a store's samples move its students? kd and retrikt on two or more draws per seed.

    python -m benchmarks.draw_spread --task sst2 --seeds 1 2 --draws "0=RUNS_D0" "1=RUNS_D1" --name draw_spread_sst2

Each ``draw=folder`` is a results folder (``retrikt.train`` / ``retrikt.compare --out``) holding the kd and retrikt
runs of every seed on stores of that draw (``retrikt.build --draw N``: the same k-shot set, tuned prompt and
labeller, other samples). Per seed the table gives each draw's score, the largest difference between draws, and
retrikt − kd per draw: whether a gap between two recipes or two methods is larger than what another draw of the
same recipe gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.eval import load_results
from retrikt.io import RetriktError, atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS

METHODS = ("kd", "retrikt")


@dataclass
class DrawSpreadBench:
    task: str = arg("sst2", help="task")
    seeds: list[int] = arg([1, 2, 3], help="k-shot seeds")
    draws: list[str] = arg([], help="'draw=folder' pairs: each folder holds the kd and retrikt runs on that draw's "
                                    "stores")
    note: str = arg("", help="a line under the table (where the runs come from)")
    name: str = arg("draw_spread", help="results file stem")


def parse_draws(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        draw, sep, folder = spec.partition("=")
        if not sep or not draw or not folder:
            raise RetriktError(f"--draws takes 'draw=folder', got {spec!r}")
        out[draw] = folder
    if len(out) < 2:
        raise RetriktError("--draws: give at least two draws to compare")
    return out


def collect(task: str, seeds: list[int], draws: dict[str, str]) -> dict:
    """{method: {draw: {seed: (main, store entries)}}} for the runs found; a run of another task is ignored."""
    table = {m: {d: {} for d in draws} for m in METHODS}
    for draw, folder in draws.items():
        for r in load_results(folder):
            if r.get("task") == task and r.get("method") in METHODS and r.get("seed") in seeds:
                table[r["method"]][draw][r["seed"]] = (r["main"], r.get("store_entries"))
    return table


def spread(table: dict, seeds: list[int]) -> dict:
    """Per method and seed, the largest minus the smallest score over the draws that have it; and per draw and
    seed, retrikt − kd."""
    out = {"range": {m: {} for m in METHODS}, "gap": {}}
    for m in METHODS:
        for s in seeds:
            got = [v[s][0] for v in table[m].values() if s in v]
            if len(got) >= 2:
                out["range"][m][s] = max(got) - min(got)
    for d in table["kd"]:
        out["gap"][d] = {s: table["retrikt"][d][s][0] - table["kd"][d][s][0] for s in seeds
                         if s in table["kd"][d] and s in table["retrikt"][d]}
    return out


def _cell(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render(cfg: DrawSpreadBench, table: dict, sp: dict) -> str:
    seeds = cfg.seeds
    head = "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines = [f"# {cfg.task}: how much another draw of the store's samples moves kd and retrikt", "",
             "Same k-shot set, tuned prompt and labeller per seed; only the samples differ (`retrikt.build --draw`). "
             "Validation set, whole; x100.", "", head, "|---|" + "---:|" * len(seeds)]
    for m in METHODS:
        for d, runs in table[m].items():
            cells = [f"{_cell(runs[s][0])} ({runs[s][1]})" if s in runs else "–" for s in seeds]
            lines.append(f"| {m}, draw {d} (store entries) | " + " | ".join(cells) + " |")
        lines.append(f"| {m}: largest − smallest draw | " + " | ".join(
            _cell(sp["range"][m].get(s)) for s in seeds) + " |")
    for d, gaps in sp["gap"].items():
        lines.append(f"| retrikt − kd, draw {d} | " + " | ".join(
            f"{100 * gaps[s]:+.1f}" if s in gaps else "–" for s in seeds) + " |")
    for m in METHODS:
        r = list(sp["range"][m].values())
        if r:
            lines.append(f"\n{m}: mean largest − smallest over {len(r)} seeds {100 * np.mean(r):.1f} points.")
    if cfg.note:
        lines += ["", cfg.note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DrawSpreadBench, argv, description=__doc__)
    table = collect(cfg.task, cfg.seeds, parse_draws(cfg.draws))
    sp = spread(table, cfg.seeds)
    atomic_write_json(RESULTS / f"{cfg.name}.json", {"table": table, "spread": sp, **run_metadata(cfg, cfg.seeds)})
    text = render(cfg, table, sp)
    atomic_write_text(RESULTS / f"{cfg.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
