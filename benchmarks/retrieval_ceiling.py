"""How much could retrieval at inference add to a trained retrieval student, under any setting? A ceiling.

    python -m benchmarks.retrieval_ceiling --students RUNS/sst2__retrikt__minilm-l6__seed1 ... --name NAME

For each saved student (``retrikt.train --method retrikt --save-student``): its validation score alone (β = 1),
under the setting its k-shot CV chose (what the run reported), and under the best setting of the CV's grid (its key
spaces, k, β, τ; neighbours voting with the teacher's or the conditioned labels) picked on the validation set itself. That last number is not a result: it is chosen on what
it is scored on, and so it bounds what any selection rule could make of retrieval for this student. When the
ceiling minus the student alone is small, no better rule for k, β and τ can give retrieval more than that.

This reads validation labels to *diagnose*; nothing here selects a setting that a reported result uses.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from retrikt.config import arg, parse_config
from retrikt.io import RetriktError, atomic_write_json, atomic_write_text, run_metadata
from retrikt.logs import setup_logging
from retrikt.student.retrieval import load_retrieval_student
from retrikt.student.selection import GRID_BETA, retrieval_votes
from retrikt.tasks import compute_metrics, get_task, load_split

from benchmarks.common import RESULTS


@dataclass
class CeilingBench:
    students: list[str] = arg([], help="saved retrieval-student folders (their run JSON lies beside each)")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    name: str = arg("retrieval_ceiling", help="results file stem")


def _run_record(folder: Path) -> dict:
    path = folder.with_suffix(".json")
    if not path.exists():
        raise RetriktError(f"{folder}: no run record {path.name} beside it (save students with retrikt.train "
                           "--save-student, which writes both)")
    return json.loads(path.read_text())


def _key_spaces(model) -> list[str]:
    """What the CV searches: the space the projection was trained towards (store or teacher keys; the query lives
    there) and the student's own embeddings of the store's texts."""
    return [model.trained_keys, "student"]


def score_grid(model, task, split: list[dict]) -> list[dict]:
    """Every (labels, keys, k, β, τ) of the CV's grid, both label kinds included, scored on ``split``: the votes come
    from the CV's own :func:`retrieval_votes`, so the ceiling mixes exactly what the CV mixes."""
    gold = [e["label"] for e in split]
    p, votes = retrieval_votes(model, split, ("teacher", "conditioned"), grid_keys=tuple(_key_spaces(model)))
    rows = [{"keys": "none", "labels": "none", "k": 0, "beta": 1.0, "tau": 0.0,  # the student alone: one row
             "main": compute_metrics(task, gold, p.argmax(1).tolist())["main"]}]
    for ((labels, k, tau, keys), ret), beta in itertools.product(votes.items(), GRID_BETA):
        if beta < 1.0:
            mix = beta * p + (1 - beta) * ret
            rows.append({"keys": keys, "labels": labels, "k": k, "beta": beta, "tau": tau,
                         "main": compute_metrics(task, gold, mix.argmax(1).tolist())["main"]})
    return rows


def ceiling(folder: Path, data_dir: str | None) -> dict:
    run = _run_record(folder)
    task = get_task(run["task"])
    model = load_retrieval_student(folder, task, base=run["student"])
    split = load_split(task, run.get("split", "validation"), data_dir=data_dir)[:run["n"]]
    rows = score_grid(model, task, split)
    alone = next(r for r in rows if r["beta"] >= 1.0)
    chosen = run["retrieval"]
    again = alone if chosen["beta"] >= 1.0 else next(
        (r for r in rows if all(r[key] == chosen[key] for key in ("keys", "labels", "k", "beta", "tau"))), None)
    if again is None or abs(again["main"] - run["main"]) > 1e-6:  # the reload must reproduce what the run reported
        raise RetriktError(f"{folder}: reloaded, its chosen setting scores "
                           f"{'nothing (not in the grid)' if again is None else again['main']}, the run reported "
                           f"{run['main']}: another store or split than the run's?")
    best = max(rows, key=lambda r: (r["main"], r["beta"]))  # ties to the most student
    best_mix = max((r for r in rows if r["beta"] < 1.0), key=lambda r: (r["main"], r["beta"]))
    by_beta = {str(b): max(r["main"] for r in rows if r["beta"] == b) for b in GRID_BETA}
    return {"task": task.name, "seed": run["seed"], "student_dir": str(folder), "n": len(split),
            "reported": run["main"], "chosen": run["retrieval"], "alone": alone["main"],
            "ceiling": best["main"], "ceiling_setting": best, "best_with_retrieval": best_mix,
            "ceiling_by_beta": by_beta, "store_entries": run.get("store_entries")}


def render(cfg: CeilingBench, rows: list[dict]) -> str:
    lines = ["# " + cfg.name.replace("_", " "), "",
             "Validation score of each saved retrieval student x100: alone (β = 1), as reported (the setting its "
             "k-shot CV chose), and the **ceiling**: the best setting of the CV's grid picked on validation itself "
             "(not a result; it bounds what any selection rule could get from retrieval at inference).", "",
             "| task | seed | entries | n | alone | reported | ceiling | ceiling − alone | ceiling setting |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["ceiling_setting"]
        setting = "β 1 (no retrieval)" if s["beta"] >= 1 else \
            f"{s['keys']} keys, {s['labels']} labels, k {s['k']}, β {s['beta']}, τ {s['tau']}"
        lines.append(f"| {r['task']} | {r['seed']} | {r['store_entries']} | {r['n']} | {100 * r['alone']:.1f} | "
                     f"{100 * r['reported']:.1f} | {100 * r['ceiling']:.1f} | "
                     f"{100 * (r['ceiling'] - r['alone']):+.1f} | {setting} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = parse_config(CeilingBench, argv, description=__doc__)
    if not cfg.students:
        raise SystemExit("--students: give at least one saved retrieval-student folder")
    rows = [ceiling(Path(f), cfg.data_dir) for f in cfg.students]
    atomic_write_json(RESULTS / f"{cfg.name}.json", {"rows": rows, "config": asdict(cfg), **run_metadata(cfg)})
    atomic_write_text(RESULTS / f"{cfg.name}.md", render(cfg, rows))
    print(render(cfg, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
