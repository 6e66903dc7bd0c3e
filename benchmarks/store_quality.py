"""Quality and diversity of knowledge stores, side by side (e.g. supervised vs PPO-refined soft prompt).

    python -m retrikt.build --config stores/cb.yaml --out stores/cb-sup
    python -m retrikt.build --config stores/cb.yaml --rl ppo --rl-steps 20 --out stores/cb-ppo
    python -m benchmarks.store_quality --stores stores/cb-sup stores/cb-ppo --name store_quality_cb

Per store: samples generated, entries, parse / keep rates and teacher agreement from the build log, build minutes,
the build process's peak resident memory and kept entries per hour (from the manifest; a resumed build counts only
its last part), mean pairwise cosine of the entry embeddings (lower = more diverse), distinct-1 / distinct-2 (unique
n-grams / all n-grams over the entries' text), and the label balance. Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata
from retrikt.store import Store
from retrikt.logs import setup_logging

from benchmarks.common import RESULTS, read_rows


@dataclass
class StoreQualityBench:
    stores: list[str] = arg([], help="store folders to compare")
    name: str = arg("store_quality", help="results file stem")
    rows_from: list[str] = arg([], help="FILE or FILE:TEXT: rows measured earlier, read from a store_quality results "
                                        "JSON (only those whose store path contains TEXT), for stores no longer on "
                                        "disk; each keeps the file and commit it came from")


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(t.split()[i:i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine(emb: np.ndarray) -> float:
    if len(emb) < 2:
        return float("nan")
    s = emb @ emb.T
    return float((s.sum() - np.trace(s)) / (len(emb) * (len(emb) - 1)))


def rl_label(config: dict) -> str:
    """The RL method plus the PPO settings that differ from the defaults (so variants of one store tell apart)."""
    from retrikt.pipeline.config import ppo_overrides
    extra = [f"{name.replace('_', '-')} {value:g}" for name, value in ppo_overrides(config).items()]
    return config.get("rl", "none") + (f" ({', '.join(extra)})" if extra else "")


def final_kl(path: str) -> float | None:
    log = Path(path) / "rl_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return rows[-1].get("kl") if rows else None


def describe(path: str) -> dict:
    store = Store.open(path)
    entries = store.entries(range(len(store)))
    texts = [" ".join(e["fields"].values()).lower() for e in entries]
    stats = store.manifest.get("stats", {})
    labels = Counter(int(e["label"]) for e in entries)
    return {"store": path, "rl": rl_label(store.manifest.get("config", {})), "final_kl": final_kl(path),
            "entries": len(store),
            "parse_rate": stats.get("parse_rate"), "keep_rate": stats.get("keep_rate"),
            "agreement": stats.get("agreement"), "mean_pairwise_cosine": mean_pairwise_cosine(store.embeddings),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "labels": dict(sorted(labels.items())), "tokens_per_s": stats.get("tokens_per_s"),
            "generated": stats.get("generated"), "completed": stats.get("completed"),
            "completed_parsed": stats.get("completed_parsed")} | build_cost(store.manifest)


def build_cost(manifest: dict) -> dict:
    """Build minutes, peak memory and kept entries per hour; None where the manifest predates the field."""
    seconds, entries = manifest.get("build_seconds"), manifest.get("counts", {}).get("entries")
    return {"build_minutes": seconds / 60 if seconds else None, "peak_rss_gib": manifest.get("peak_rss_gib"),
            "entries_per_hour": entries / seconds * 3600 if seconds and entries is not None else None}


def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(StoreQualityBench, argv, description=__doc__)
    rows = [describe(p) for p in cfg.stores] + [r for spec in cfg.rows_from for r in earlier_rows(spec)]
    if not rows:
        raise SystemExit("error: no stores (--stores) and no earlier rows (--rows-from)")
    out = run_metadata(cfg) | {"rows": rows}
    atomic_write_json(RESULTS / f"{cfg.name}.json", out)
    lines = ["# Knowledge-store quality", "",
             "| store | RL | final KL | generated | entries | parse rate | keep rate | teacher agreement | build min | "
             "peak RSS GiB | entries / h | mean pairwise cos | distinct-1 | distinct-2 | labels |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    if cfg.rows_from:  # one more column: where each row was measured
        lines[2], lines[3] = lines[2] + " measured |", lines[3] + "---|"
        lines += [table_row(r) + f" {r.get('measured_in', {}).get('file', 'this run')} |" for r in rows]
    else:
        lines += [table_row(r) for r in rows]
    lines += completion_lines(rows)
    args = (f" --stores {' '.join(cfg.stores)}" if cfg.stores else "") + \
        (f" --rows-from {' '.join(cfg.rows_from)}" if cfg.rows_from else "")
    lines += ["", f"Commit `{out['git_commit']}`. Regenerate: `python -m benchmarks.store_quality{args} "
              f"--name {cfg.name}`"]
    atomic_write_text(RESULTS / f"{cfg.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def earlier_rows(spec: str) -> list[dict]:
    """Rows of an earlier store_quality results file (``FILE`` or ``FILE:TEXT``, TEXT filtering the store paths),
    each marked with the file and the commit it was measured at."""
    # older files lack some columns (shown as gaps)
    cols = dict.fromkeys(("rl", "final_kl", "generated", "parse_rate", "keep_rate", "agreement", "build_minutes",
                          "peak_rss_gib", "entries_per_hour", "mean_pairwise_cosine", "distinct_1", "distinct_2",
                          "labels"))
    return [cols | r for r in read_rows(spec, "store_quality")]


def _labels(counts: dict | None) -> str:
    """Entries per label, the same whether read from a store or from JSON (which made the labels strings)."""
    if not counts:
        return "–"
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted((int(k), v) for k, v in counts.items())) + "}"


def completion_lines(rows: list[dict]) -> list[str]:
    """For stores built with --complete-fields: how many samples were continued, and the parse rate without them."""
    done = [r for r in rows if r.get("completed")]
    if not done:
        return []
    return ["", "Built with `--complete-fields` (samples that stopped after their first field, continued once):"] + [
        f"- {r['store']}: {r['completed']} continued, {r['completed_parsed']} of them parse; parse rate "
        f"{r['parse_rate']:.3f}, {(r['parse_rate'] * r['generated'] - r['completed_parsed']) / r['generated']:.3f} "
        "without them" for r in done]


def table_row(r: dict) -> str:
    f = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    return (f"| {r['store']} | {r['rl']} | {f(r['final_kl'])} | {r['generated'] or '–'} | {r['entries']} | "
            f"{f(r['parse_rate'])} | {f(r['keep_rate'])} | {f(r['agreement'])} | {f(r['build_minutes'], 1)} | "
            f"{f(r['peak_rss_gib'], 1)} | {f(r['entries_per_hour'], 0)} | {f(r['mean_pairwise_cosine'])} | "
            f"{f(r['distinct_1'])} | {f(r['distinct_2'])} | {_labels(r['labels'])} |")


if __name__ == "__main__":
    main()
