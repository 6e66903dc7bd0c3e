"""Port a PEFT module from one host to another and score it: zero-shot, and after further fine-tuning.

    python -m retrikt.port --from-host minilm-l6 --to-host minilm-l6+mlm-sst2 --adapter modules/lora-sst2 \\
        --condition ported scratch sampled --task sst2 --seeds 1 2 3 --finetune-epochs 2 --out train/port
    python -m retrikt.port --smoke

With ``--peft-type lora|ia3|prefix|prompt`` and an ``--adapter`` folder that holds no module yet, a module of that
type is first trained on ``--from-host`` (k-shot, ``--source-epochs``) and saved there. ``BASE+mlm-TASK`` hosts
(``minilm-l6+mlm-sst2``) are built and cached by :mod:`retrikt.init.hosts` (``--host-steps`` MLM steps).
Writes ``<out>/port_results.json``: one row per condition and seed, a mean ± std summary and the run metadata.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.io import RetriktError, atomic_write_json, atomic_write_text, run_metadata
from retrikt.logs import setup_logging

logger = logging.getLogger(__name__)

# Adapter learning rates: LoRA as the repo's lora method (Hu et al. use 1e-4..5e-4), (IA)^3 3e-3 (Liu et al. 2022),
# prefix tuning 5e-3 (Li & Liang use 5e-5..8e-3) and prompt tuning 3e-2 (Lester et al. use 0.3 with Adafactor;
# AdamW needs less).
DEFAULT_LR = {"LORA": 5e-4, "IA3": 3e-3, "PREFIX_TUNING": 5e-3, "PROMPT_TUNING": 3e-2}


@dataclass
class PortRunConfig:
    from_host: str = arg("minilm-l6", help="host M_o the module was trained on (and where --peft-type trains one)")
    to_host: str = arg("minilm-l6+mlm-sst2", help="host M_r to port to: short name, folder, or BASE+mlm-TASK")
    adapter: str = arg("", help="module folder (PEFT adapter + head.safetensors); with --peft-type, trained into "
                               "this folder first when it holds no module")
    condition: list[str] = arg(["ported", "scratch", "sampled"], choices=["ported", "scratch", "sampled"],
                               help="initialisations of the module on M_r (the paper's three)")
    task: str = arg("sst2", help="task to score (and fine-tune) on")
    seeds: list[int] = arg([1, 2, 3], help="seeds: scratch init / sampled draw / fine-tuning k-shot set and order")
    finetune_epochs: int = arg(0, help="epochs of further fine-tuning on M_r after porting (0 = zero-shot only)")
    shots: int = arg(64, help="k-shot training examples (stratified) for fine-tuning and for a --peft-type module")
    peft_type: str = arg("", help="lora | ia3 | prefix | prompt: train such a module on --from-host if needed")
    source_epochs: int = arg(10, help="epochs of training the --peft-type module on --from-host (80 steps at 64 "
                                      "shots: LoRA 69%, (IA)^3 68%, prefix / prompt 62% on 200 SST-2 dev sentences)")
    source_seed: int = arg(0, help="seed of the source module's init, k-shot set and batch order")
    lr: float | None = arg(None, help="adapter learning rate (default per type: LoRA 5e-4, (IA)^3 3e-3, prefix 5e-3, "
                                      "prompt 3e-2)")
    head_lr: float = arg(1e-2, help="learning rate of the classification head (1e-3 left a fresh head near chance "
                                    "after 40 steps on MiniLM's small-norm pooled features)")
    batch_size: int = arg(8, help="examples per step")
    max_length: int = arg(64, help="encoder max tokens per input (SST-2 sentences are short)")
    align: str = arg("none", choices=["none", "blocks"], help="none: same-shape hosts; blocks: LoRA onto a smaller "
                                                              "host by layer + block selection")
    eval_limit: int = arg(0, help="score only the first N validation examples (0 = all)")
    host_steps: int = arg(300, help="MLM steps of a BASE+mlm-TASK host built on first use")
    host_sentences: int = arg(20000, help="task sentences an MLM host is trained on")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ files (default: ../shared/data)")
    device: str = arg("auto", help="auto | cpu | cuda")
    out: str = arg("train/port", help="output folder for port_results.json")


SMOKE = {"from_host": "tiny-encoder", "to_host": "tiny-encoder+mlm-sst2", "peft_type": "lora", "seeds": [1],
         "shots": 8, "source_epochs": 1, "finetune_epochs": 1, "eval_limit": 16, "host_steps": 4,
         "host_sentences": 64, "out": "train/port-smoke", "adapter": "train/port-smoke/source-lora"}


def host_path(name: str, cfg: PortRunConfig) -> str:
    from retrikt.init.hosts import resolve_host
    return resolve_host(name, steps=cfg.host_steps, max_sentences=cfg.host_sentences, data_dir=cfg.data_dir)


def eval_examples(task, cfg: PortRunConfig) -> list[dict]:
    """The first ``eval_limit`` validation examples, sorted by length: less padding per batch, same metrics."""
    from retrikt.tasks import load_split
    examples = load_split(task, "validation", data_dir=cfg.data_dir)
    examples = examples[:cfg.eval_limit] if cfg.eval_limit else examples
    return sorted(examples, key=lambda e: sum(len(t or "") for t in task.text_pair(e)))


def port_fit_config(cfg: PortRunConfig, peft_type: str, epochs: int, causal: bool = False):
    from retrikt.student.trainer import FitConfig
    # causal hosts: gradients accumulated over micro-batches of 2, as retrikt.train does (bounded activations)
    return FitConfig(epochs=epochs, lr=cfg.lr or DEFAULT_LR.get(peft_type, 5e-4), head_lr=cfg.head_lr,
                     batch_size=cfg.batch_size, micro_batch_size=2 if causal else 0)


def score_student(student, task, examples: list[dict]) -> dict:
    from retrikt.eval import evaluate
    r = evaluate(student, task, "validation", examples=examples)
    return {"main": r["main"], "metrics": r["metrics"], "n": r["n"], "eval_seconds": r["eval_seconds"]}


def train_source(cfg: PortRunConfig, task, train: list[dict], folder: Path) -> Path:
    """Train a ``cfg.peft_type`` module (+ head) on ``cfg.from_host`` with k-shot data; save it into ``folder``."""
    from retrikt.init.portability import PEFT_TYPES, new_student, save_module
    from retrikt.teacher.lm import LMClassifier
    from retrikt.methods.base import resolve_device
    from retrikt.student.trainer import fit
    from retrikt.tasks import sample_few_shot
    if cfg.peft_type not in PEFT_TYPES:
        raise RetriktError(f"--peft-type {cfg.peft_type!r} unknown; use one of {', '.join(PEFT_TYPES)}")
    shots = sample_few_shot(train, n=cfg.shots, seed=cfg.source_seed, task=task)
    student = new_student(host_path(cfg.from_host, cfg), task, cfg.peft_type, cfg.source_seed, cfg.max_length,
                          device=resolve_device(cfg.device))
    causal = isinstance(student, LMClassifier)
    losses = fit(student, shots, port_fit_config(cfg, PEFT_TYPES[cfg.peft_type], cfg.source_epochs, causal),
                 cfg.source_seed, desc=f"source {cfg.peft_type}")
    return save_module(student, folder, init_seed=cfg.source_seed, task=task.name,
                       extra={"host": cfg.from_host, "shots": cfg.shots, "epochs": cfg.source_epochs,
                              "final_loss": losses[-1] if losses else None})


def run_cell(cfg: PortRunConfig, task, module: str, to_host: str, condition: str, seed: int,
             evals: list[dict], train: list[dict], zero_shot: dict | None = None) -> dict:
    """One (condition, seed): port, score zero-shot (unless ``zero_shot`` is given: the ported module does not
    depend on the seed), optionally fine-tune on M_r and score again."""
    from retrikt.init.portability import load_module, port_student
    from retrikt.methods.base import resolve_device
    from retrikt.student.trainer import fit
    from retrikt.tasks import sample_few_shot
    start = time.monotonic()
    student = port_student(module, to_host, task, condition, seed, cfg.max_length, cfg.align,
                           device=resolve_device(cfg.device))
    row = {"condition": condition, "seed": seed, "port": student.port_record,
           "zero_shot": dict(zero_shot, reused=True) if zero_shot else score_student(student, task, evals)}
    if cfg.finetune_epochs:
        shots = sample_few_shot(train, n=cfg.shots, seed=seed, task=task)
        mod = load_module(module)
        losses = fit(student, shots, port_fit_config(cfg, mod.peft_type, cfg.finetune_epochs, mod.causal), seed,
                     desc=f"{condition} s{seed}")
        row["finetuned"] = score_student(student, task, evals)
        row["finetune_loss_last"] = losses[-1] if losses else None
    row["seconds"] = time.monotonic() - start
    return row


def port_summary(rows: list[dict]) -> dict:
    """condition -> {zero_shot / finetuned: {mean, std, n}} of the main metric over seeds (std with ddof=0)."""
    out: dict = {}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for phase in ("zero_shot", "finetuned"):
            vals = [r[phase]["main"] for r in rows if r["condition"] == cond and r.get(phase)]
            if vals:
                out.setdefault(cond, {})[phase] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                                                   "n": len(vals)}
    return out


def run_port(cfg: PortRunConfig) -> dict:
    """The whole run: (train the source module,) score it on M_o, then every condition × seed on M_r."""
    from retrikt.init.portability import port_student
    from retrikt.methods.base import resolve_device
    from retrikt.tasks import get_task, load_split
    task = get_task(cfg.task)
    if not cfg.adapter:
        raise RetriktError("--adapter: set the module folder (or a folder to train a --peft-type module into)")
    module = Path(cfg.adapter)
    train = load_split(task, "train", data_dir=cfg.data_dir)
    if not (module / "adapter_config.json").exists() and not (module / "encoder" / "adapter_config.json").exists():
        if not cfg.peft_type:
            raise RetriktError(f"{module}: no module there; pass --peft-type to train one on {cfg.from_host}")
        train_source(cfg, task, train, module)
    evals = eval_examples(task, cfg)
    source = port_student(module, host_path(cfg.from_host, cfg), task, "ported", 0, cfg.max_length,
                          device=resolve_device(cfg.device))
    result = {"task": task.name, "from_host": cfg.from_host, "to_host": cfg.to_host, "module": str(module),
              "source_on_from_host": score_student(source, task, evals), "rows": []}
    to_host = host_path(cfg.to_host, cfg)
    for condition in cfg.condition:
        reuse = None   # the ported module is the same for every seed: score it once
        for seed in cfg.seeds:
            row = run_cell(cfg, task, str(module), to_host, condition, seed, evals, train, reuse)
            if condition == "ported":
                reuse = {k: v for k, v in row["zero_shot"].items() if k != "reused"}
            logger.info("%s seed %d: zero-shot %.4f%s", condition, seed, row["zero_shot"]["main"],
                        f", fine-tuned {row['finetuned']['main']:.4f}" if "finetuned" in row else "")
            result["rows"].append(row)
    result["summary"] = port_summary(result["rows"])
    return result


def markdown(result: dict, cfg: PortRunConfig) -> str:
    """One row per condition: zero-shot and fine-tuned main metric (x100, mean ± std over seeds), the source
    module on its own host as the baseline of the same run."""
    def pm(cond: str, phase: str) -> str:
        s = result["summary"].get(cond, {}).get(phase)
        return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s else "–"
    n = result["source_on_from_host"]["n"]
    lines = [f"# `{cfg.from_host}` → `{cfg.to_host}`: {result['task']}, {n} validation examples, seeds "
             f"{' '.join(map(str, cfg.seeds))}", "",
             f"Source module on `{cfg.from_host}`: {100 * result['source_on_from_host']['main']:.1f}. "
             f"{cfg.shots}-shot, {cfg.finetune_epochs} epoch(s) of fine-tuning on `{cfg.to_host}`, align "
             f"`{cfg.align}`. Commit `{result.get('git_commit', '?')}`.", "",
             "| condition | zero-shot | fine-tuned |", "|---|---:|---:|"]
    lines += [f"| {c} | {pm(c, 'zero_shot')} | {pm(c, 'finetuned')} |" for c in result["summary"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        cfg = parse_config(PortRunConfig, argv, description=__doc__.splitlines()[0], smoke=SMOKE)
        result = run_port(cfg)
        result.update(run_metadata(cfg, seeds=cfg.seeds))
        path = Path(cfg.out) / "port_results.json"
        atomic_write_json(path, result)
        atomic_write_text(path.with_suffix(".md"), markdown(result, cfg))
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    src = result["source_on_from_host"]["main"]
    print(f"source module on {cfg.from_host}: {src:.4f}")
    for cond, phases in result["summary"].items():
        print(f"{cond:>8} on {cfg.to_host}: " + ", ".join(f"{p} {v['mean']:.4f} ± {v['std']:.4f}"
                                                           for p, v in phases.items()))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    from retrikt.port import main as _main   # the importable module, not a second copy named __main__
    sys.exit(_main())
