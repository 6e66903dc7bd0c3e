"""Module arithmetic (Zhang et al., "Composing Parameter-Efficient Modules with Arithmetic Operations", NeurIPS 2023)
on the offline models: three of the paper's experiments, each over seeds, reported as mean ± std.

* ``distribution``: two disjoint SST-2 training subsets with skewed labels (subset-1 ``skew`` positive, subset-2
  ``skew`` negative); from one init seed a LoRA and an (IA)^3 module (+ head) on each, merged as
  λ·θ1 + (1−λ)·θ2 (heads averaged likewise), against each module alone and a module trained on the union.
* ``multitask``: a LoRA module on SST-2 and one on ``second_task`` (CoLA), one init seed, each with its own head;
  the bodies are merged and every task keeps its own head.
* ``unlearning``: a LoRA on a causal LM trained as a language model on negative SST-2 training sentences, then
  negated (⊖θ, λ-scaled); generations from neutral prompts are scored by an SST-2 sentiment classifier trained here,
  and perplexity on SST-2 validation sentences measures the cost.

λ is always chosen on a held-out slice of the *training* data, never on the validation sets. Every finished
(experiment, seed) is appended to ``<out_dir>/<name>.runs.jsonl`` and skipped on a rerun with the same settings;
``<name>.json`` / ``<name>.md`` are rebuilt from it.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.arithmetic
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.arithmetic --experiments unlearning --lm qwen-0.5b
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.arithmetic --smoke   # tiny random models
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from retrikt import models
from retrikt.config import arg, parse_config
from retrikt.eval import evaluate
from retrikt.eval.results import fmt_mean_std
from retrikt.init.arithmetic import seeded_peft_model
from retrikt.init.port import peft_config_for
from retrikt.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, run_metadata
from retrikt.student.encoder import EncoderClassifier
from retrikt.student.methods import resolve_device
from retrikt.student.trainer import FitConfig, fit
from retrikt.tasks import load_split
from retrikt.logs import setup_logging

from benchmarks.common import RESULTS

logger = logging.getLogger("benchmarks.arithmetic")
EXPERIMENTS = ("distribution", "multitask", "unlearning")
PROMPTS = ["The movie was", "I thought the film", "This film is", "The acting in this movie",
           "Overall, the story", "The director's new film", "Watching this movie, I", "The ending of the film"]


@dataclass
class ArithmeticBench:
    experiments: list[str] = arg(list(EXPERIMENTS), choices=list(EXPERIMENTS), help="experiments to run")
    seeds: list[int] = arg([1, 2, 3], help="seeds: data draws, the shared init of the modules, training order")
    encoder: str = arg("minilm-l6", help="encoder host of the classification modules (and the sentiment classifier)")
    lm: str = arg("smollm2-135m", help="causal LM of the unlearning experiment (the issue names qwen-0.5b)")
    peft_types: list[str] = arg(["lora", "ia3"], choices=["lora", "ia3"], help="distribution: module types")
    subset_size: int = arg(400, help="distribution: training examples in each skewed subset (union: twice this)")
    skew: float = arg(0.8, help="distribution: share of the majority label in each subset (0.8 = 80/20, 20/80)")
    heldout: int = arg(200, help="held-out training examples (per task) on which λ is chosen")
    lam_grid: list[float] = arg([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                                help="merge: grid of λ in λ·θ1 + (1−λ)·θ2")
    epochs: int = arg(2, help="training epochs of each classification module")
    batch_size: int = arg(16, help="examples per step of the classification modules and the classifier")
    lora_lr: float = arg(1e-3, help="LoRA learning rate (classification modules)")
    ia3_lr: float = arg(1e-2, help="(IA)^3 learning rate")
    head_lr: float = arg(1e-2, help="head learning rate (MiniLM's pooled features have a small norm)")
    lora_r: int = arg(8, help="LoRA rank (PEFT's default targets: query/value; q_proj/v_proj on the LM)")
    lora_alpha: int = arg(16, help="LoRA alpha")
    max_length: int = arg(64, help="encoder max tokens per input")
    eval_limit: int = arg(0, help="score only the first N validation examples of each task (0 = all)")
    second_task: str = arg("cola", help="multitask: the task merged with SST-2 (binary, offline)")
    mt_size: int = arg(1000, help="multitask: training examples per task")
    lm_sentences: int = arg(320, help="unlearning: negative SST-2 training sentences the LM module is trained on")
    lm_min_words: int = arg(8, help="unlearning: only training sentences of at least this many words (no fragments)")
    lm_epochs: int = arg(1, help="unlearning: epochs of LM training")
    lm_lr: float = arg(2e-3, help="unlearning: LoRA learning rate")
    lm_batch_size: int = arg(8, help="unlearning: sentences per step (and per scoring batch)")
    neg_grid: list[float] = arg([0.1, 0.25, 0.5, 1.0, 1.5], help="unlearning: grid of the negation strength λ")
    ppl_budget: float = arg(2.0, help="unlearning: λ may at most multiply the base model's perplexity on held-out "
                                      "positive training sentences by this")
    lm_heldout: int = arg(64, help="unlearning: held-out negative and positive training sentences (each) for λ")
    ppl_sentences: int = arg(200, help="unlearning: SST-2 validation sentences whose perplexity is measured")
    generations: int = arg(64, help="unlearning: continuations per model, spread over the neutral prompts")
    max_new_tokens: int = arg(24, help="unlearning: tokens per continuation")
    top_p: float = arg(0.9, help="unlearning: nucleus sampling")
    clf_size: int = arg(1500, help="sentiment classifier: SST-2 training examples (full fine-tuning of --encoder)")
    clf_epochs: int = arg(1, help="sentiment classifier: epochs")
    clf_lr: float = arg(5e-5, help="sentiment classifier: encoder learning rate")
    data_dir: str | None = arg(None, help="folder with glue/ files (default: ../shared/data)")
    device: str = arg("auto", help="auto | cpu | cuda")
    out_dir: str = arg(str(RESULTS), help="folder of the results files")
    name: str = arg("arithmetic", help="results file stem: <name>.json, <name>.md, <name>.runs.jsonl")


SMOKE = {"encoder": "tiny-encoder", "lm": "tiny-causal", "seeds": [1, 2], "subset_size": 16, "heldout": 8,
         "lam_grid": [0.3, 0.5], "epochs": 1, "batch_size": 8, "eval_limit": 16, "mt_size": 16, "lm_sentences": 8,
         "lm_heldout": 4, "neg_grid": [0.5, 1.0], "ppl_sentences": 4, "generations": 8, "max_new_tokens": 4,
         "clf_size": 16, "name": "arithmetic_smoke"}
# The settings each experiment's result depends on: a record is reused when these match, so e.g. another --lm
# reruns only the unlearning seeds. Settings in none of these (seeds, device, files) never invalidate a record.
_SHARED = ("encoder", "max_length", "eval_limit", "batch_size", "head_lr", "lora_r", "lora_alpha", "data_dir")
RESULT_FIELDS = {
    "distribution": _SHARED + ("peft_types", "subset_size", "skew", "heldout", "lam_grid", "epochs", "lora_lr",
                               "ia3_lr"),
    "multitask": _SHARED + ("second_task", "mt_size", "heldout", "lam_grid", "epochs", "lora_lr"),
    "unlearning": _SHARED + ("lm", "lm_sentences", "lm_min_words", "lm_epochs", "lm_lr", "lm_batch_size",
                             "neg_grid", "ppl_budget", "lm_heldout", "ppl_sentences", "generations", "max_new_tokens",
                             "top_p", "clf_size", "clf_epochs", "clf_lr"),
}


# ---- shared helpers ----------------------------------------------------------------------------------------

def fingerprint(cfg: ArithmeticBench, experiment: str) -> str:
    d = asdict(cfg)
    return hashlib.sha256(json.dumps({k: d[k] for k in RESULT_FIELDS[experiment]},
                                     sort_keys=True).encode()).hexdigest()[:16]


def validation(cfg: ArithmeticBench, task) -> list[dict]:
    examples = load_split(task, "validation", data_dir=cfg.data_dir)
    return examples[:cfg.eval_limit] if cfg.eval_limit else examples


def score(student, task, examples: list[dict]) -> dict:
    """Main metric plus accuracy and the share predicted as label 1 (positive / acceptable): the label bias."""
    r = evaluate(student, task, "validation", examples=sorted(examples, key=lambda e: len(task.text_pair(e)[0])))
    preds = [p["pred"] for p in r["predictions"]]
    return {**r["metrics"], "main": r["main"], "n": r["n"],
            "accuracy": sum(p["pred"] == p["label"] for p in r["predictions"]) / r["n"],
            "pred1_rate": sum(p == 1 for p in preds) / len(preds)}


def encoder_module(cfg: ArithmeticBench, task, train: list[dict], ptype: str, seed: int, device) -> EncoderClassifier:
    """A ``ptype`` module plus head on a fresh copy of the encoder, trained on ``train``. The init seed is the run's
    seed, so modules meant to be merged start from equal A matrices / (IA)^3 vectors and equal heads."""
    encoder, tok = models.load_encoder(cfg.encoder, device=device)
    peft = seeded_peft_model(encoder, peft_config_for(ptype, r=cfg.lora_r, alpha=cfg.lora_alpha), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = EncoderClassifier(peft, tok, task, max_length=cfg.max_length).to(device)
    fcfg = FitConfig(epochs=cfg.epochs, lr=cfg.lora_lr if ptype == "lora" else cfg.ia3_lr, head_lr=cfg.head_lr,
                     batch_size=cfg.batch_size)
    fit(student, train, fcfg, seed, desc=f"{ptype} {task.name} s{seed}")
    return student


def module_state(student: EncoderClassifier) -> dict[str, torch.Tensor]:
    """The module as a PEFT state dict, the head as ``head.*`` tensors: arithmetic treats those as full
    parameters (``modules_to_save``), so ``merge(..., head="merge")`` averages them."""
    from peft import get_peft_model_state_dict
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(student.encoder).items()}
    state.update({f"head.{k}": v.detach().clone() for k, v in student.head.state_dict().items()})
    return state


def load_state(student: EncoderClassifier, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` on ``student``; a state without head tensors leaves the student's own head."""
    from peft import set_peft_model_state_dict
    set_peft_model_state_dict(student.encoder, {k: v for k, v in state.items() if not k.startswith("head.")})
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if head:
        student.head.load_state_dict(head)


def pick(grid: list[float], objective) -> tuple[float, dict[str, float]]:
    """The grid value maximising ``objective``; ties go to the value nearest 0.5 (the plain mean)."""
    curve = {lam: objective(lam) for lam in grid}
    best = max(grid, key=lambda lam: (round(curve[lam], 9), -abs(lam - 0.5)))
    return best, {str(k): v for k, v in curve.items()}


def runners() -> dict:
    """The experiment runners by name. Imported here, not at the top: their modules import this module's config and
    helpers, so a top-level import would be circular."""
    from benchmarks.arithmetic_classify import run_distribution, run_multitask
    from benchmarks.arithmetic_unlearning import run_unlearning
    return {"distribution": run_distribution, "multitask": run_multitask, "unlearning": run_unlearning}


# ---- reporting ---------------------------------------------------------------------------------------------

def _vals(records: list[dict], path: tuple) -> list[float]:
    out = []
    for r in records:
        v = r["result"]
        for p in path:
            v = v[p]
        out.append(v)
    return out


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {sd:.{digits}f}"


def _lams(values: list[float]) -> str:
    return "/".join(f"{v:g}" for v in values)


def _eval_note(cfg: ArithmeticBench) -> str:
    return (f"Scores on the first {cfg.eval_limit} validation examples of each task." if cfg.eval_limit
            else "Scores on the full validation sets.")


def md_distribution(recs: list[dict], cfg: ArithmeticBench) -> list[str]:
    lines = [f"## 1. Distribution generalisation (SST-2, {cfg.encoder})", "",
             f"Two disjoint subsets of {cfg.subset_size} SST-2 training examples: subset-1 {cfg.skew:.0%} positive, "
             f"subset-2 {cfg.skew:.0%} negative; union = both ({2 * cfg.subset_size}). λ·θ1 + (1−λ)·θ2 with λ "
             f"from {_lams(cfg.lam_grid)} chosen on {cfg.heldout} held-out training examples (accuracy), "
             "drawn from the rest of the training split. " + _eval_note(cfg), "",
             "| PEFT | module | accuracy % | predicted positive % | λ per seed |", "|---|---|---:|---:|---|"]
    names = {"subset-1": f"subset-1 ({cfg.skew:.0%} pos)", "subset-2": f"subset-2 ({1 - cfg.skew:.0%} pos)",
             "merged": "merged (λ on held-out)", "merged-0.5": "merged (λ = 0.5)", "union": "union"}
    for ptype in cfg.peft_types:
        for key, label in names.items():
            lam = _lams(_vals(recs, ("rows", ptype, key, "lam"))) if key.startswith("merged") else ""
            lines.append(f"| {ptype} | {label} | {fmt_mean_std(_vals(recs, ('rows', ptype, key, 'accuracy')))} | "
                         f"{fmt_mean_std(_vals(recs, ('rows', ptype, key, 'pred1_rate')))} | {lam} |")
    return lines


def md_multitask(recs: list[dict], cfg: ArithmeticBench) -> list[str]:
    tasks = recs[0]["result"]["tasks"]
    lines = [f"## 2. Multi-task (SST-2 + {cfg.second_task}, {cfg.encoder}, LoRA)", "",
             f"{cfg.mt_size} training examples per task; the LoRA bodies are merged (λ·θ_sst2 + (1−λ)·θ_"
             f"{cfg.second_task}, λ per seed {_lams(_vals(recs, ('lam',)))} chosen on {cfg.heldout} held-out "
             "training examples per task by the mean main metric); each task keeps its own head. "
             + _eval_note(cfg), "",
             "| task | metric | single-task module | merged (λ on held-out) | merged (λ = 0.5) |",
             "|---|---|---:|---:|---:|"]
    for t in tasks:
        metrics = ["accuracy"] if t == "sst2" else ["main", "accuracy"]
        for m in metrics:
            name = "mcc" if m == "main" else m
            cells = [fmt_mean_std(_vals(recs, ("rows", t, k, m))) for k in ("single", "merged", "merged-0.5")]
            lines.append(f"| {t} | {name} % | " + " | ".join(cells) + " |")
    weak = [t for t in tasks if statistics.fmean(_vals(recs, ("rows", t, "single", "main"))) < 0.1]
    if weak:
        lines += ["", f"The single-task {', '.join(weak)} module is near chance on its main metric at this size, so "
                  "its rows say little about what merging keeps; the other task's rows show what merging costs it."]
    return lines


def md_unlearning(recs: list[dict], cfg: ArithmeticBench) -> list[str]:
    r0 = recs[0]["result"]
    clf = r0["classifier"]
    lines = [f"## 3. Unlearning by negation ({r0['lm']})", "",
             f"LoRA (r={cfg.lora_r}, q/v) trained {cfg.lm_epochs} epoch(s) as a language model on "
             f"{r0['train_sentences']} negative SST-2 training sentences (≥ {cfg.lm_min_words} words, PTB spacing "
             f"undone, first letter capitalised); negated with λ per seed {_lams(_vals(recs, ('lam',)))} (grid "
             f"{_lams(cfg.neg_grid)}: among the λ keeping the perplexity of {cfg.lm_heldout} held-out positive "
             f"training sentences within {cfg.ppl_budget:g}× the base model's, the one maximising NLL(neg) − NLL(pos) on "
             f"{cfg.lm_heldout}+{cfg.lm_heldout} held-out negative/positive training sentences). {cfg.generations} "
             f"sampled continuations (top-p {cfg.top_p}, {cfg.max_new_tokens} new tokens) of {len(PROMPTS)} neutral "
             f"prompts, classified by {cfg.encoder} fine-tuned on {cfg.clf_size} SST-2 examples (validation "
             f"accuracy {100 * clf['accuracy']:.1f}% on {clf['n']}). Perplexity on the first {cfg.ppl_sentences} "
             "SST-2 validation sentences.", "",
             "| model | generations negative % | mean P(negative) % | PPL SST-2 val | NLL held-out neg | "
             "NLL held-out pos |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in (("base", "base"), ("module", "+ module (negative)"), ("negated", "⊖ module (λ chosen)"),
                       ("negated-1", "⊖ module (λ = 1)")):
        v = lambda m: _vals(recs, ("rows", key, m))  # noqa: E731
        lines.append(f"| {label} | {fmt_mean_std(v('negative_share'))} | {fmt_mean_std(v('p_negative'))} | "
                     f"{_ms(v('ppl_val'), digits=1)} | {_ms(v('nll_held_neg'))} | {_ms(v('nll_held_pos'))} |")
    return lines


def markdown(by_exp: dict[str, list[dict]], cfg: ArithmeticBench, command: str) -> str:
    seconds = sum(r["seconds"] for rs in by_exp.values() for r in rs)
    cpu = sum(r["cpu_seconds"] for rs in by_exp.values() for r in rs)
    lines = [f"# Module arithmetic (Zhang et al., NeurIPS 2023): mean ± std over seeds "
             f"{', '.join(map(str, cfg.seeds))}", "", f"Regenerate: `{command}`", "",
             f"Wall time of the recorded runs {seconds / 60:.1f} min ({cpu / 60:.1f} CPU-min, torch threads 1, "
             "machine shared with other jobs). Per experiment: "
             + ", ".join(f"{e} {sum(r['seconds'] for r in rs) / 60:.1f} min" for e, rs in by_exp.items()) + ".", "",
             f"Classification modules: LoRA r={cfg.lora_r}, α={cfg.lora_alpha} on query/value (lr {cfg.lora_lr:g}), "
             f"(IA)^3 on key/value/output.dense (PEFT's default; lr {cfg.ia3_lr:g}), linear head on mean-pooled "
             f"{cfg.encoder} (lr {cfg.head_lr:g}), {cfg.epochs} epochs, batch {cfg.batch_size}, ≤ {cfg.max_length} "
             "tokens. The modules to be composed share one init seed (the run's seed: equal LoRA A / (IA)^3 vectors and equal "
             "heads at the start); every λ is chosen on held-out *training* data, never on a validation set.", ""]
    render = {"distribution": md_distribution, "multitask": md_multitask, "unlearning": md_unlearning}
    for exp, recs in by_exp.items():
        lines += render[exp](recs, cfg) + [""]
    return "\n".join(lines)


# ---- driver ------------------------------------------------------------------------------------------------

def run(cfg: ArithmeticBench) -> dict[str, list[dict]]:
    """Run every pending (experiment, seed), appending each to the JSONL; return the records by experiment."""
    runs = Path(cfg.out_dir) / f"{cfg.name}.runs.jsonl"
    fps, device, ctx = {e: fingerprint(cfg, e) for e in EXPERIMENTS}, resolve_device(cfg.device), {}
    runner_of = runners()
    done = {(r["experiment"], r["seed"]): r for r in read_jsonl(runs)
            if r.get("experiment") in fps and r.get("fingerprint") == fps[r["experiment"]]}
    for exp in cfg.experiments:
        for seed in cfg.seeds:
            if (exp, seed) in done:
                print(f"{exp} seed {seed}: already in {runs}, skipped", flush=True)
                continue
            t0, c0 = time.monotonic(), time.process_time()
            result = runner_of[exp](cfg, seed, device, ctx)
            rec = {"experiment": exp, "seed": seed, "fingerprint": fps[exp], "result": result,
                   "seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - c0}
            append_jsonl(runs, rec)
            done[(exp, seed)] = rec
            print(f"{exp} seed {seed}: done in {rec['seconds']:.0f} s", flush=True)
    return {e: [done[(e, s)] for s in cfg.seeds] for e in cfg.experiments}


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(ArithmeticBench, argv, description=__doc__.splitlines()[0], smoke=SMOKE)
    by_exp = run(cfg)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.arithmetic " + " ".join(argv)
    out = Path(cfg.out_dir)
    atomic_write_json(out / f"{cfg.name}.json", {"experiments": by_exp, "command": command.strip(),
                                                 **run_metadata(cfg, seeds=cfg.seeds)})
    text = markdown(by_exp, cfg, command.strip())
    atomic_write_text(out / f"{cfg.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
