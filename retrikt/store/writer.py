"""The resumable, crash-safe :class:`StoreWriter`: one parquet part per batch, merged and indexed by finalize()."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import save_file

from retrikt.io import (MANIFEST, RetriktError, atomic_path, atomic_write_json, folder_lock, git_commit, library_versions,
                        write_manifest)
from retrikt.store.index import build_index_report, index_params, save_index
from retrikt.store.schema import (EMBEDDINGS, ENTRIES, ENTRY_KEYS, INDEX, PARTS, SCHEMA_VERSION, STORE_KIND,
                                  WRITER_STATE, _check_embeddings, _check_entry, _check_meta, _entries_table,
                                  _table_embeddings, _table_entries)

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"^part-(\d+)\.parquet$")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        _fsync(tmp)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate parts; if any part holds float labels (regression), all labels become float."""
    if any(pa.types.is_floating(t.schema.field("label").type) for t in tables):
        tables = [t.set_column(t.schema.get_field_index("label"), "label", t.column("label").cast(pa.float64()))
                  for t in tables]
    return pa.concat_tables(tables)


class StoreWriter:
    """Writes a store batch by batch; a killed build resumes by skipping :meth:`done_batches`.

    ``meta``: ``{"task", "teacher", "embedder": {"name", "dim", "normalize"}, "config": {...}}``. Holds the
    folder lock from construction until :meth:`finalize` / :meth:`close` (use it as a context manager).
    """

    def __init__(self, folder: str | os.PathLike, meta: dict, reading: bool = False):
        """``reading``: opened to read a finished shard back (the merge), not to resume writing it, so the log does
        not announce a resume."""
        self.folder, self._reading = Path(folder), reading
        self.meta = _check_meta(meta)
        self.dim = self.meta["embedder"]["dim"]
        self.parts = self.folder / PARTS
        self._closed = False
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(folder_lock(self.folder))
        try:
            self._resume_state()
        except BaseException:
            self._stack.close()
            raise
        self._emb_cache: dict[int, np.ndarray] | None = None

    def _resume_state(self) -> None:
        state = self.folder / WRITER_STATE
        if (self.folder / MANIFEST).exists() and not state.exists():
            raise RetriktError(f"{self.folder} holds a finished store without its build state ({WRITER_STATE}, "
                               f"{PARTS}/); write to a new folder")
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob(".*.tmp"):  # left by a process killed mid-write; we hold the lock
            tmp.unlink()
        if state.exists():
            try:
                old = json.loads(state.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RetriktError(f"{state}: not valid JSON ({e}); delete it to resume with the given meta") from None
            for key in ("task", "teacher", "embedder"):
                if old.get(key) != self.meta[key]:
                    raise RetriktError(f"{state}: this build used {key} {old.get(key)!r}, not {self.meta[key]!r}; "
                                       "resume with the same one or write to a new folder")
            # parts drawn for another seed's k-shot set, from another source, or labelled by another labeller must
            # not mix into one store; builds that predate these keys do not record them
            for key in ("seed", "source", "kshot_idx", "labeller"):
                if key in old and key in self.meta and old[key] != self.meta[key]:
                    raise RetriktError(f"{state}: this build used another {key} ({str(old[key])[:40]}, now "
                                       f"{str(self.meta[key])[:40]}); resume with the same one or write to a new "
                                       "folder")
            if old.get("draw", 0) != self.meta.get("draw", 0):  # builds before --draw drew the seed's own: 0
                raise RetriktError(f"{state}: this build is draw {old.get('draw', 0)} of its seed's samples, not "
                                   f"draw {self.meta.get('draw', 0)}; resume with the same --draw or write to a new "
                                   "folder")
            if old.get("config") != self.meta["config"]:
                logger.warning("%s: resuming with a different config; the manifest records the new one", state)
            if not self._reading:
                logger.info("%s: resuming, %d batches already written", self.folder, len(self.done_batches()))
        atomic_write_json(state, self.meta)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder lock; the parts stay, so another writer can resume."""
        self._stack.close()
        self._closed = True

    def _require_open(self) -> None:
        if self._closed:
            raise RetriktError(f"StoreWriter for {self.folder} is closed (finalize() or close() was called)")

    def _part(self, batch_id: int) -> Path:
        return self.parts / f"part-{batch_id:06d}.parquet"

    def done_batches(self) -> set[int]:
        return {int(m.group(1)) for p in self.parts.iterdir() if (m := _PART_RE.match(p.name))}

    def _read_part(self, batch_id: int, columns: list[str] | None = None) -> pa.Table:
        path = self._part(batch_id)
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise RetriktError(f"{path}: unreadable part ({e}); delete it to regenerate batch {batch_id}") from None
        if columns is None or "embedding" in columns:
            width = table.schema.field("embedding").type.list_size
            if width != self.dim:
                raise RetriktError(f"{path}: embeddings have dim {width}, the store's embedder has {self.dim}")
        return table

    def add_batch(self, batch_id: int, entries: list[dict], embeddings, overwrite: bool = False) -> bool:
        """Write batch ``batch_id`` as one part, atomically. An empty batch is recorded as done.

        A batch that is already written is kept (returns False) unless ``overwrite``, so re-running a
        batch after a crash never duplicates entries.
        """
        self._require_open()
        if not isinstance(batch_id, (int, np.integer)) or batch_id < 0:
            raise RetriktError(f"batch_id must be an int >= 0, got {batch_id!r}")
        batch_id = int(batch_id)
        path = self._part(batch_id)
        if path.exists() and not overwrite:
            logger.warning("%s: batch %d is already written; keeping it", self.folder, batch_id)
            return False
        for i, e in enumerate(entries):
            _check_entry(e, f"batch {batch_id}, entry {i}")
        x = _check_embeddings(embeddings, len(entries), self.dim, self.meta["embedder"]["normalize"],
                              f"batch {batch_id}")
        _write_parquet(_entries_table(entries, x, batch_id), path)
        if self._emb_cache is not None:
            self._emb_cache[batch_id] = x
        return True

    def discard_batches(self, keep: set[int]) -> list[int]:
        """Delete the parts of written batches not in ``keep``; returns their ids."""
        self._require_open()
        gone = sorted(self.done_batches() - set(keep))
        for b in gone:
            self._part(b).unlink()
            if self._emb_cache is not None:
                self._emb_cache.pop(b, None)
        return gone

    def accepted_embeddings(self) -> np.ndarray:
        """Embeddings of every written entry, in batch order ([n, dim] float32), for deduplication."""
        if self._emb_cache is None:
            self._emb_cache = {b: _table_embeddings(self._read_part(b, ["embedding"]), self.dim)
                               for b in self.done_batches()}
        blocks = [self._emb_cache[b] for b in sorted(self._emb_cache)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)

    def accepted_entries(self) -> list[dict]:
        """Every written entry, in batch order."""
        return [e for b in sorted(self.done_batches()) for e in _table_entries(self._read_part(b, list(ENTRY_KEYS)))]

    def finalize(self, index_kind: str = "auto", target_recall: float = 0.95, extra_meta: dict | None = None,
                 **index_kwargs) -> Path:
        """Merge the parts into the store files, build the index, write the manifest last; release the lock.

        ``extra_meta`` (e.g. build statistics) is added to the manifest. ``index_kwargs`` go to
        :func:`retrikt.store.index.build_index` (nlist, m, nprobe, ef_search, ...).
        """
        self._require_open()
        if set(extra_meta or {}) & {"task", "teacher", "embedder"}:
            raise RetriktError("finalize extra_meta may not change task / teacher / embedder (fixed by the writer)")
        extra = _check_meta(dict(self.meta, **(extra_meta or {})), "finalize extra_meta")
        (self.folder / MANIFEST).unlink(missing_ok=True)  # the store is inconsistent until the new manifest lands
        batches = sorted(self.done_batches())
        table = _concat([self._read_part(b) for b in batches]) if batches else None
        if table is None or table.num_rows == 0:
            raise RetriktError(f"{self.folder}: nothing to finalize ({len(batches)} batches, 0 entries)")
        emb = _table_embeddings(table, self.dim)
        _write_parquet(table.drop_columns(["embedding"]), self.folder / ENTRIES)
        with atomic_path(self.folder / EMBEDDINGS) as tmp:
            save_file({"embeddings": emb}, str(tmp))
            _fsync(tmp)
        index, tuning = build_index_report(emb, index_kind, "ip", target_recall=target_recall, **index_kwargs)
        params = index_params(index)
        if tuning:
            params["tuning"] = tuning
        save_index(index, self.folder / INDEX)
        manifest = dict(schema_version=SCHEMA_VERSION, kind=STORE_KIND, **extra,
                        counts=_counts(table, len(batches)), index={"kind": params["kind"], "params": params},
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), git_commit=git_commit(),
                        # sampling follows the libraries too: a rebuild under other versions is another store
                        versions=library_versions())
        write_manifest(self.folder, manifest, [ENTRIES, EMBEDDINGS, INDEX])
        logger.info("%s: finalized %d entries from %d batches, %s index", self.folder, table.num_rows,
                    len(batches), params["kind"])
        self.close()
        return self.folder


def _counts(table: pa.Table, n_batches: int) -> dict:
    out: dict = {"entries": table.num_rows, "batches": n_batches}
    labels = table.column("label")
    if pa.types.is_integer(labels.type):
        counts = Counter(labels.to_pylist())
        out["per_label"] = {str(k): counts[k] for k in sorted(counts, key=lambda v: (v is None, v or 0))}
    else:
        vals = np.array([v for v in labels.to_pylist() if v is not None], dtype=np.float64)
        out["per_label"] = None
        out["label_range"] = [float(vals.min()), float(vals.max())] if len(vals) else None
    return out
