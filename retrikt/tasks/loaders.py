"""Readers of the original GLUE (``glue_data/<TASK>/*.tsv``) and SuperGLUE (``<Task>/*.jsonl``) files.

Files are looked up under ``<data_dir>/<glue|superglue>/<task folder>/`` (or ``<data_dir>/<task folder>/``),
matching folder and file names without regard to case, '-' or '_' (``SST-2``, ``sst2``, ``STS-B``, ``BoolQ``).
When no local file exists the split comes from the Hugging Face hub (``nyu-mll/glue`` / ``aps/super_glue``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from retrikt.io import RetriktError
from retrikt.tasks.registry import Task, canonical_split, get_task, parse_label

logger = logging.getLogger(__name__)

BENCHMARK_FOLDERS = {"glue": ("glue", "glue_data"), "superglue": ("superglue", "super_glue")}
_LABELLED_SPLITS = ("train", "validation", "validation_mismatched")


def default_data_dir() -> Path | None:
    """``$RETRIKT_DATA_DIR``, else ``../shared/data`` beside the repo root or the cwd when it exists, else None."""
    env = os.environ.get("RETRIKT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for base in (repo_root, Path.cwd()):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def _norm_name(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def _child(folder: Path, names: tuple[str, ...], want_dir: bool) -> Path | None:
    """The entry of ``folder`` whose name matches one of ``names`` ignoring case, '-' and '_' (first name wins)."""
    if not folder.is_dir():
        return None
    entries = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() == want_dir:
            entries.setdefault(_norm_name(entry.name), entry)
    for name in names:
        if _norm_name(name) in entries:
            return entries[_norm_name(name)]
    return None


def _task_folders(task: Task, data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(existing task folders, the canonical places they were looked for)."""
    folder_names = (*task.folders, task.name, *task.aliases)
    looked = [data_dir / BENCHMARK_FOLDERS[task.benchmark][0] / task.folders[0].lower(), data_dir / task.folders[0]]
    found: list[Path] = []
    for bench in (*(_child(data_dir, (b,), True) for b in BENCHMARK_FOLDERS[task.benchmark]), data_dir):
        hit = _child(bench, folder_names, True) if bench is not None else None
        if hit is not None and hit not in found:
            found.append(hit)
    return found, looked


def find_split_file(task: Task | str, split: str, data_dir: str | os.PathLike | None = None
                    ) -> tuple[Path | None, list[Path]]:
    """(the file holding ``split`` of ``task`` or None, the paths looked at)."""
    task = get_task(task)
    split = canonical_split(task, split)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is None:
        return None, []
    names = task.split_files[split]
    folders, looked = _task_folders(task, data_dir)
    for folder in folders:
        hit = _child(folder, names, False)
        if hit is not None:
            return hit, [hit]
    return None, [d / names[0] for d in (folders or looked)]


def load_split(task: Task | str, split: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Examples of one split: text fields, ``label`` (int / float; None on test files) and ``idx``."""
    task = get_task(task)
    if task.skip_reason:
        raise RetriktError(f"task {task.name} is not supported: {task.skip_reason}")
    split = canonical_split(task, split)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RetriktError(f"data dir {data_dir} does not exist (task {task.name}, split {split})")
    path, looked = find_split_file(task, split, data_dir)
    if path is None:
        return _load_from_hub_or_fail(task, split, looked)
    labelled = split in _LABELLED_SPLITS
    examples = _read_tsv(task, path, labelled) if task.file_format == "tsv" else _read_jsonl(task, path, labelled)
    logger.info("%s %s: %d examples from %s", task.name, split, len(examples), path)
    return examples


# ----------------------------------------------------------------------------------------------- file reading
def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file (BOM and '\\r' stripped); split on '\\n' only, since texts may hold U+2028 etc."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RetriktError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
                           f"{e.start})") from None
    if not text.strip():
        raise RetriktError(f"{path}, line 1: empty file, no examples")
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _tsv_header(task: Task, path: Path, first: list[str]) -> tuple[list[str], bool]:
    """(column names, whether the first line is a header). CoLA's train/dev have none; its test.tsv does."""
    if task.headerless_columns and first[0].strip().lower() != "index":
        return list(task.headerless_columns), False
    return [c.strip() for c in first], True


def _read_tsv(task: Task, path: Path, labelled: bool) -> list[dict]:
    # plain tab splitting, as GLUE's own readers do: '"' is never a quote (RTE and SST texts hold bare quotes)
    lines = _read_lines(path)
    rows = [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    header, has_header = _tsv_header(task, path, rows[0][1])
    header_line = rows[0][0]
    if has_header:
        rows = rows[1:]
    missing = [c for c in task.columns if c not in header]
    if missing:
        raise RetriktError(f"{path}, line {header_line}: no column {missing[0]!r} for task {task.name} "
                           f"(columns: {header})")
    has_label = task.label_column in header
    if labelled and not has_label:
        raise RetriktError(f"{path}, line {header_line}: no label column {task.label_column!r} for task "
                           f"{task.name} (columns: {header})")
    if not rows:
        raise RetriktError(f"{path}, line {header_line}: a header but no examples")
    pos = {c: header.index(c) for c in (*task.columns, task.label_column) if c in header}
    examples: list[dict] = []
    skipped: list[int] = []
    for n, cells in rows:
        if len(cells) != len(header):
            if task.skip_short_rows and len(cells) < len(header):
                skipped.append(n)
                continue
            raise RetriktError(f"{path}, line {n}: {len(cells)} tab-separated columns, expected {len(header)} "
                               f"({', '.join(header)})")
        ex: dict[str, Any] = {field: cells[pos[col]] for col, field in task.columns.items()}
        ex["label"] = None
        if has_label:
            raw = cells[pos[task.label_column]]
            if not raw.strip():
                if labelled:
                    raise RetriktError(f"{path}, line {n}: empty label column {task.label_column!r}")
            else:
                ex["label"] = parse_label(task, raw, f"{path}, line {n}")
        ex["idx"] = len(examples)
        examples.append(ex)
    if skipped:
        logger.warning("%s: dropped %d row(s) with too few columns (a known %s quirk; Hugging Face drops them "
                       "too), lines %s", path, len(skipped), task.name, skipped[:10])
    return examples


def _get(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(dotted)
        obj = obj[part]
    return obj


def _json_fields(task: Task, obj: dict, where: str) -> dict[str, Any]:
    ex: dict[str, Any] = {}
    for key, field in task.columns.items():
        try:
            value = _get(obj, key)
        except KeyError:
            raise RetriktError(f"{where}: no {key!r} field (task {task.name})") from None
        if not isinstance(value, str):
            raise RetriktError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
        ex[field] = value
    for key, field in task.int_fields.items():
        try:
            value = _get(obj, key)
        except KeyError:
            raise RetriktError(f"{where}: no {key!r} field (task {task.name})") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RetriktError(f"{where}: field {key!r} is {value!r}, expected an int")
        ex[field] = value
    return ex


def _json_label(task: Task, obj: dict, labelled: bool, where: str) -> int | float | None:
    if obj.get("label") is None:
        if labelled:
            raise RetriktError(f"{where}: no 'label' field (task {task.name})")
        return None
    return parse_label(task, obj["label"], where)


def _read_jsonl(task: Task, path: Path, labelled: bool) -> list[dict]:
    examples: list[dict] = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RetriktError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise RetriktError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if task.name == "multirc":
            examples.extend(_multirc_answers(task, obj, labelled, where, start=len(examples)))
            continue
        ex = _json_fields(task, obj, where)
        ex["label"] = _json_label(task, obj, labelled, where)
        ex["idx"] = len(examples)
        examples.append(ex)
    if not examples:
        raise RetriktError(f"{path}, line 1: no examples")
    return examples


def _multirc_answers(task: Task, obj: dict, labelled: bool, where: str, start: int) -> list[dict]:
    """One paragraph line -> one example per (question, candidate answer), keeping the ids for EM."""
    try:
        passage = obj["passage"]
        text, questions = passage["text"], passage["questions"]
    except (KeyError, TypeError):
        raise RetriktError(f"{where}: expected {{'passage': {{'text': ..., 'questions': [...]}}}} "
                           "(SuperGLUE MultiRC format)") from None
    out: list[dict] = []
    for qi, q in enumerate(questions):
        if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not isinstance(q.get("answers"), list):
            raise RetriktError(f"{where}: passage.questions[{qi}] needs a 'question' string and an 'answers' list")
        for ai, a in enumerate(q["answers"]):
            if not isinstance(a, dict) or not isinstance(a.get("text"), str):
                raise RetriktError(f"{where}: passage.questions[{qi}].answers[{ai}] has no 'text' string")
            label = _json_label(task, a, labelled, f"{where}, passage.questions[{qi}].answers[{ai}]")
            out.append({"paragraph": text, "question": q["question"], "answer": a["text"], "label": label,
                        "paragraph_idx": obj.get("idx", 0), "question_idx": q.get("idx", qi),
                        "answer_idx": a.get("idx", ai), "idx": start + len(out)})
    return out


# ----------------------------------------------------------------------------------------------- hub fallback
def _load_from_hub_or_fail(task: Task, split: str, looked: list[Path]) -> list[dict]:
    where = ", ".join(str(p) for p in looked) or "nowhere (no data dir: set $RETRIKT_DATA_DIR or pass data_dir)"
    hf_split = task.hf_splits.get(split, split)
    logger.info("%s %s: no local file (looked at %s); trying the Hugging Face hub %s/%s",
                task.name, split, where, task.hf_path, task.hf_config)
    try:
        rows = _hub_rows(task.hf_path, task.hf_config, hf_split)
    except Exception as e:  # noqa: BLE001 - offline, missing package, unknown config: all mean "not available"
        raise RetriktError(f"task {task.name}, split {split}: no local file (looked at {where}) and the "
                           f"Hugging Face hub fallback {task.hf_path}/{task.hf_config} [{hf_split}] failed: "
                           f"{type(e).__name__}: {str(e)[:300]}") from None
    return [_from_hub_row(task, row, i) for i, row in enumerate(rows)]


def _hub_rows(path: str, config: str, split: str) -> list[dict]:
    import datasets
    return list(datasets.load_dataset(path, config, split=split))


def _from_hub_row(task: Task, row: dict, i: int) -> dict:
    ex: dict[str, Any] = {f: row[f] for f in task.text_fields}
    for field in task.int_fields.values():
        ex[field] = row[field]
    if task.name == "multirc":
        ids = row["idx"]
        ex.update(paragraph_idx=ids["paragraph"], question_idx=ids["question"], answer_idx=ids["answer"])
    label = row.get("label")
    # the hub marks unlabelled test rows with -1
    ex["label"] = None if label is None or label == -1 else (float(label) if task.is_regression else int(label))
    ex["idx"] = i
    return ex
