"""Inference speed: the retrieval student (store search included) vs the teacher LLM, on the same examples.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.student_speed --task cb --teacher qwen-0.5b
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.student_speed --smoke

The student is scored through the same harness call as in training runs; its store is a real FAISS store (the one
given by --store, or a synthetic one of --store-size entries so search cost is realistic). Writes
benchmarks/results/student_speed.{json,md}.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np

from retrikt import models
from retrikt.config import arg, parse_config
from retrikt.eval import evaluate
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.store import Store, StoreWriter
from retrikt.student.encoder import EncoderClassifier
from retrikt.teacher.lm import LMClassifier
from retrikt.student.retrieval import RetrievalSettings, RetrievalStudent
from retrikt.tasks import get_task, load_split
from retrikt.logs import setup_logging

from benchmarks.common import RESULTS, peak_rss_gib


@dataclass
class SpeedBench:
    task: str = arg("cb", help="task whose validation examples are classified")
    teacher: str = arg("qwen-0.5b", help="teacher LLM (verbaliser scoring, zero-shot)")
    student: str = arg("minilm-l6", help="encoder student")
    store: str | None = arg(None, help="store folder; default: a synthetic store of --store-size entries")
    store_size: int = arg(10_000, help="entries of the synthetic store")
    limit: int = arg(48, help="validation examples classified by each side")
    k: int = arg(8, help="neighbours retrieved per input")
    name: str = arg("student_speed", help="results file stem")


SMOKE = {"teacher": "tiny-causal", "student": "tiny-encoder", "store_size": 500, "limit": 16,
         "name": "student_speed_smoke"}


def synthetic_store(folder, task, n: int, dim: int, name: str) -> Store:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    soft = rng.dirichlet(np.ones(task.num_labels), size=n)
    entries = [{"fields": {f: f"synthetic {i}" for f in task.text_fields}, "label": int(soft[i].argmax()),
                "soft_label": soft[i].tolist(), "meta": {}} for i in range(n)]
    with StoreWriter(folder, {"task": task.name, "teacher": "synthetic",
                              "embedder": {"name": name, "dim": dim, "normalize": True}}) as w:
        w.add_batch(0, entries, emb)
        return Store.open(w.finalize())


def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(SpeedBench, argv, description=__doc__, smoke=SMOKE)
    task = get_task(cfg.task)
    examples = load_split(task, "validation")[:cfg.limit]
    encoder, tok = models.load_encoder(cfg.student)
    base = EncoderClassifier(encoder, tok, task)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(cfg.store) if cfg.store else synthetic_store(tmp, task, cfg.store_size,
                                                                        encoder.config.hidden_size, cfg.student)
        student = RetrievalStudent(base, store, RetrievalSettings(k=cfg.k, beta=0.5))
        student.predict_proba(examples[:4])  # warm-up: first-call allocations are not throughput
        s = evaluate(student, task, examples=examples)
        n_store = len(store)
    model, ttok = models.load_causal_lm(cfg.teacher)
    teacher = LMClassifier(model, ttok, task)
    teacher.predict_proba(examples[:2])
    t = evaluate(teacher, task, examples=examples)
    ratio = s["examples_per_s"] / t["examples_per_s"]
    row = {"task": task.name, "n": len(examples), "store_entries": n_store,
           "student": cfg.student, "student_params": s["num_parameters"], "student_ex_s": s["examples_per_s"],
           "teacher": cfg.teacher, "teacher_params": t["num_parameters"], "teacher_ex_s": t["examples_per_s"],
           "speedup": ratio, "param_ratio_pct": 100 * s["num_parameters"] / t["num_parameters"]}
    print(f"student {row['student_ex_s']:.1f} ex/s vs teacher {row['teacher_ex_s']:.2f} ex/s: {ratio:.0f}x", flush=True)
    out = run_metadata(cfg) | {"row": row, "peak_rss_gib": peak_rss_gib()}
    atomic_write_json(RESULTS / f"{cfg.name}.json", out)
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join([
        f"# Inference speed on {task.name} validation ({len(examples)} examples, CPU)", "",
        "| model | params | examples/s |", "|---|---:|---:|",
        f"| retrieval student {cfg.student} + store ({n_store} entries, k={cfg.k}) | "
        f"{row['student_params'] / 1e6:.1f}M | {row['student_ex_s']:.1f} |",
        f"| teacher {cfg.teacher} (verbaliser scoring) | {row['teacher_params'] / 1e6:.1f}M | "
        f"{row['teacher_ex_s']:.2f} |", "",
        f"Student / teacher speed: **{ratio:.0f}x**; student size {row['param_ratio_pct']:.1f}% of the teacher.",
        f"Commit `{out['git_commit']}`. Regenerate: `python -m benchmarks.student_speed --task {task.name} "
        f"--teacher {cfg.teacher}`"]) + "\n")


if __name__ == "__main__":
    main()
