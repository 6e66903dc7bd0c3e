"""python -m retrikt.train: train and score students of one method on one task over several seeds.

    python -m retrikt.train --task rte --method finetune --student minilm-l6 --shots 32 --seeds 1 2 3
    python -m retrikt.train --task cb --method teacher --teacher qwen-0.5b
    python -m retrikt.train --task sst2 --method retrikt --init arithmetic --adapters A B --store S
    accelerate launch --multi_gpu --num_processes 4 -m retrikt.train --task mnli --method finetune --shots 0

Under accelerate launch (or torchrun) every rank trains data-parallel (see retrikt.student.trainer.fit); only rank 0
scores the students and writes results.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

from retrikt.config import parse_config
from retrikt.dist import configure_logging, process_state
from retrikt.eval import evaluate, markdown_table, save_result, summarise
from retrikt.eval.harness import evaluate_variants
from retrikt.io import RetriktError, run_metadata
from retrikt.methods import TrainConfig, check_combination, run_label, run_method
from retrikt.tasks import get_task, load_split, sample_few_shot

logger = logging.getLogger("retrikt.train")

SMOKE = {"student": "tiny-encoder", "teacher": "tiny-causal", "shots": 8, "epochs": 2, "eval_limit": 24,
         "seeds": [1], "out": "train/runs-smoke"}


def few_shot(cfg: TrainConfig, task, pool: list[dict], seed: int) -> list[dict]:
    if cfg.shots_per_label:
        return sample_few_shot(pool, k_per_label=cfg.shots_per_label, seed=seed)
    if cfg.shots:
        return sample_few_shot(pool, n=cfg.shots, seed=seed)
    return pool


def finished(cfg: TrainConfig, task, seed: int) -> dict | None:
    """The saved record of this seed, if a previous (possibly killed) run wrote it with exactly this config."""
    from retrikt.eval import load_results
    if not Path(cfg.out).is_dir():
        return None
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seeds"}
    for r in load_results(cfg.out):
        got = {k: v for k, v in (r.get("config") or {}).items() if k != "seeds"}
        got.setdefault("init", "none")  # recorded before --init existed: the student's own weights
        if r["task"] == task.name and r["method"] == run_label(cfg) and r["seed"] == seed and got == want:
            return r
    return None


def run_one(cfg: TrainConfig, task, pool: list[dict], seed: int) -> dict | None:
    """Train one student with one seed and score it; returns the results record (also saved to cfg.out).

    In a launched process group every rank trains; only the main process scores and saves (the others get None)."""
    train = few_shot(cfg, task, pool, seed)
    t0 = time.perf_counter()
    student, extra = run_method(cfg, task, train, seed)
    train_seconds = time.perf_counter() - t0
    if not process_state().is_main_process:
        return None
    split = load_split(task, cfg.eval_split, data_dir=cfg.data_dir)[:cfg.eval_limit or None]
    res = evaluate(student, task, cfg.eval_split, examples=split)
    if hasattr(student, "variant_settings") and student.variant_settings():
        res["variants"] = evaluate_variants(student, task, split)
    # a combination is its own row, method+init; "init" records which initialiser (its facts are under its name)
    init = {"init": cfg.init} if cfg.init != "none" else {}
    record = {"method": run_label(cfg), **init, "tag": extra.pop("tag", ""),
              "student": extra.pop("student", cfg.student), "seed": seed,
              "train_examples": len(train), "train_seconds": train_seconds, **extra, **res,
              **run_metadata(cfg, seeds=cfg.seeds)}
    path = save_result(cfg.out, record)
    if cfg.save_student:
        if not hasattr(student, "save"):
            raise RetriktError(f"--save-student: a {type(student).__name__} student ({cfg.method}) cannot be saved; "
                               f"its results are in {path}")
        base = record["student"]  # the teacher methods' "student" is the teacher model
        student.save(path.with_suffix(""), meta={"base": base, "method": run_label(cfg), "seed": seed})
    return record


def main(argv: list[str] | None = None) -> int:
    rank = configure_logging()
    try:
        cfg = parse_config(TrainConfig, argv, description=__doc__, smoke=SMOKE)
        task = get_task(cfg.task)
        if task.skip_reason:
            raise RetriktError(f"task {task.name} is not supported: {task.skip_reason}")
        check_combination(cfg)  # fail on an unknown method or an impossible --init before loading any data
        pool = load_split(task, "train", data_dir=cfg.data_dir)
        records = []
        for seed in cfg.seeds:
            r = finished(cfg, task, seed)
            if r is not None:
                print(f"{task.name} {run_label(cfg)} seed {seed}: already done with this config in {cfg.out}")
            else:
                r = run_one(cfg, task, pool, seed)
            if r is None:
                continue
            print(f"{task.name} {run_label(cfg)} seed {seed}: {r['main'] * 100:.1f} "
                  f"({', '.join(f'{k} {v:.3f}' for k, v in r['metrics'].items())}), "
                  f"{r['examples_per_s']:.1f} ex/s, {r['num_parameters'] / 1e6:.1f}M params")
            records.append(r)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank:
        return 0
    print()
    print(markdown_table(summarise(records), [task.name]))
    print(f"\nresults in {Path(cfg.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
