"""Portability of PEFT modules (Sabry & Belz, EACL 2024 Findings) on SST-2: the grid
PEFT type × direction (M_o→M_r, M_r→M_o) × condition (ported / scratch / sampled) × seed.

M_o is all-MiniLM-L6-v2, M_r the same model after continued masked-LM training on SST-2's training sentences
(labels dropped; :mod:`retrikt.init.hosts`, cached). For each PEFT type a module (+ head) is trained k-shot on each
host; each is then ported to the other host under the three conditions and scored zero-shot and after
``finetune_epochs`` more epochs of k-shot fine-tuning there (k-shot set and order drawn per seed).
The baseline measured in the same run is the source module on its own host: ``ported / source`` says how much of
a module's accuracy survives the move, ``ported / scratch`` (after fine-tuning) whether the ported start helps.
The ported module is the same for every seed, so its zero-shot score is computed once per (type, direction).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.portability [--smoke]
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.port import PortRunConfig, score_student, eval_examples, host_path, port_summary, run_cell, train_source
from retrikt.logs import setup_logging

RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("benchmarks.portability")
CONDITIONS = ("ported", "scratch", "sampled")


@dataclass
class PortabilityBench:
    types: list[str] = arg(["lora", "ia3", "prefix", "prompt"], help="PEFT types (lora | ia3 | prefix | prompt)")
    host_o: str = arg("minilm-l6", help="M_o: the original host")
    host_r: str = arg("minilm-l6+mlm-sst2", help="M_r: the second same-shape host (BASE+mlm-TASK is built, cached)")
    task: str = arg("sst2", help="task")
    seeds: list[int] = arg([1, 2, 3], help="seeds of the scratch init / sampled draw / fine-tuning set and order")
    shots: int = arg(64, help="k-shot training examples (stratified), for the source modules and the fine-tuning")
    source_epochs: int = arg(10, help="epochs of training each source module on its own host")
    finetune_epochs: int = arg(2, help="epochs of further fine-tuning after porting")
    eval_limit: int = arg(300, help="validation examples scored (first N of SST-2 dev's 872; 0 = all)")
    max_length: int = arg(64, help="encoder max tokens per input")
    host_steps: int = arg(300, help="MLM steps of M_r when it is built")
    source_seed: int = arg(0, help="seed of the source modules' init, k-shot set and order")
    data_dir: str | None = arg(None, help="folder with glue/ files (default: ../shared/data)")
    device: str = arg("auto", help="auto | cpu | cuda")
    name: str = arg("portability", help="results file stem under benchmarks/results/")


SMOKE = {"host_o": "tiny-encoder", "host_r": "tiny-encoder+mlm-sst2", "seeds": [1, 2], "shots": 8,
         "source_epochs": 1, "finetune_epochs": 1, "eval_limit": 16, "host_steps": 4, "name": "portability_smoke"}


def _run_config(cfg: PortabilityBench, peft_type: str, src: str, dst: str) -> PortRunConfig:
    return PortRunConfig(from_host=src, to_host=dst, peft_type=peft_type, task=cfg.task, seeds=cfg.seeds,
                         shots=cfg.shots, source_epochs=cfg.source_epochs, finetune_epochs=cfg.finetune_epochs,
                         source_seed=cfg.source_seed, max_length=cfg.max_length, eval_limit=cfg.eval_limit,
                         host_steps=cfg.host_steps, data_dir=cfg.data_dir, device=cfg.device)


def _direction(cfg: PortabilityBench, run: PortRunConfig, task, module: Path, evals, train) -> dict:
    """Every condition × seed of one module moved to the other host."""
    from retrikt.init.portability import port_student
    source = port_student(module, host_path(run.from_host, run), task, "ported", 0, run.max_length)
    out = {"peft_type": run.peft_type, "from": run.from_host, "to": run.to_host,
           "source": score_student(source, task, evals), "rows": []}
    to_host = host_path(run.to_host, run)
    for condition in CONDITIONS:
        reuse = None
        for seed in cfg.seeds:
            row = run_cell(run, task, str(module), to_host, condition, seed, evals, train, reuse)
            reuse = {k: v for k, v in row["zero_shot"].items() if k != "reused"} if condition == "ported" else None
            out["rows"].append(row)
            logger.info("%s %s->%s %s s%d: zero-shot %.3f fine-tuned %.3f", run.peft_type, run.from_host, run.to_host,
                        condition, seed, row["zero_shot"]["main"], row.get("finetuned", {}).get("main", 0))
    out["summary"] = port_summary(out["rows"])
    return out


def run(cfg: PortabilityBench) -> dict:
    from retrikt.tasks import get_task, load_split
    task = get_task(cfg.task)
    t0, cpu0 = time.monotonic(), time.process_time()
    host_r = host_path(cfg.host_r, _run_config(cfg, "lora", cfg.host_o, cfg.host_r))
    timings = {"host_r_seconds": time.monotonic() - t0}
    train = load_split(task, "train", data_dir=cfg.data_dir)
    evals = eval_examples(task, _run_config(cfg, "lora", cfg.host_o, cfg.host_r))
    directions, source_s = [], 0.0
    with tempfile.TemporaryDirectory(prefix="retrikt-portability-") as work:
        for peft_type in cfg.types:
            modules = {}
            for host in (cfg.host_o, cfg.host_r):
                t = time.monotonic()
                run_cfg = _run_config(cfg, peft_type, host, host)
                modules[host] = train_source(run_cfg, task, train, Path(work) / f"{peft_type}-{len(modules)}")
                source_s += time.monotonic() - t
            for src, dst in ((cfg.host_o, cfg.host_r), (cfg.host_r, cfg.host_o)):
                directions.append(_direction(cfg, _run_config(cfg, peft_type, src, dst), task, modules[src],
                                             evals, train))
    timings.update(source_training_seconds=source_s, total_seconds=time.monotonic() - t0,
                   total_cpu_seconds=time.process_time() - cpu0,
                   cells=sum(len(d["rows"]) for d in directions))
    return {"task": task.name, "host_o": cfg.host_o, "host_r": cfg.host_r, "host_r_path": host_r,
            "eval_examples": len(evals), "eval_note": _eval_note(cfg, len(evals)), "directions": directions,
            "timings": timings}


def _eval_note(cfg: PortabilityBench, n: int) -> str:
    return (f"validation limited to the first {n} of SST-2 dev's 872 examples for time"
            if cfg.eval_limit else f"full validation split ({n} examples)")


def _pm(summary: dict, cond: str, phase: str) -> str:
    s = summary.get(cond, {}).get(phase)
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def markdown(result: dict, cfg: PortabilityBench) -> str:
    o, r = cfg.host_o, cfg.host_r
    names = {o: "M_o", r: "M_r"}
    lines = [f"# Portability of PEFT modules on {result['task']} (accuracy %, mean ± std over seeds "
             f"{', '.join(map(str, cfg.seeds))})", "",
             f"M_o = `{o}`, M_r = `{r}`. {cfg.shots}-shot training; source modules {cfg.source_epochs} epochs on "
             f"their own host, {cfg.finetune_epochs} epoch(s) of further fine-tuning after porting. "
             f"{result['eval_note'][0].upper() + result['eval_note'][1:]}.", "",
             "| type | direction | source on own host | ported 0-shot | scratch 0-shot | sampled 0-shot | "
             "ported FT | scratch FT | sampled FT | ported/source 0-shot | ported/scratch FT |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in result["directions"]:
        s = d["summary"]
        mean = {(c, p): s.get(c, {}).get(p, {}).get("mean") for c in CONDITIONS for p in ("zero_shot", "finetuned")}
        lines.append(f"| {d['peft_type']} | {names[d['from']]}→{names[d['to']]} | {100 * d['source']['main']:.1f} | "
                     + " | ".join(_pm(s, c, "zero_shot") for c in CONDITIONS) + " | "
                     + " | ".join(_pm(s, c, "finetuned") for c in CONDITIONS) + " | "
                     f"{_ratio(mean['ported', 'zero_shot'], d['source']['main'])} | "
                     f"{_ratio(mean['ported', 'finetuned'], mean['scratch', 'finetuned'])} |")
    t = result["timings"]
    lines += ["", f"Wall time {t['total_seconds'] / 60:.1f} min ({t['total_cpu_seconds'] / 60:.1f} CPU-min) for "
              f"{t['cells']} cells (M_r build {t['host_r_seconds']:.0f} s, source modules "
              f"{t['source_training_seconds']:.0f} s), torch threads: 1.",
              "Scratch = PEFT's default init (LoRA B = 0, (IA)^3 = 1: the host itself) with a fresh head, so its "
              "zero-shot score is chance level by construction; the head travels with the module in 'ported' and "
              "is sampled per tensor in 'sampled'."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = parse_config(PortabilityBench, argv, description=__doc__.splitlines()[0], smoke=SMOKE)
    result = run(cfg)
    result.update(run_metadata(cfg, seeds=cfg.seeds))
    atomic_write_json(RESULTS / f"{cfg.name}.json", result)
    text = markdown(result, cfg)
    atomic_write_text(RESULTS / f"{cfg.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
