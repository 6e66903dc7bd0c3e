"""Crash-safe files: atomic writes, checksums, manifests, folder locks and run metadata.

Every artefact retrikt writes (stores, adapters, caches, results) goes through these helpers so that a
killed process leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest.sha256"


class RetriktError(Exception):
    """An error caused by the user's input or environment, with a message that names the problem."""


class IntegrityError(RetriktError):
    """An artefact on disk does not match its manifest (corrupted, truncated or edited)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync, so a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by :func:`append_jsonl`; a torn last line (crash mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                logger.warning("%s: dropping torn last line %d", path, i)
                continue
            raise RetriktError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike, meta: dict, files: list[str]) -> dict:
    """Write ``folder/manifest.json`` with ``meta`` plus the sha256 and size of each file in ``files``."""
    folder = Path(folder)
    checksums = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
                 for name in files}
    manifest = dict(meta, files=checksums)
    atomic_write_json(folder / MANIFEST, manifest)
    # The manifest checks every file but itself: its own hash sits beside it (absent in older artefacts).
    atomic_write_text(folder / MANIFEST_HASH, sha256_file(folder / MANIFEST) + "\n")
    return manifest


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict:
    """Read ``folder/manifest.json``; with ``verify``, check every listed file's size and sha256."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise IntegrityError(f"{folder}: no {MANIFEST} (not a retrikt artefact, or an unfinished write)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{mpath}: manifest is not valid JSON ({e})") from None
    if verify:
        own = folder / MANIFEST_HASH
        if own.exists() and own.read_text(encoding="utf-8", errors="replace").strip() != sha256_file(mpath):
            raise IntegrityError(f"{mpath}: edited after it was written (its sha256 differs from {MANIFEST_HASH})")
        for name, info in manifest.get("files", {}).items():
            p = folder / name
            if not p.exists():
                raise IntegrityError(f"{p}: listed in the manifest but missing")
            if p.stat().st_size != info["bytes"]:
                raise IntegrityError(f"{p}: size {p.stat().st_size} bytes, manifest says {info['bytes']} "
                                     "(truncated or edited)")
            if sha256_file(p) != info["sha256"]:
                raise IntegrityError(f"{p}: sha256 does not match the manifest (corrupted or edited)")
    return manifest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.lock`` (with our pid) for the block; refuse if a live process holds it.

    A lock left by a dead process is taken over, so a killed run can be resumed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or "0")
            except (ValueError, FileNotFoundError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                raise RetriktError(f"{folder} is in use by process {owner} (lock file {lock}); "
                                   "wait for it to finish or stop it") from None
            logger.warning("%s: taking over a stale lock from process %s", folder, owner)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)


@functools.cache
def git_commit() -> str | None:
    """The commit of the retrikt checkout (with '-dirty' if its code has uncommitted changes), or None. Read once
    per process (entry points read it when they parse their config): the code a run executes is the code it started
    with, even if the checkout moves on before the run writes its results."""
    return commit_of(Path(__file__).resolve().parent.parent)


# Results and prose change while runs go on (tables are rewritten after each run); they are not the code a run
# executes, and counting them marked most results '-dirty' whatever the code's state.
NOT_CODE = (":(exclude)benchmarks/results", ":(exclude)*.md", ":(exclude)*.png")


def commit_of(root: Path) -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    from importlib import metadata
    names = ["retrikt", "torch", "transformers", "peft", "trl", "sentence-transformers", "datasets",
             "faiss-cpu", "faiss-gpu", "accelerate", "scikit-learn", "numpy"]
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


def run_metadata(config: Any = None, seeds: Any = None) -> dict:
    """What every results JSON carries: the full config, git commit, seeds and library versions."""
    import dataclasses
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return {"config": config, "seeds": seeds, "git_commit": git_commit(), "versions": library_versions()}
