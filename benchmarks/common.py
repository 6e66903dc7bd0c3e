"""Shared bits of the benchmark runners."""
from __future__ import annotations

from pathlib import Path

from retrikt.io import peak_rss_gib  # noqa: F401  (re-exported for the runners)

RESULTS = Path(__file__).resolve().parent / "results"

