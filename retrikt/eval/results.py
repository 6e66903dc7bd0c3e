"""Results on disk: one JSON file per (task, method, student, seed) run, and mean ± std tables over seeds."""
from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from retrikt.io import RetriktError, atomic_write_json

logger = logging.getLogger(__name__)


def run_name(task: str, method: str, student: str, seed: int, tag: str = "") -> str:
    safe = lambda s: str(s).replace("/", "_")  # noqa: E731 - hub ids and paths contain slashes
    return f"{safe(task)}__{safe(method)}{('-' + tag) if tag else ''}__{safe(student)}__seed{seed}"


def save_result(folder: str | Path, result: dict) -> Path:
    path = Path(folder) / (run_name(result["task"], result["method"], result["student"], result["seed"],
                                    result.get("tag", "")) + ".json")
    atomic_write_json(path, result)
    return path


def load_results(folder: str | Path) -> list[dict]:
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RetriktError(f"{p}: not a valid results file ({e})") from None
        if isinstance(r, dict) and {"task", "method", "main"} <= set(r):
            out.append(r)
    return out


def fmt_mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values) * scale
    if len(values) == 1:  # one seed has no spread: "± 0.0" would claim a measured one
        return f"{m:.1f}"
    return f"{m:.1f} ± {statistics.stdev(values) * scale:.1f}"


def summarise(results: list[dict]) -> list[dict]:
    """One row per (method label, student): mean ± std of the main metric per task, plus size and speed."""
    from retrikt.eval.baselines import collapsed
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    one_class: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    info: dict[tuple, dict] = {}
    for r in results:
        key = (r["method"] + (f"-{r['tag']}" if r.get("tag") else ""), r["student"])
        groups[key][r["task"]].append(r["main"])
        one_class[key][r["task"]] += collapsed(r)
        i = info.setdefault(key, {"params": r.get("num_parameters"), "eps": []})
        i["eps"].append(r.get("examples_per_s") or 0.0)
    rows = []
    for key, per_task in groups.items():
        means = {t: statistics.fmean(v) for t, v in per_task.items()}
        rows.append({"method": key[0], "student": key[1], "per_task": dict(per_task),
                     "one_class": {t: n for t, n in one_class[key].items() if n},
                     "average": statistics.fmean(means.values()), "num_parameters": info[key]["params"],
                     "examples_per_s": statistics.fmean(info[key]["eps"]),
                     "seeds": max(len(v) for v in per_task.values())})
    return sorted(rows, key=lambda r: -r["average"])


def task_average(row: dict, tasks: list[str]) -> float | None:
    """Mean over ``tasks`` of the per-task means, or None if the row lacks one of them: an average over fewer tasks
    is not comparable with the other rows'."""
    if not all(row["per_task"].get(t) for t in tasks):
        return None
    return statistics.fmean(statistics.fmean(row["per_task"][t]) for t in tasks)


def markdown_table(rows: list[dict], tasks: list[str]) -> str:
    """Rows with every task first, by average; rows missing a task after them, their average left blank."""
    head = "| method | student | " + " | ".join(tasks) + " | avg | params | ex/s |"
    sep = "|" + "---|" * (len(tasks) + 5)
    lines = [head, sep]
    avgs = [task_average(r, tasks) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (avgs[i] is None, -(avgs[i] or 0.0)))
    marked = False
    for i in order:
        r = rows[i]
        flags = r.get("one_class") or {}
        cells = [fmt_mean_std(r["per_task"].get(t, [])) + (f" †{flags[t]}" if flags.get(t) else "") for t in tasks]
        marked |= any(flags.get(t) for t in tasks)
        have = sum(bool(r["per_task"].get(t)) for t in tasks)
        avg = f"{avgs[i] * 100:.1f}" if avgs[i] is not None else f"– ({have}/{len(tasks)} tasks)"
        params = f"{r['num_parameters'] / 1e6:.1f}M" if r.get("num_parameters") else "–"
        speed = f"{r['examples_per_s']:.1f}" if r.get("examples_per_s") else "–"
        lines.append(f"| {r['method']} | {r['student']} | " + " | ".join(cells) + f" | {avg} | {params} | {speed} |")
    if marked:
        lines += ["", "†N: N runs of that cell predicted one class for at least 90% of the validation examples."]
    return "\n".join(lines)
