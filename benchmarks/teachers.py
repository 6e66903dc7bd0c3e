"""The teacher table: each teacher LLM x {zero-shot, in-context, adapted} on each task, with its examples/s.

    python -m benchmarks.teachers                 # reads benchmarks/results/teachers/runs, writes teachers.{md,json}

The runs come from ``python -m retrikt.train --method teacher|teacher-icl|teacher-lora --teacher MODEL`` with
``--out benchmarks/results/teachers/runs`` (the commands are in the table's footer). The 32-shot MiniLM fine-tune of
the same seeds (``--reference``, the compare grid) is the row a teacher must beat to have anything to teach.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from retrikt.config import arg, parse_config
from retrikt.eval import load_results
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS

MODES = {"teacher": "zero-shot, calibrated", "teacher-icl": "in-context, 4 demos, calibrated",
         "teacher-lora": "adapted (LoRA r16, 3 epochs)", "finetune": "32-shot fine-tune (reference)"}
# rows of another calibration than the default content-free one, shown only where such runs exist
OTHER_CALIBRATIONS = {"batch": "batch-calibrated on the seed's k-shot inputs"}


@dataclass
class TeachersTable:
    runs: list[str] = arg(["benchmarks/results/teachers/runs", "benchmarks/results/teachers-bc/runs",
                           "benchmarks/results/compare/runs"],
                          help="folders of run results (the first one holding a (method, model, task, seed) wins)")
    tasks: list[str] = arg(["cb", "rte", "copa", "sst2", "cola"], help="task columns")
    models: list[str] = arg(["qwen-0.5b", "qwen-1.5b"], help="teacher models (rows)")
    reference: str = arg("minilm-l6", help="student whose 32-shot fine-tune is shown as the reference row")
    seeds: list[int] = arg([1, 2, 3], help="seeds to include")
    name: str = arg("teachers", help="results file stem")


def collect(cfg: TeachersTable) -> dict:
    """{(method, model, calibration): {task: [runs]}}, one run per seed, earlier folders first; calibration is
    "" for the default (content-free, or none for an adapted teacher) and the mode's name otherwise."""
    seen, table = set(), defaultdict(lambda: defaultdict(list))
    wanted = set(cfg.models) | {cfg.reference}
    for folder in cfg.runs:
        for r in load_results(folder):
            cal = r.get("calibration") if r.get("calibration") in OTHER_CALIBRATIONS else ""
            key = (r["method"], r["student"], cal, r["task"], r["seed"])
            if r["method"] in MODES and r["student"] in wanted and r["seed"] in cfg.seeds and key not in seen:
                if r["method"] == "finetune" and r["student"] != cfg.reference:
                    continue
                seen.add(key)
                table[(r["method"], r["student"], cal)][r["task"]].append(r)
    return table


def cell(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    mains = [r["main"] * 100 for r in runs]
    return {"mean": statistics.fmean(mains), "std": statistics.stdev(mains) if len(mains) > 1 else None,
            "seeds": sorted(r["seed"] for r in runs), "n": sorted({r.get("n") for r in runs}),
            "examples_per_s": statistics.fmean(r.get("examples_per_s") or 0.0 for r in runs),
            "values": mains}


def mode_name(method: str, calibration: str) -> str:
    return MODES[method].replace("calibrated", OTHER_CALIBRATIONS[calibration]) if calibration else MODES[method]


def fmt(c: dict | None) -> str:
    if c is None:
        return "–"
    spread = f" ± {c['std']:.1f}" if c["std"] is not None else ""
    n = "/".join(map(str, c["n"]))
    runs = f"{len(c['seeds'])} run{'s' if len(c['seeds']) > 1 else ''}, " if len(c["seeds"]) != 3 else ""
    return f"{c['mean']:.1f}{spread} <sub>{runs}n={n}, {c['examples_per_s']:.2f} ex/s</sub>"


def cell_text(row: dict, task: str) -> str:
    """A row's cell; a calibration that cannot apply to the task (multiple choice: no fixed label to be biased
    towards) says so instead of looking like a run not done."""
    from retrikt.tasks import get_task
    from retrikt.teacher.lm import calibration_applies
    if row["cells"][task] is None and row["calibration"] and not calibration_applies(get_task(task)):
        return "n/a <sub>multiple choice: nothing to calibrate</sub>"
    return fmt(row["cells"][task])


def main(argv=None) -> None:
    cfg = parse_config(TeachersTable, argv, description=__doc__)
    table = collect(cfg)
    order = [(m, model, "") for model in cfg.models for m in ("teacher", "teacher-icl", "teacher-lora")]
    order = [k for m, model, _ in order for k in [(m, model, "")] + [(m, model, c) for c in OTHER_CALIBRATIONS
                                                                      if (m, model, c) in table]]
    order.append(("finetune", cfg.reference, ""))
    rows = [{"method": m, "mode": mode_name(m, cal), "model": model, "calibration": cal or None,
             "cells": {t: cell(table[(m, model, cal)].get(t, [])) for t in cfg.tasks}} for m, model, cal in order]
    atomic_write_json(RESULTS / f"{cfg.name}.json", run_metadata(cfg, seeds=cfg.seeds) | {"rows": rows})
    lines = ["# Teachers: zero-shot, in-context and adapted, 32-shot", "",
             "Main metric (accuracy; CoLA MCC x 100), mean ± std over seeds "
             f"{' '.join(map(str, cfg.seeds))} (the zero-shot row does not depend on the seed: one run); n = "
             "validation examples scored; ex/s = scoring speed of that run, usually measured with other jobs on the "
             "same 2 cores (so pessimistic, and not comparable across rows; `benchmarks.scoring` measures speed "
             "alone). The zero-shot qwen-0.5b and fine-tune rows are the compare grid's runs.", "",
             "| model | mode | " + " | ".join(cfg.tasks) + " |", "|---|---|" + "---|" * len(cfg.tasks)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | " + " | ".join(cell_text(r, t) for t in cfg.tasks) + " |")
    lines += ["", "Commands: `python -m retrikt.train --task T --method teacher-lora|teacher-icl|teacher --teacher M "
              "--seeds 1 2 3 --out benchmarks/results/teachers/runs` (`--eval-limit N` where n is a prefix); "
              "table: `python -m benchmarks.teachers`."]
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
