"""One Markdown table from ``retrikt.train`` results folders (runs made outside ``retrikt.compare``).

    python -m benchmarks.summarise --runs benchmarks/results/parametric/runs --name parametric \\
        --title "Parametric transfer vs LoRA, qwen-1.5b -> qwen-0.5b" --regen "python -m retrikt.train ..."

Rows are (method, student) with mean ± std over the seeds found; each row's label may be prefixed per folder with
``--labels`` (e.g. which store a kd run used). Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

from retrikt.config import arg, parse_config
from retrikt.eval import load_results, markdown_table, summarise
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS


@dataclass
class SummariseBench:
    runs: list[str] = arg([], help="results folders written by retrikt.train (--out)")
    labels: list[str] = arg([], help="one label per folder, prefixed to its rows' method (default: none)")
    tasks: list[str] = arg([], help="keep only these tasks (default: all found)")
    methods: list[str] = arg([], help="keep only these methods, before labelling (default: all found)")
    name: str = arg("summary", help="results file stem")
    title: str = arg("Results", help="table heading")
    regen: str = arg("", help="the commands that produced the runs, quoted in the table's footer")


def collect(cfg: SummariseBench) -> list[dict]:
    if cfg.labels and len(cfg.labels) != len(cfg.runs):
        sys.exit(f"--labels: {len(cfg.labels)} given for {len(cfg.runs)} --runs folders")
    results = []
    for i, folder in enumerate(cfg.runs):
        for r in load_results(folder):
            if (cfg.tasks and r["task"] not in cfg.tasks) or (cfg.methods and r["method"] not in cfg.methods):
                continue
            if cfg.labels:
                r = {**r, "method": f"{cfg.labels[i]} {r['method']}"}
            results.append({k: v for k, v in r.items() if k != "predictions"})
    if not results:
        sys.exit(f"no results in {cfg.runs}")
    return results


def table_command(cfg: SummariseBench) -> str:
    parts = ["python -m benchmarks.summarise --runs", *cfg.runs]
    for flag, values in (("--labels", cfg.labels), ("--tasks", cfg.tasks), ("--methods", cfg.methods)):
        if values:
            parts += [flag, *values]
    return " ".join(parts + ["--name", cfg.name])


def main(argv=None) -> None:
    cfg = parse_config(SummariseBench, argv, description=__doc__)
    results = collect(cfg)
    tasks = sorted({r["task"] for r in results})
    rows = summarise(results)
    commits = sorted({r.get("git_commit", "?") for r in results})
    meta = run_metadata(config=asdict(cfg), seeds=sorted({r["seed"] for r in results}))
    atomic_write_json(RESULTS / f"{cfg.name}.json", {**meta, "rows": rows, "runs": results})
    md = (f"# {cfg.title}\n\n{markdown_table(rows, tasks)}\n\nMain metric x100, mean ± std over seeds "
          f"{meta['seeds']}; ex/s on the shared 2-core CPU. Runs from commits "
          + ", ".join(f"`{c[:12]}`" for c in commits) + ".\n"
          + (f"Runs: `{cfg.regen}`. " if cfg.regen else "")
          + f"Table: `{table_command(cfg)}`\n")
    atomic_write_text(RESULTS / f"{cfg.name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
