"""The knowledge store on disk: a resumable :class:`StoreWriter` and a verified, read-only :class:`Store`.

Layout of a store folder::

    parts/part-000042.parquet   one per generated batch: entries + embeddings, written atomically (kept for resume)
    writer.json                 task / teacher / embedder of the build, to refuse resuming with a different one
    entries.parquet             all entries in batch order (row i = index id i)
    embeddings.safetensors      {"embeddings": float32 [n, dim]}, L2-normalised
    index.faiss                 FAISS index over the embeddings
    manifest.json               written last: schema, provenance, counts, index params, sha256 of each file

An entry is ``{"fields": {name: str}, "label": int | float | None, "soft_label": [float], "meta": {...}}``.
"""
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
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from retrikt.io import (MANIFEST, IntegrityError, RetriktError, atomic_path, atomic_write_json, folder_lock,
                        git_commit, read_manifest, sha256_file, write_manifest)
from retrikt.store.index import (_as_matrix, build_index_report, index_params, load_index, save_index,
                                 set_search_params, to_gpu)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STORE_KIND = "retrikt-store"
ENTRIES, EMBEDDINGS, INDEX, PARTS, WRITER_STATE = ("entries.parquet", "embeddings.safetensors", "index.faiss",
                                                   "parts", "writer.json")
ENTRY_KEYS = ("fields", "label", "soft_label", "meta")
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
_NORM_TOL = 1e-3


def _embedder_spec(e) -> dict:
    """Normalise an embedder description (a name, or a dict with name / dim / normalize) to a dict."""
    if isinstance(e, str):
        return {"name": e}
    if isinstance(e, dict) and isinstance(e.get("name"), str):
        return dict(e)
    raise RetriktError(f"embedder must be a name or a dict with 'name' (and 'dim', 'normalize'), got {e!r}")


_RESERVED = ("schema_version", "kind", "counts", "index", "created", "git_commit", "files")


def _check_meta(meta: dict, where: str = "store meta") -> dict:
    """Validate the writer's meta; keys beyond task / teacher / embedder / config are kept as given."""
    if not isinstance(meta, dict):
        raise RetriktError(f"{where} must be a dict, got {type(meta).__name__}")
    missing = [k for k in ("task", "teacher", "embedder") if k not in meta]
    if missing:
        raise RetriktError(f"{where} lacks {', '.join(missing)} (needs task, teacher, embedder, config)")
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise RetriktError(f"{where}: key(s) {', '.join(clash)} are written by the store itself")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise RetriktError(f"{where} is not JSON-able ({e})") from None
    emb = _embedder_spec(meta["embedder"])
    if not isinstance(emb.get("dim"), int) or emb["dim"] < 1:
        raise RetriktError(f"{where}: embedder needs an integer 'dim' >= 1, got {emb.get('dim')!r}")
    emb = {"name": emb["name"], "dim": emb["dim"], "normalize": bool(emb.get("normalize", True))}
    return dict(meta, task=str(meta["task"]), teacher=str(meta["teacher"]), embedder=emb,
                config=dict(meta.get("config") or {}))


def _check_entry(e, where: str) -> None:
    if not isinstance(e, dict):
        raise RetriktError(f"{where}: an entry must be a dict, got {type(e).__name__}")
    unknown = sorted(set(e) - set(ENTRY_KEYS))
    if unknown:
        raise RetriktError(f"{where}: unknown key(s) {', '.join(unknown)}; an entry has {', '.join(ENTRY_KEYS)}")
    fields = e.get("fields")
    if not isinstance(fields, dict) or not fields or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise RetriktError(f"{where}: 'fields' must be a non-empty dict of str -> str, got {fields!r}")
    label = e.get("label")
    if label is not None and not isinstance(label, (int, float, np.integer, np.floating)):
        raise RetriktError(f"{where}: 'label' must be an int, a float or None, got {label!r}")
    soft = e.get("soft_label") or []
    if not all(isinstance(p, (int, float, np.integer, np.floating)) for p in soft):
        raise RetriktError(f"{where}: 'soft_label' must be a list of numbers, got {soft!r}")
    try:
        json.dumps(e.get("meta") or {})
    except (TypeError, ValueError) as err:
        raise RetriktError(f"{where}: 'meta' is not JSON-able ({err})") from None


def _check_embeddings(embeddings, n: int, dim: int, normalize: bool, where: str) -> np.ndarray:
    x = _as_matrix(embeddings, f"{where}: embeddings", dim) if n else np.zeros((0, dim), np.float32)
    if len(x) != n:
        raise RetriktError(f"{where}: {n} entries but {len(x)} embedding rows")
    if not np.isfinite(x).all():
        raise RetriktError(f"{where}: embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if normalize and n and np.abs(norms - 1).max() > _NORM_TOL:
        raise RetriktError(f"{where}: embeddings must be L2-normalised (norms range {norms.min():.4f}.."
                           f"{norms.max():.4f}); the embedder is declared with normalize=True")
    return x


def _entries_table(entries: list[dict], embeddings: np.ndarray, batch_id: int) -> pa.Table:
    labels = [e.get("label") for e in entries]
    integral = all(v is None or isinstance(v, (int, np.integer)) for v in labels)
    label = pa.array([None if v is None else (int(v) if integral else float(v)) for v in labels],
                     pa.int64() if integral else pa.float64())
    dim = embeddings.shape[1]
    return pa.table({
        "batch_id": pa.array([batch_id] * len(entries), pa.int64()),
        "fields": pa.array([list(e["fields"].items()) for e in entries], pa.map_(pa.string(), pa.string())),
        "label": label,
        "soft_label": pa.array([[float(p) for p in e.get("soft_label") or []] for e in entries],
                               pa.list_(pa.float64())),
        "meta": pa.array([json.dumps(e.get("meta") or {}, sort_keys=True) for e in entries], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    })


def _table_entries(table: pa.Table) -> list[dict]:
    cols = table.select(list(ENTRY_KEYS)).to_pydict()
    return [{"fields": dict(f), "label": lab, "soft_label": s, "meta": json.loads(m)}
            for f, lab, s, m in zip(cols["fields"], cols["label"], cols["soft_label"], cols["meta"])]


def _table_embeddings(table: pa.Table, dim: int) -> np.ndarray:
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


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

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
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
            if old.get("config") != self.meta["config"]:
                logger.warning("%s: resuming with a different config; the manifest records the new one", state)
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
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), git_commit=git_commit())
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


def _check_schema(manifest: dict, mpath: Path) -> None:
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError(f"{mpath}: schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise RetriktError(f"{mpath}: schema_version {version} is newer than this retrikt reads "
                           f"(up to {SCHEMA_VERSION}); upgrade retrikt to open this store")
    if version < 1:
        raise RetriktError(f"{mpath}: unknown schema_version {version} (this retrikt reads 1..{SCHEMA_VERSION})")
    if manifest.get("kind") != STORE_KIND:
        raise RetriktError(f"{mpath}: not a knowledge store (kind {manifest.get('kind')!r}, want {STORE_KIND!r})")
    for key in ("embedder", "counts", "index", "files"):
        if not isinstance(manifest.get(key), dict):
            raise IntegrityError(f"{mpath}: '{key}' is missing or not a mapping")
    for name in (ENTRIES, EMBEDDINGS, INDEX):
        if name not in manifest["files"]:
            raise IntegrityError(f"{mpath}: does not list {name}")


def _check_embedder(manifest: dict, expected, mpath: Path) -> None:
    if expected is None:
        return
    want, have = _embedder_spec(expected), manifest["embedder"]
    if want["name"] != have.get("name") or ("dim" in want and want["dim"] != have.get("dim")):
        raise RetriktError(f"{mpath}: store was built with embedder {have.get('name')!r} (dim {have.get('dim')}), "
                           f"but {want['name']!r} (dim {want.get('dim', '?')}) was expected; queries from a "
                           "different embedder would retrieve nonsense")


class Store:
    """A finished store, read-only. Open with :meth:`Store.open`."""

    def __init__(self, folder: Path, manifest: dict, checksum: str, table: pa.Table, embeddings: np.ndarray,
                 index):
        self.folder, self.manifest, self.checksum = folder, manifest, checksum
        self.table, self.embeddings, self.index = table, embeddings, index

    @classmethod
    def open(cls, folder: str | os.PathLike, expected_embedder=None, verify: bool = True,
             use_gpu: bool = True) -> "Store":
        """Open and check a store: schema, embedder (a name or {"name", "dim"}), sha256 of every file when
        ``verify``, and that the parquet, embeddings and index hold the same number of rows."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RetriktError(f"{folder}: no such store folder")
        mpath = folder / MANIFEST
        manifest = read_manifest(folder, verify=False)
        _check_schema(manifest, mpath)
        _check_embedder(manifest, expected_embedder, mpath)
        if verify:
            read_manifest(folder, verify=True)
        checksum = sha256_file(mpath)
        table, emb, index = _load_files(folder, manifest)
        params = manifest["index"].get("params", {})
        if "nprobe" in params or "ef_search" in params:
            set_search_params(index, nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
        if use_gpu:
            index = to_gpu(index)
        logger.info("opened store %s: %d entries, %s index, embedder %s", folder, len(emb), params.get("kind"),
                    manifest["embedder"].get("name"))
        return cls(folder, manifest, checksum, table, emb, index)

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return (f"Store({str(self.folder)!r}, task={self.task!r}, entries={len(self)}, "
                f"embedder={self.embedder['name']!r})")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def task(self) -> str:
        return self.manifest.get("task")

    @property
    def embedder(self) -> dict:
        return self.manifest["embedder"]

    def search(self, query_embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (k capped at the store size) by inner product: (scores [q, k], ids [q, k]).

        An approximate index may return id -1 (with score -inf) where it found fewer than k neighbours."""
        if int(k) < 1:
            raise RetriktError(f"search: k must be >= 1, got {k}")
        q = _as_matrix(query_embeddings, "query embeddings")
        if q.shape[1] != self.dim:
            raise RetriktError(f"query embeddings have dim {q.shape[1]}, but store {self.folder} holds dim "
                               f"{self.dim} ({self.embedder.get('name')}); embed queries with the store's embedder")
        return self.index.search(q, min(int(k), len(self)))

    def entries(self, ids) -> list[dict]:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        bad = ids[(ids < 0) | (ids >= len(self))]
        if len(bad):
            raise RetriktError(f"store {self.folder} has ids 0..{len(self) - 1}; got {bad[:5].tolist()}")
        return _table_entries(self.table.take(pa.array(ids)))

    def search_entries(self, query_embeddings, k: int) -> list[list[tuple[float, dict]]]:
        """For each query, its top-``k`` (score, entry) pairs, best first."""
        scores, ids = self.search(query_embeddings, k)
        valid = ids >= 0
        found = iter(self.entries(ids[valid]))
        return [[(float(s), next(found)) for s, ok in zip(srow, vrow) if ok] for srow, vrow in zip(scores, valid)]


def _load_files(folder: Path, manifest: dict) -> tuple[pa.Table, np.ndarray, object]:
    try:
        table = pq.read_table(folder / ENTRIES, columns=["batch_id", *ENTRY_KEYS])
    except (OSError, pa.ArrowException, KeyError) as e:
        raise IntegrityError(f"{folder / ENTRIES}: unreadable entries table ({e})") from None
    try:
        emb = load_file(str(folder / EMBEDDINGS))["embeddings"]
    except (OSError, KeyError, SafetensorError) as e:
        raise IntegrityError(f"{folder / EMBEDDINGS}: unreadable embeddings ({e})") from None
    index = load_index(folder / INDEX)
    dim = manifest["embedder"].get("dim")
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != dim or index.d != dim:
        raise IntegrityError(f"{folder}: embeddings {emb.dtype} {emb.shape} in {EMBEDDINGS} / index dim {index.d} "
                             f"in {INDEX} do not match the embedder dim {dim} in {MANIFEST}")
    rows = {ENTRIES: table.num_rows, EMBEDDINGS: len(emb), INDEX: int(index.ntotal),
            MANIFEST: manifest["counts"].get("entries")}
    if len(set(rows.values())) != 1:
        raise IntegrityError(f"{folder}: row counts disagree: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    emb.flags.writeable = False
    return table, emb, index
