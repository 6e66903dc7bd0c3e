"""Per-seed stores and the students on them: one table per task, every row 32-shot (each seed's own store).

    python -m benchmarks.seed_stores --task sst2 --seeds 1 2 3 --stores STORES --runs RUNS \\
        --baselines benchmarks/results/compare/runs --teachers benchmarks/results/teachers/runs

``RUNS/<task>-s<seed>/<row>/`` holds ``retrikt.train --out`` folders (rows: kd, retrikt, retrikt-teacher-keys,
kd-oracle), or, where those are absent, the flat layout: ``RUNS/runs/`` (a ``retrikt.compare --out`` folder's kd and
retrikt runs), ``RUNS/no-relational/``, ``RUNS/kd-oracle/`` (one ``retrikt.train --out`` folder per row, all seeds); ``STORES/<task>-qwen-0.5b-s<seed>`` the generated stores (``-oracle``: the oracle reference). The
fine-tune and teacher rows come from the committed grid / teacher runs of the same seeds. A retrikt run's ablations
(``variants``: no retrieval at inference, the CV's best setting per key space) are scored on the same student.
Writes benchmarks/results/seed_stores_<task>.{json,md}.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.eval import load_results
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS

ROWS = (("finetune", "MiniLM fine-tune (32 gold)"), ("kd", "kd"),
        ("retrikt", "retrikt, --retrieval-keys auto (its trained key space: the settings list)"),
        ("retrikt-store-keys", "retrikt, store keys"), ("retrikt-teacher-keys", "retrikt, teacher keys"),
        ("retrikt-no-relational", "retrikt, no relational loss (ablation)"), ("kd-oracle", "kd on the oracle store"),
        ("teacher-lora", "teacher: adapted qwen-0.5b (the labeller)"))

# the flat layout: a retrikt.compare --out folder's runs/, plus one retrikt.train --out folder per ablation row
FLAT = {"kd": "runs", "retrikt": "runs", "retrikt-no-relational": "no-relational"}

RETRIKT_ROWS = ("retrikt", "retrikt-store-keys", "retrikt-teacher-keys", "retrikt-no-relational")


@dataclass
class SeedStoresBench:
    task: str = arg("sst2", help="task")
    seeds: list[int] = arg([1, 2, 3], help="seeds")
    stores: str = arg("stores", help="folder holding <task>-qwen-0.5b-s<seed>[-oracle]")
    runs: str = arg("runs", help="folder holding <task>-s<seed>/<row>/ results folders")
    baselines: str = arg("benchmarks/results/compare/runs", help="grid runs with the fine-tune rows")
    teachers: str = arg("benchmarks/results/teachers/runs", help="runs with the adapted teacher rows")
    note: str = arg("", help="a line under the table (how the runs were made)")
    store_suffix: str = arg("", help="stores named <task>-qwen-0.5b-s<seed><suffix>[-oracle] (e.g. -1k)")
    name: str = arg("", help="results file stem (default seed_stores_<task>)")
    previous: str = arg("", help="an earlier seed_stores JSON: the store and oracle stats of seeds whose store "
                                 "folder is gone (stores are never committed) are taken from it, and the table says so")
    extra: list[str] = arg([], help="more rows, each 'name=label': the runs of RUNS/<name>/ (a retrikt.train --out "
                                    "folder holding every seed's run) or RUNS/<task>-s<seed>/<name>/, e.g. a training "
                                    "ablation; a name starting with kd is a kd row, any other a retrikt row")
    paired: list[str] = arg(["retrikt:kd", "retrikt:finetune", "kd:finetune"],
                            help="pairs of rows ROW_A:ROW_B (row names: kd, retrikt, an --extra name, ...) compared "
                                 "example by example under the table (retrikt.eval.paired); none = no such section")


def _find(folder: Path, task: str, method: str, seed: int) -> dict | None:
    if not folder.is_dir():
        return None
    for r in load_results(folder):
        if r["task"] == task and r["method"] == method and r["seed"] == seed:
            return r
    return None


def _run(cfg: SeedStoresBench, row: str, seed: int) -> dict | None:
    if row == "finetune":
        return _find(Path(cfg.baselines), cfg.task, "finetune", seed)
    if row == "teacher-lora":
        return _find(Path(cfg.teachers), cfg.task, "teacher-lora", seed)
    method = "kd" if row.startswith("kd") else "retrikt"
    per_seed = Path(cfg.runs) / f"{cfg.task}-s{seed}" / row
    if per_seed.is_dir():
        return _find(per_seed, cfg.task, method, seed)
    return _find(Path(cfg.runs) / FLAT.get(row, row), cfg.task, method, seed)


def _store_stats(path: Path) -> dict | None:
    mpath = path / "manifest.json"
    if not mpath.exists():
        return None
    m = json.loads(mpath.read_text())
    s, secs = m.get("stats", {}), m.get("build_seconds") or 0
    return {"entries": m["counts"]["entries"], "generated": s.get("generated"), "keep_rate": s.get("keep_rate"),
            "unfinished": s.get("unfinished"), "label_words": s.get("label_words"), "disagree": s.get("disagree"),
            "per_label": m["counts"].get("per_label"), "build_minutes": secs / 60,
            "entries_per_hour": m["counts"]["entries"] / (secs / 3600) if secs else None,
            "tokens_per_s": s.get("tokens_per_s")}


def _all_store_stats(cfg: SeedStoresBench) -> tuple[dict, dict, list[str]]:
    """{seed: stats} of the generated and the oracle stores, and which of them came from ``cfg.previous``."""
    prev = json.loads(Path(cfg.previous).read_text()) if cfg.previous else {}
    for key in ("task", "store_suffix"):  # another task's or size's stores would fill the table silently
        if prev and prev.get("config", {}).get(key, "") != getattr(cfg, key):
            raise SystemExit(f"--previous {cfg.previous} is a table of {key} {prev['config'].get(key)!r}, not "
                             f"{getattr(cfg, key)!r}")
    found, carried = {}, []
    for kind, suffix in (("stores", ""), ("oracles", "-oracle")):
        found[kind] = {}
        for s in cfg.seeds:
            stats = _store_stats(Path(cfg.stores) / f"{cfg.task}-qwen-0.5b-s{s}{cfg.store_suffix}{suffix}")
            if stats is None and prev.get(kind, {}).get(str(s)):
                stats = prev[kind][str(s)]
                carried.append(f"{kind[:-1]} seed {s}")
            found[kind][s] = stats
    return found["stores"], found["oracles"], carried


def _one_class(r: dict) -> float:
    preds = Counter(p["pred"] for p in r.get("predictions") or [])
    return max(preds.values()) / sum(preds.values()) if preds else float("nan")


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "–"
    v = np.array(vals) * 100
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def _rows(cfg: SeedStoresBench) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """(every row, the retrikt rows) with the --extra rows after the built-in retrikt ones."""
    extra = []
    for item in cfg.extra:
        name, sep, label = item.partition("=")
        if not sep or not name or not label or name in dict(ROWS):
            raise SystemExit(f"--extra {item!r}: expected 'name=label' with a name that is not a built-in row")
        extra.append((name, label))
    at = [r for r, _ in ROWS].index("kd-oracle")
    # a kd* name is read as kd runs (see _run), so it has no retrieval variants to list
    return (list(ROWS[:at]) + extra + list(ROWS[at:]),
            RETRIKT_ROWS + tuple(n for n, _ in extra if not n.startswith("kd")))


def main(argv=None) -> None:
    cfg = parse_config(SeedStoresBench, argv, description=__doc__)
    rows, retrikt_rows = _rows(cfg)
    runs = {(row, s): _run(cfg, row, s) for row, _ in rows for s in cfg.seeds}
    stores, oracles, carried = _all_store_stats(cfg)
    lines = [f"# {cfg.task}: per-seed stores and the students on them", "",
             "Every row saw only its seed's 32 labelled examples (the store, its prompt, its labeller: that seed's). "
             "Validation set, whole.", "",
             "| row | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " | mean ± std |",
             "|---|" + "---:|" * (len(cfg.seeds) + 1)]
    for row, label in rows:
        vals = [runs[row, s]["main"] if runs[row, s] else None for s in cfg.seeds]
        cells = [f"{v * 100:.1f}" if v is not None else "–" for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt([v for v in vals if v is not None])} |")
    lines += ["", "Ablations of each retrikt student (scored on the same trained student; settings picked by the same "
              "CV rule within each slice, never on validation):", "",
              "| run | variant | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " | mean ± std |",
              "|---|---|" + "---:|" * (len(cfg.seeds) + 1)]
    for row in retrikt_rows:
        names = sorted({n for s in cfg.seeds if runs[row, s] for n in runs[row, s].get("variants", {})})
        for name in names:
            vals = [runs[row, s]["variants"][name]["main"] if runs[row, s] and name in runs[row, s].get("variants", {})
                    else None for s in cfg.seeds]
            lines.append(f"| {row} | {name} | " + " | ".join(f"{v * 100:.1f}" if v is not None else "–" for v in vals)
                         + f" | {_fmt([v for v in vals if v is not None])} |")
    lines += ["", "Chosen settings and the largest one-class share of the predictions:", ""]
    for row in retrikt_rows:
        for s in cfg.seeds:
            r = runs[row, s]
            if r:
                sel = r.get("selection", {})
                lines.append(f"- {row} seed {s}: keys {sel.get('keys', 'store')}, k {sel.get('k')}, β {sel.get('beta')}, "
                             f"τ {sel.get('tau')}, CV log-loss by β {sel.get('beta_curve')}, smoothed student "
                             f"{sel.get('smoothing_curve')}; one class "
                             f"{_one_class(r):.0%}; {r.get('examples_per_s', 0):.0f} examples/s")
    lines += ["", "| store | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |", "|---|" + "---|" * len(cfg.seeds)]
    for key in ("generated", "entries", "keep_rate", "unfinished", "label_words", "disagree", "per_label",
                "build_minutes", "entries_per_hour", "tokens_per_s"):
        cells = [_cell(stores[s], key) for s in cfg.seeds]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("| oracle entries | " + " | ".join(_cell(oracles[s], "entries") for s in cfg.seeds) + " |")
    lines += _paired_lines(cfg, runs)
    if carried:
        lines += ["", f"Store stats of {', '.join(carried)} from {cfg.previous} (those store folders are gone)."]
    if cfg.note:
        lines += ["", cfg.note]
    out = run_metadata(cfg) | {"runs": {f"{row} s{s}": {k: v for k, v in (r or {}).items() if k != "predictions"}
                                        for (row, s), r in runs.items()},
                               "stores": {str(s): v for s, v in stores.items()},
                               "oracles": {str(s): v for s, v in oracles.items()}, "carried_from_previous": carried}
    stem = cfg.name or f"seed_stores_{cfg.task}"
    atomic_write_json(RESULTS / f"{stem}.json", out)
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _paired_lines(cfg: SeedStoresBench, runs: dict) -> list[str]:
    """The --paired comparisons of the table's rows, each run relabelled by its row name."""
    from retrikt.eval.paired import paired_records, paired_table, parse_pairs
    pairs = parse_pairs(cfg.paired)
    records = [{**r, "method": row, "tag": ""} for (row, _), r in runs.items() if r]
    table = paired_table(paired_records(records, pairs, [cfg.task]))
    return ["", "Paired comparisons (the same validation examples and seeds):", "", table] if table else []


def _cell(stats: dict | None, key: str) -> str:
    if not stats or stats.get(key) is None:
        return "–"
    v = stats[key]
    return f"{v:.2f}" if isinstance(v, float) and v < 10 else (f"{v:.0f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":
    main()
