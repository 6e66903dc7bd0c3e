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

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import SafetensorError
from safetensors.numpy import load_file

from retrikt.io import MANIFEST, IntegrityError, RetriktError, read_manifest, sha256_file
from retrikt.store.index import _as_matrix, load_index, set_search_params, to_gpu
from retrikt.store.schema import (EMBEDDINGS, ENTRIES, ENTRY_KEYS, INDEX, PARTS, SCHEMA_VERSION, STORE_KIND,
                                  WRITER_STATE, _embedder_spec, _table_entries)
from retrikt.store.writer import StoreWriter

__all__ = ["EMBEDDINGS", "ENTRIES", "ENTRY_KEYS", "INDEX", "PARTS", "SCHEMA_VERSION", "STORE_KIND", "WRITER_STATE",
           "Store", "StoreWriter"]

logger = logging.getLogger(__name__)


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
