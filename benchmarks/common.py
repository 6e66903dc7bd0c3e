"""Shared bits of the benchmark runners."""
from __future__ import annotations

import resource
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)
