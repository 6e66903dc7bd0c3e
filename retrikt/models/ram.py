"""RAM guard: refuse to convert or load a model that cannot fit in the memory available (cgroup-aware)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from retrikt.io import RetriktError
from retrikt.models.specs import MODELS, get_spec

logger = logging.getLogger(__name__)


def available_ram_gib() -> float | None:
    """MemAvailable, capped by a cgroup v2 memory limit; None when neither can be read."""
    values = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) / 2**20)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            values.append((int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())) / 2**30)
    return min(values) if values else None


def rss_gib() -> dict[str, float]:
    """This process's resident memory now and at its peak (VmRSS / VmHWM; anonymous plus touched mmap pages)."""
    out = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key = {"VmRSS:": "rss", "VmHWM:": "peak", "RssAnon:": "anon", "RssFile:": "file"}.get(line.split()[0])
            if key:
                out[key] = int(line.split()[1]) / 2**20
    return out


def log_rss(stage: str) -> None:
    """One log line per stage, so a run's log shows where its peak memory went."""
    r = rss_gib()
    if r:
        logger.info("memory after %s: rss %.2f GiB (anon %.2f, file-backed %.2f), peak %.2f GiB", stage,
                    r.get("rss", 0), r.get("anon", 0), r.get("file", 0), r.get("peak", 0))


def ram_estimate_gib(name: str, action: str = "load", dtype: Any = "float32") -> float:
    """Peak RAM (GiB) of converting or loading ``name``, from measurements in MODELS.md and our own."""
    convert, load = get_spec(name).ram_gib
    if action == "convert":
        return convert
    return load / 2 + 0.3 if _is_16bit(dtype) else load


def _is_16bit(dtype: Any) -> bool:
    return str(dtype).removeprefix("torch.") in ("bfloat16", "bf16", "float16", "fp16", "half")


def check_ram(name: str, action: str = "load", dtype: Any = "float32") -> dict:
    """Raise RetriktError before starting work on ``name`` that cannot fit in the available RAM."""
    if name not in MODELS or os.environ.get("RETRIKT_SKIP_RAM_CHECK"):
        return {}
    need, avail = ram_estimate_gib(name, action, dtype), available_ram_gib()
    if avail is None:
        logger.warning("cannot read available memory; skipping the RAM check for %s", name)
    elif need > avail:
        raise RetriktError(f"{action} of {name} ({str(dtype).removeprefix('torch.')}) needs about {need:.1f} GiB of RAM at peak, "
                           f"only {avail:.1f} GiB is available; free memory, pick a smaller model, or set "
                           "RETRIKT_SKIP_RAM_CHECK=1 to try anyway")
    return {"needed_gib": need, "available_gib": avail}
