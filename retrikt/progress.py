"""Progress that shows where output goes: a tqdm bar on a terminal, log lines with rate and ETA elsewhere.

tqdm's ``disable=None`` hides the bar when stderr is not a terminal, so a run writing to a log file (nohup, CI,
``make demo > log``) said nothing for an hour. :func:`progress` keeps the bar on terminals and otherwise logs
``desc: done/total (pct), rate, ETA`` at most every ``every`` seconds, and once at the end if the loop ran that long.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("retrikt.progress")


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LogProgress:
    """The subset of tqdm's interface the package uses: iterate, update, set_postfix, close, context manager."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", every: float = 30.0):
        self.iterable, self.desc, self.every = iterable, desc, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            logger.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}, {rate:.3g}/s, elapsed {_duration(elapsed)}{eta}{extra}"

    def close(self) -> None:
        now = time.monotonic()
        if now - self.start >= self.every and self.last != now:
            logger.info("%s (done)", self.line(now))
        self.last = now


def progress(iterable=None, total: int | None = None, desc: str = "", disable: bool | None = None,
             every: float = 30.0, **tqdm_kw):
    """``tqdm(...)`` on a terminal; :class:`LogProgress` otherwise. ``disable=True`` silences both."""
    if disable:
        return tqdm(iterable, total=total, desc=desc, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, **tqdm_kw)
    return LogProgress(iterable, total=total, desc=desc, every=every)
