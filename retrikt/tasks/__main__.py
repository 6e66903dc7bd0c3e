"""``python -m retrikt.tasks [--data-dir D]``: one row per registered task and which local files exist."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from retrikt.config import arg, parse_config
from retrikt.io import RetriktError
from retrikt.tasks.loaders import default_data_dir, find_split_file
from retrikt.tasks.registry import Task, list_tasks


@dataclass
class TasksCliConfig:
    data_dir: str | None = arg(None, help="folder holding glue/ and superglue/ (default: $RETRIKT_DATA_DIR, "
                                          "else ../shared/data beside the repo or the cwd)")


def _found(task: Task, data_dir: str | None) -> str:
    if task.skip_reason:
        return f"skipped: {task.skip_reason}"
    found = [s for s in ("train", "validation") if find_split_file(task, s, data_dir)[0] is not None]
    return "+".join(found) if found else "- (Hugging Face hub fallback)"


def _row(task: Task, data_dir: str | None) -> list[str]:
    if task.is_regression:
        labels = "score (regression)"
    else:
        labels = "/".join(task.label_names) if task.label_names else "-"
    return [task.name, task.benchmark, labels, task.metrics[0], _found(task, data_dir)]


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TasksCliConfig, argv, description=__doc__)
    data_dir = cfg.data_dir if cfg.data_dir is not None else default_data_dir()
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RetriktError(f"data dir {data_dir} does not exist")
    print(f"data dir: {data_dir or '(none found)'}")
    rows = [["name", "benchmark", "labels", "metric", "found"]]
    rows += [_row(t, str(data_dir) if data_dir else None) for t in list_tasks()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
