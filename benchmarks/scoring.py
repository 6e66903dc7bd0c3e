"""LM scoring throughput (the teacher row, store labelling), related to the machine's own matmul throughput.

    python -m benchmarks.scoring                          # qwen-0.5b and qwen-1.5b, SST-2 and CB inputs, 1 and 2 threads
    OMP_NUM_THREADS=1 python -m benchmarks.scoring --smoke

For each thread count the same run first measures fp32 matmul GFLOP/s (the best of a square and a model-shaped
product), then scores real validation examples with :class:`retrikt.teacher.lm.LMClassifier` at each batch size.
Utilisation = model FLOPs / s over that matmul rate, with model FLOPs = 2 x (parameters outside the embedding table and
the LM head) x real tokens + 2 x head parameters x examples: the embedding is a lookup and the head runs on one
position per example, so counting them per token would inflate the figure. In-context rows score with 4
demonstrations: their KV cache computed once (what ``predict_proba`` does) vs written into every example (the old
cost). Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from retrikt import models
from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.tasks import get_task, load_split
from retrikt.teacher.labeller import pick_demos
from retrikt.teacher.lm import LMClassifier

from benchmarks.common import RESULTS, peak_rss_gib


@dataclass
class ScoringBench:
    models: list[str] = arg(["qwen-0.5b", "qwen-1.5b"], help="causal LMs to score with")
    tasks: list[str] = arg(["sst2", "cb"], help="tasks whose validation inputs are scored (short / long inputs)")
    n: int = arg(16, help="validation examples scored per measurement")
    batch_sizes: list[int] = arg([1, 4, 16], help="batch sizes")
    threads: list[int] = arg([1, 2], help="torch thread counts")
    demos: int = arg(4, help="in-context demonstrations for the ICL rows")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    name: str = arg("scoring", help="results file stem")


SMOKE = {"models": ["tiny-causal"], "n": 8, "batch_sizes": [1, 8], "threads": [1], "name": "scoring_smoke"}


def matmul_gflops(hidden: int = 896, inner: int = 4864, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a 1024^3 product and a (256 x hidden) @ (hidden x inner) one, at the current threads."""
    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (256, hidden, inner)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def flop_params(model) -> tuple[int, int]:
    """(parameters every token passes through, LM-head parameters)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - emb.numel() - (head.numel() if head is not emb else 0)
    return body, head.numel()


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def measure(clf: LMClassifier, examples: list[dict], bs: int, inline: bool = False) -> tuple[float, int]:
    """(seconds, real tokens) to score ``examples`` at batch ``bs``; ``inline``: demonstrations re-encoded per row."""
    prompts, conts = clf._encode(examples)
    tokens = sum(len(p) for p in prompts) + (len(clf._prefix_ids) * len(examples) if inline else 0)
    if not inline:
        return _time(lambda: clf._raw_proba(examples, bs)), tokens
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    run = lambda: [clf._scores([prompts[i] for i in order[s:s + bs]], [conts[i] for i in order[s:s + bs]])  # noqa
                   for s in range(0, len(order), bs)]
    return _time(run), tokens


def bench_model(cfg: ScoringBench, name: str, gflops: float, threads: int) -> list[dict]:
    model, tok = models.load_causal_lm(name)
    body, head = flop_params(model)
    rows = []
    for task_name in cfg.tasks:
        task = get_task(task_name)
        examples = load_split(task, "validation", data_dir=cfg.data_dir)[:cfg.n]
        demos = pick_demos(load_split(task, "train", data_dir=cfg.data_dir)[:64], cfg.demos, 1)
        variants = [("zero-shot", LMClassifier(model, tok, task), False),
                    ("icl, demos cached", LMClassifier(model, tok, task, demos=demos), False)]
        for mode, clf, inline in variants:
            measure(clf, examples[:2], 2, inline)  # warm-up
            for bs in cfg.batch_sizes:
                secs, tokens = measure(clf, examples, bs, inline)
                flops = 2 * body * tokens + 2 * head * len(examples) + (0 if inline else 2 * body * len(
                    clf._prefix_ids))
                rows.append({"model": name, "task": task_name, "mode": mode, "threads": threads, "batch_size": bs,
                             "examples_per_s": len(examples) / secs, "tokens_per_s": tokens / secs,
                             "gflops": flops / secs / 1e9, "utilisation": flops / secs / 1e9 / gflops})
                print(f"{name} {task_name} {mode} t{threads} b{bs}: {rows[-1]['examples_per_s']:.2f} ex/s, "
                      f"{rows[-1]['utilisation']:.0%} of {gflops:.0f} GFLOP/s", flush=True)
        best = max((r for r in rows if r["task"] == task_name and r["mode"] == "icl, demos cached"),
                   key=lambda r: r["examples_per_s"])
        secs, tokens = measure(variants[1][1], examples, best["batch_size"], inline=True)
        rows.append({**best, "mode": "icl, demos inline (old)", "examples_per_s": len(examples) / secs,
                     "tokens_per_s": tokens / secs, "gflops": 2 * body * tokens / secs / 1e9,
                     "utilisation": 2 * body * tokens / secs / 1e9 / gflops})
    del model
    return rows


def write(cfg: ScoringBench, rows: list[dict], machine: dict) -> None:
    out = run_metadata(cfg) | {"rows": rows, "matmul_gflops": machine, "peak_rss_gib": peak_rss_gib()}
    atomic_write_json(RESULTS / f"{cfg.name}.json", out)
    lines = [f"# LM scoring throughput ({cfg.n} validation examples per cell)", "",
             "fp32 matmul, same run: " + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in machine.items()), "",
             "| model | task | mode | threads | batch | ex/s | tok/s | GFLOP/s | of matmul |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['task']} | {r['mode']} | {r['threads']} | {r['batch_size']} | "
              f"{r['examples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | {r['utilisation']:.0%} |"
              for r in rows]
    lines += ["", "ICL cost vs zero-shot at each one's best batch (time per example):", ""]
    for (m, t, th) in sorted({(r["model"], r["task"], r["threads"]) for r in rows}):
        best = {mode: max((r["examples_per_s"] for r in rows if (r["model"], r["task"], r["threads"], r["mode"]) ==
                           (m, t, th, mode)), default=None) for mode in ("zero-shot", "icl, demos cached",
                                                                        "icl, demos inline (old)")}
        if all(best.values()):
            lines.append(f"- {m} {t} {th} thread(s): cached {best['zero-shot'] / best['icl, demos cached']:.2f}x, "
                         f"inline {best['zero-shot'] / best['icl, demos inline (old)']:.2f}x")
    lines += ["", f"Commit `{out['git_commit']}`. Regenerate: `python -m benchmarks.scoring "
              f"--models {' '.join(cfg.models)} --n {cfg.n} --batch-sizes {' '.join(map(str, cfg.batch_sizes))} "
              f"--threads {' '.join(map(str, cfg.threads))}` (nothing else running)"]
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(lines) + "\n")


def main(argv=None) -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = parse_config(ScoringBench, argv, description=__doc__, smoke=SMOKE)
    rows, machine = [], {}
    for name in cfg.models:
        for threads in cfg.threads:
            torch.set_num_threads(threads)
            machine[threads] = max(machine.get(threads, 0.0), matmul_gflops())
            rows += bench_model(cfg, name, machine[threads], threads)
            write(cfg, rows, machine)


if __name__ == "__main__":
    main()
