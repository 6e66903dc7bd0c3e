"""Generation throughput: the soft-prompted generator (store building) vs raw ``model.generate``, and batched vs batch-1.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.generation --model qwen-0.5b
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.generation --smoke

Both sides generate exactly ``max_new_tokens`` tokens per row (EOS suppressed via ``min_new_tokens``) from the same
conditions, at the same batch size, in the same process, alternating, so the ratio isolates the cost of the soft
prompt path (inputs_embeds prefix, left padding behind the prompt). With ``--prompt-dir`` (a store's trained prompt)
it also times store-style sampling that stops at EOS, one label's condition per batch as a build draws them, with
``model.generate`` (every row runs to the batch's longest) against retrikt's compacting sampler (finished rows leave
the batch): samples/s and useful tokens/s, the rates a build sees. Writes benchmarks/results/generation.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.generation --model qwen-0.5b --task sst2 --batch-sizes 1 8 32 64 \
        --rows 64 --batch1-rows 4 --raw false --repeats 1 --prompt-dir stores/sst2-qwen-0.5b-s2/prompt
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from retrikt import models
from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.store.samples import condition
from retrikt.teacher.softprompt import SoftPromptGenerator
from retrikt.tasks import get_task
from retrikt.logs import setup_logging

from benchmarks.common import RESULTS, peak_rss_gib


@dataclass
class GenerationBench:
    model: str = arg("qwen-0.5b", help="causal LM to generate with")
    task: str = arg("cb", help="task whose label conditions are used")
    batch_sizes: list[int] = arg([1, 8], help="batch sizes to measure")
    rows: int = arg(16, help="sequences generated per measurement")
    max_new_tokens: int = arg(32, help="new tokens per sequence (forced)")
    repeats: int = arg(2, help="alternating repeats; the best of each side is reported")
    batch1_rows: int = arg(0, help="rows for the batch-1 measurement (0 = --rows): its rate does not depend on how "
                                   "many rows, and at batch 1 every row costs a full pass per token")
    raw: bool = arg(True, help="also time raw model.generate (the overhead column); --raw false halves a sweep")
    name: str = arg("generation", help="results file stem")
    prompt_dir: str = arg("", help="a trained soft prompt (a store's prompt/ folder): also time store-style sampling "
                                   "that stops at EOS, model.generate vs the compacting sampler, in samples/s")
    natural_batch_sizes: list[int] = arg([8, 32, 64], help="batch sizes of the stop-at-EOS comparison")
    natural_rows: int = arg(64, help="samples per stop-at-EOS measurement")
    natural_max_new_tokens: int = arg(48, help="cap of the stop-at-EOS comparison (the SST-2 stores' cap)")


SMOKE = {"model": "tiny-causal", "rows": 8, "max_new_tokens": 8, "repeats": 1, "name": "generation_smoke"}


def _raw(gen: SoftPromptGenerator, conds: list[str], bs: int, n: int) -> float:
    tok, t0 = gen.tokenizer, time.perf_counter()
    for i in range(0, len(conds), bs):
        enc = tok(conds[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(gen.device)
        gen.model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=True, top_k=0, top_p=0.9,
                           pad_token_id=gen.pad_id)
    return time.perf_counter() - t0


def _soft(gen: SoftPromptGenerator, conds: list[str], bs: int, n: int) -> float:
    gcfg = gen._generation_config(n, 1.0, 0.9, None)  # the exact config store building uses ...
    gcfg.min_new_tokens = n                            # ... with EOS suppressed so both sides do equal work
    t0 = time.perf_counter()
    for i in range(0, len(conds), bs):
        gen._generate_batch(conds[i:i + bs], gcfg, "policy")
    return time.perf_counter() - t0


def _natural(gen: SoftPromptGenerator, task, cfg: GenerationBench) -> list[dict]:
    """Store-style sampling (one label's condition per batch, T = 1, top-p 0.9, stop at EOS): both samplers."""
    half = cfg.natural_rows // 2
    conds = [condition(task, 0)] * half + [condition(task, 1 % task.num_labels)] * (cfg.natural_rows - half)
    rows = []
    for bs in cfg.natural_batch_sizes:
        for sampler in ("hf", "compact"):
            gen.sampler = sampler
            t0 = time.perf_counter()
            out = [s for lab in (conds[:half], conds[half:]) for s in gen.generate(
                lab, max_new_tokens=cfg.natural_max_new_tokens, temperature=1.0, top_p=0.9, batch_size=bs, seed=1)]
            sec = time.perf_counter() - t0
            toks = sum(len(s["tokens"]) for s in out)
            rows.append({"batch_size": bs, "sampler": sampler, "seconds": sec, "samples": len(out),
                         "samples_s": len(out) / sec, "useful_tokens": toks, "useful_tok_s": toks / sec,
                         "tokens_per_sample": toks / len(out),
                         "finished": sum(s["finished"] for s in out) / len(out)})
            print(f"natural batch {bs} {sampler}: {len(out) / sec:.2f} samples/s, {toks / sec:.1f} useful tok/s, "
                  f"{toks / len(out):.1f} tokens/sample", flush=True)
    gen.sampler = "compact"
    return rows


def _natural_lines(rows: list[dict], cfg: GenerationBench) -> list[str]:
    if not rows:
        return []
    hf = {r["batch_size"]: r for r in rows if r["sampler"] == "hf"}
    base = min(r["samples_s"] for r in rows if r["sampler"] == "hf" and r["batch_size"] == min(hf))
    lines = ["", f"## Store-style sampling (stops at EOS): {cfg.natural_rows} samples, cap "
             f"{cfg.natural_max_new_tokens} tokens, prompt `{cfg.prompt_dir}`", "",
             "| batch | sampler | samples/s | useful tok/s | tokens/sample | ended with EOS | vs generate, same batch "
             f"| vs generate at batch {min(hf)} |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['sampler']} | {r['samples_s']:.2f} | {r['useful_tok_s']:.1f} | "
                     f"{r['tokens_per_sample']:.1f} | {r['finished']:.2f} | "
                     f"{r['samples_s'] / hf[r['batch_size']]['samples_s']:.2f}x | {r['samples_s'] / base:.2f}x |")
    return lines


def _num(v, fmt: str = ".1f", unit: str = "") -> str:
    return "–" if v is None else f"{v:{fmt}}{unit}"


@torch.no_grad()
def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(GenerationBench, argv, description=__doc__, smoke=SMOKE)
    task = get_task(cfg.task)
    model, tok = models.load_causal_lm(cfg.model)
    gen = SoftPromptGenerator(model, tok, n_virtual=20)
    gen.sampler = "hf"  # the forced-length sweep times model.generate (EOS suppressed, nothing to compact)
    conds = [condition(task, i % task.num_labels) for i in range(cfg.rows)]
    results = []
    for bs in cfg.batch_sizes:
        rows = conds[:cfg.batch1_rows] if bs == 1 and cfg.batch1_rows else conds
        raw, soft = [], []
        for _ in range(cfg.repeats):
            if cfg.raw:
                raw.append(_raw(gen, rows, bs, cfg.max_new_tokens))
            soft.append(_soft(gen, rows, bs, cfg.max_new_tokens))
        tokens = len(rows) * cfg.max_new_tokens
        row = {"batch_size": bs, "tokens": tokens, "raw_tok_s": tokens / min(raw) if raw else None,
               "soft_tok_s": tokens / min(soft)}
        row["overhead_pct"] = 100 * (row["raw_tok_s"] / row["soft_tok_s"] - 1) if raw else None
        results.append(row)
        print(f"batch {bs}: soft prompt {row['soft_tok_s']:.1f} tok/s"
              + (f", raw {row['raw_tok_s']:.1f} tok/s, overhead {row['overhead_pct']:+.1f}%" if raw else ""), flush=True)
    natural = _natural(SoftPromptGenerator.load(cfg.prompt_dir, model, tok), task, cfg) if cfg.prompt_dir else []
    b1 = next((r for r in results if r["batch_size"] == 1), None)
    for r in results:
        r["speedup_vs_batch1"] = r["soft_tok_s"] / b1["soft_tok_s"] if b1 else None
    out = run_metadata(cfg) | {"rows": results, "natural": natural, "threads": torch.get_num_threads(), "peak_rss_gib": peak_rss_gib()}
    atomic_write_json(RESULTS / f"{cfg.name}.json", out)
    lines = [f"# Generation throughput: {cfg.model}, {cfg.rows} rows x {cfg.max_new_tokens} new tokens, "
             f"{torch.get_num_threads()} threads", "",
             "| batch | raw generate tok/s | soft-prompt generator tok/s | overhead | soft speed-up vs batch 1 |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch_size']} | {_num(r['raw_tok_s'])} | {r['soft_tok_s']:.1f} | {_num(r['overhead_pct'], '+.1f', '%')} | "
              + (f"{r['speedup_vs_batch1']:.2f}x |" if r["speedup_vs_batch1"] is not None else "n/a |")
              for r in results]
    lines += ["", f"Peak RSS {out['peak_rss_gib']:.2f} GiB. Commit `{out['git_commit']}`. Regenerate: "
              f"`OMP_NUM_THREADS={torch.get_num_threads()} python -m benchmarks.generation --model {cfg.model} "
              f"--batch-sizes {' '.join(map(str, cfg.batch_sizes))} --rows {cfg.rows} --max-new-tokens "
              f"{cfg.max_new_tokens} --batch1-rows {cfg.batch1_rows} --repeats {cfg.repeats}"
              + ("" if cfg.raw else " --raw false") + f" --name {cfg.name}"
              + (f" --prompt-dir {cfg.prompt_dir}" if cfg.prompt_dir else "") + "`"]
    lines += _natural_lines(natural, cfg)
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
