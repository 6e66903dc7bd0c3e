"""A/B of the store generator's context on one task and seed: what to generate with, before building at scale.

    python -m benchmarks.generator_ab --task sst2 --seed 1          # the variants below, 64 samples each

Each variant is a real build (``retrikt.pipeline``) with every filter counting but none dropping (unfinished,
label-naming and disagreeing samples are kept), so the rates describe what the generator wrote: parse rate, share
that ended before --max-new-tokens, share naming their own label, labeller agreement with the conditioned label
(the seed's adapted labeller), distinct-2 and mean pairwise cosine of the parsed samples (lower = more diverse), and
generated tokens/s. Writes benchmarks/results/<name>.{json,md}; the stores go under --root (not committed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.logs import setup_logging
from retrikt.pipeline.config import BuildConfig
from retrikt.pipeline.run import build_store
from retrikt.store import Store

from benchmarks.common import RESULTS, peak_rss_gib
from benchmarks.store_quality import describe

# name: (prompt epochs, same-label demonstrations in context, chat template)
VARIANTS = {"instruction only": (0, 0, False), "tuned 5 epochs": (5, 0, False), "demos": (0, 4, False),
            "chat + demos": (0, 4, True), "chat + demos, tuned 2 epochs": (2, 4, True),
            "tuned 5 epochs + demos": (5, 4, False), "tuned 5 epochs + 1 demo": (5, 1, False)}
DEFAULT_VARIANTS = ["instruction only", "tuned 5 epochs", "demos", "chat + demos", "chat + demos, tuned 2 epochs"]


@dataclass
class GeneratorAB:
    task: str = arg("sst2", help="task")
    seed: int = arg(1, help="seed of the k-shot set (the labeller is that seed's adapted teacher)")
    teacher: str = arg("qwen-0.5b", help="generator and labeller")
    samples: int = arg(64, help="samples generated per variant (split evenly over the labels)")
    batch_size: int = arg(32, help="generation batch size")
    variants: list[str] = arg(DEFAULT_VARIANTS, help=f"which variants to run, of: {'; '.join(VARIANTS)}")
    max_new_tokens: int = arg(0, help="longest sample in tokens; 0 = auto (1.5 x the longest k-shot target + 8)")
    root: str = arg("stores/ab", help="folder of the variants' stores")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    name: str = arg("generator_ab", help="results file stem")


def build(cfg: GeneratorAB, variant: str) -> tuple[Path, float]:
    epochs, demos, chat = VARIANTS[variant]
    from retrikt.tasks import get_task
    per_label = cfg.samples // get_task(cfg.task).num_labels
    out = Path(cfg.root) / f"{cfg.task}-s{cfg.seed}-{variant.replace(' ', '').replace(',', '-').replace('+', '-')}"
    t0 = time.perf_counter()
    build_store(BuildConfig(task=cfg.task, teacher=cfg.teacher, seed=cfg.seed, per_label=per_label,
                            label_mix="uniform", prompt_epochs=epochs, gen_demos=demos, chat_template=chat,
                            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, keep_unfinished=True,
                            drop_label_words=False, min_agreement=0.0, data_dir=cfg.data_dir, out=str(out)))
    return out, time.perf_counter() - t0


def row(variant: str, path: Path, seconds: float) -> dict:
    stats = Store.open(path).manifest["stats"]
    parsed = max(1, stats["parsed"])
    return describe(str(path)) | {
        "variant": variant, "minutes": seconds / 60, "generated": stats["generated"],
        "finished_rate": 1 - stats["unfinished"] / parsed, "label_word_rate": stats["label_words"] / parsed,
        "agreement_parsed": stats["agreed"] / parsed, "tokens_per_s": stats["tokens_per_s"]}


def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(GeneratorAB, argv, description=__doc__)
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {'; '.join(VARIANTS)}")
    rows = []
    for variant in cfg.variants:
        path, secs = build(cfg, variant)
        rows.append(row(variant, path, secs))
        write(cfg, rows)


def _extra_args(cfg: GeneratorAB) -> str:
    """The options of the regenerate line that differ from their defaults."""
    out = f" --max-new-tokens {cfg.max_new_tokens}" if cfg.max_new_tokens else ""
    if cfg.variants != DEFAULT_VARIANTS:
        out += " --variants " + " ".join(f"'{v}'" for v in cfg.variants)
    return out + (f" --name {cfg.name}" if cfg.name != "generator_ab" else "")


def write(cfg: GeneratorAB, rows: list[dict]) -> None:
    out = run_metadata(cfg, seeds=[cfg.seed]) | {"rows": rows, "peak_rss_gib": peak_rss_gib()}
    atomic_write_json(RESULTS / f"{cfg.name}.json", out)
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Generator A/B: {cfg.task}, seed {cfg.seed}, {cfg.teacher}, {cfg.samples} samples per variant", "",
             "Rates over parsed samples (nothing dropped but unparseable samples and exact / near duplicates); "
             "agreement: the adapted labeller's argmax equals the label the sample was conditioned on.", "",
             "| variant | generated | parse rate | ended (EOS) | names its label | agreement | distinct-2 | "
             "mean pairwise cos | tok/s | minutes |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['generated']} | {f(r['parse_rate'])} | {f(r['finished_rate'])} | "
              f"{f(r['label_word_rate'])} | {f(r['agreement_parsed'])} | {f(r['distinct_2'])} | "
              f"{f(r['mean_pairwise_cosine'])} | {r['tokens_per_s']:.1f} | {r['minutes']:.1f} |" for r in rows]
    lines += ["", f"Commit `{out['git_commit']}`. Regenerate: `python -m benchmarks.generator_ab --task {cfg.task} "
              f"--seed {cfg.seed} --teacher {cfg.teacher} --samples {cfg.samples}{_extra_args(cfg)}`"]
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
