"""python -m retrikt.eval: score a saved student through the shared harness.

    python -m retrikt.eval --task cb --student-dir train/runs/cb__retrikt__minilm-l6__seed1 --base minilm-l6
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retrikt.eval import evaluate
from retrikt.io import RetriktError, atomic_write_json, run_metadata
from retrikt.tasks import get_task
from retrikt.logs import setup_logging


def load_saved(folder: Path, task, base: str | None, store: str | None):
    if not (folder / "student.json").exists():
        raise RetriktError(f"{folder}: no student.json (save one with python -m retrikt.train --save-student)")
    info = json.loads((folder / "student.json").read_text())
    base = base or info.get("base")
    if info.get("kind") == "lm":
        from retrikt.teacher.lm import load_lm_student
        return load_lm_student(folder, task, base=base)
    if (folder / "retrieval.json").exists():
        from retrikt.student.retrieval import load_retrieval_student
        return load_retrieval_student(folder, task, base=base, store_path=store)
    from retrikt.student.encoder import load_student
    return load_student(folder, task, base=base)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--student-dir", required=True, help="folder written by retrikt.train --save-student")
    p.add_argument("--base", help="base model of a PEFT student (default: recorded in student.json)")
    p.add_argument("--store", help="store folder for a retrieval student (default: the recorded one)")
    p.add_argument("--split", default="validation", help="split to score")
    p.add_argument("--data-dir", help="folder with glue/ and superglue/ data")
    p.add_argument("--out", help="write the results JSON here")
    a = p.parse_args(argv)
    try:
        task = get_task(a.task)
        student = load_saved(Path(a.student_dir), task, a.base, a.store)
        res = evaluate(student, task, a.split, data_dir=a.data_dir)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{task.name}/{a.split}: " + ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
          + f"; {res['examples_per_s']:.1f} ex/s; {res['num_parameters'] / 1e6:.1f}M params")
    if a.out:
        atomic_write_json(a.out, res | run_metadata(vars(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
