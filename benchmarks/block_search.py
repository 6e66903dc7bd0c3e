"""Best-block search for parametric transfer: vectorised summed-area table vs the reference per-corner loop.

The default case is Qwen2.5 1.5B -> 0.5B ``down_proj``: a 1536 x 8960 sensitivity matrix, block 896 x 4864,
(1536-896+1) * (8960-4864+1) = 2,626,177 candidate corners. The Python loop (as in the authors' extraction
script) would take minutes per matrix, so by default it is timed on the first ``loop_rows`` rows of corners
(the loop run on ``S[:h + loop_rows - 1]``, which visits exactly those corners) and extrapolated per corner;
``--full-loop`` runs it in full. Identical output is checked on that subset and on a case the loop finishes.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.block_search [--smoke] [--full-loop]
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from retrikt.config import arg, parse_config
from retrikt.init.sensitivity import best_block, best_block_loop
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BlockSearchBench:
    rows: int = arg(1536, help="teacher matrix rows (Qwen2.5 1.5B hidden size)")
    cols: int = arg(8960, help="teacher matrix columns (Qwen2.5 1.5B MLP size)")
    block_rows: int = arg(896, help="student block rows (Qwen2.5 0.5B hidden size)")
    block_cols: int = arg(4864, help="student block columns (Qwen2.5 0.5B MLP size)")
    loop_rows: int = arg(12, help="rows of corners the loop is timed on (extrapolated per corner)")
    full_loop: bool = arg(False, help="run the loop over every corner instead of extrapolating (minutes)")
    check_shape: list[int] = arg([160, 240, 100, 170], help="rows cols block_rows block_cols of the case both "
                                 "methods run in full for the identical-output check")
    repeats: int = arg(5, help="timed runs of the vectorised search (median reported)")
    seed: int = arg(0, help="seed of the random sensitivity matrices")
    name: str = arg("block_search", help="results file stem under benchmarks/results/")


SMOKE = {"rows": 300, "cols": 500, "block_rows": 200, "block_cols": 300, "loop_rows": 3, "repeats": 2,
         "check_shape": [40, 60, 25, 30], "name": "block_search_smoke"}


def _time(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run(cfg: BlockSearchBench) -> dict:
    g = torch.Generator().manual_seed(cfg.seed)
    S = torch.rand(cfg.rows, cfg.cols, generator=g)
    block = (cfg.block_rows, cfg.block_cols)
    corners = (cfg.rows - cfg.block_rows + 1) * (cfg.cols - cfg.block_cols + 1)
    best_block(S, block)   # warm-up: first-call allocator and kernel setup are not the steady state
    vec_times = []
    for _ in range(cfg.repeats):
        t, where = _time(best_block, S, block)
        vec_times.append(t)
    vec = statistics.median(vec_times)
    logging.info("vectorised: %.4f s (median of %d), corner %s", vec, cfg.repeats, where)

    if cfg.full_loop:
        loop_rows, sub = cfg.rows - cfg.block_rows + 1, S
    else:
        loop_rows = min(cfg.loop_rows, cfg.rows - cfg.block_rows + 1)
        sub = S[:cfg.block_rows + loop_rows - 1]
    timed = loop_rows * (cfg.cols - cfg.block_cols + 1)
    logging.info("loop over %d of %d corners ...", timed, corners)
    t_loop, loop_where = _time(best_block_loop, sub, block)
    per_corner = t_loop / timed
    loop_total = per_corner * corners
    sub_same = best_block(sub, block) == loop_where

    r, c, h, w = cfg.check_shape
    C = torch.rand(r, c, generator=g)
    check = {"shape": [r, c], "block": [h, w], "vectorised": list(best_block(C, (h, w))),
             "loop": list(best_block_loop(C, (h, w)))}
    check["identical"] = check["vectorised"] == check["loop"]
    return {
        "matrix": [cfg.rows, cfg.cols], "block": list(block), "corners": corners,
        "vectorised_s": vec, "vectorised_runs_s": vec_times, "vectorised_corner": list(where),
        "loop": {"corners_timed": timed, "rows_of_corners_timed": loop_rows, "timed_s": t_loop,
                 "per_corner_s": per_corner, "total_s": loop_total, "extrapolated": not cfg.full_loop,
                 "method": "full run" if cfg.full_loop else
                 f"loop run on S[:{cfg.block_rows + loop_rows - 1}] (the first {loop_rows} rows of corners), "
                 "seconds per corner x all corners"},
        "speedup": loop_total / vec,
        "identical_on_timed_subset": sub_same, "identical_check": check,
        "torch_threads": torch.get_num_threads(),
    }


def markdown(res: dict) -> str:
    loop = res["loop"]
    est = " (extrapolated)" if loop["extrapolated"] else ""
    return "\n".join([
        "# Best-block search: vectorised summed-area table vs per-corner loop", "",
        f"Matrix {res['matrix'][0]}x{res['matrix'][1]}, block {res['block'][0]}x{res['block'][1]}, "
        f"{res['corners']:,} corners; torch threads: {res['torch_threads']}.", "",
        "| method | seconds | corners timed | speed-up |", "|---|---:|---:|---:|",
        f"| loop (reference){est} | {loop['total_s']:.1f} | {loop['corners_timed']:,} | 1x |",
        f"| vectorised (`best_block`) | {res['vectorised_s']:.4f} | {res['corners']:,} | "
        f"{res['speedup']:,.0f}x |", "",
        f"Loop: {loop['method']}; {loop['per_corner_s'] * 1e6:.1f} µs per corner.", "",
        f"Same corner as the loop on the timed subset: {res['identical_on_timed_subset']}; "
        f"on a {res['identical_check']['shape']} -> {res['identical_check']['block']} case run in full: "
        f"{res['identical_check']['identical']}.", ""])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(BlockSearchBench, argv, description=__doc__.splitlines()[0], smoke=SMOKE)
    res = run(cfg)
    res["meta"] = run_metadata(cfg, seeds=[cfg.seed])
    atomic_write_json(RESULTS / f"{cfg.name}.json", res)
    atomic_write_text(RESULTS / f"{cfg.name}.md", markdown(res))
    print(markdown(res))
    if not (res["identical_on_timed_subset"] and res["identical_check"]["identical"]):
        raise SystemExit("vectorised and loop block search disagree")


if __name__ == "__main__":
    main()
