"""Shared bits of the benchmark runners."""
from __future__ import annotations

import json
from pathlib import Path

from retrikt.io import peak_rss_gib  # noqa: F401  (re-exported for the runners)

RESULTS = Path(__file__).resolve().parent / "results"


def read_rows(spec: str, tool: str) -> list[dict]:
    """Rows of an earlier ``tool`` results file (``FILE`` or ``FILE:TEXT``, FILE a path or a name under results/,
    TEXT filtering the store paths), each marked with the file and the commit it was measured at (a row already
    merged from another file keeps the one it was first measured in). For stores no longer on disk."""
    path, _, text = spec.partition(":")
    path = Path(path) if Path(path).exists() else RESULTS / path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: --rows-from {spec}: cannot read {path} ({e})") from None
    rows = [r for r in data.get("rows", []) if text in str(r.get("store", ""))]
    if not rows:
        raise SystemExit(f"error: --rows-from {spec}: no row of {path} names a store containing {text!r} "
                         f"(a {tool} results file?)")
    first = {"file": path.name, "git_commit": data.get("git_commit")}
    return [r | {"measured_in": r.get("measured_in") or first} for r in rows]
