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

import logging
import statistics
import sys
import time
from pathlib import Path

from retrikt.config import parse_config
from retrikt.eval.results import fmt_mean_std
from retrikt.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, run_metadata
from retrikt.logs import setup_logging
from retrikt.methods.base import resolve_device

from benchmarks.arithmetic_classify import run_distribution, run_multitask
from benchmarks.arithmetic_common import EXPERIMENTS, PROMPTS, ArithmeticBench, fingerprint
# Re-exported: the tests import these from here.
from benchmarks.arithmetic_common import RESULT_FIELDS, encoder_module, load_state, module_state  # noqa: F401
from benchmarks.arithmetic_unlearning import run_unlearning

logger = logging.getLogger("benchmarks.arithmetic")

SMOKE = {"encoder": "tiny-encoder", "lm": "tiny-causal", "seeds": [1, 2], "subset_size": 16, "heldout": 8,
         "lam_grid": [0.3, 0.5], "epochs": 1, "batch_size": 8, "eval_limit": 16, "mt_size": 16, "lm_sentences": 8,
         "lm_heldout": 4, "neg_grid": [0.5, 1.0], "ppl_sentences": 4, "generations": 8, "max_new_tokens": 4,
         "clf_size": 16, "name": "arithmetic_smoke"}


def runners() -> dict:
    """The experiment runners by name."""
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
