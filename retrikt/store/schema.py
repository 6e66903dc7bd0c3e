"""What a store holds: file names, the entry / meta / embedding checks, and the parquet table of entries.

Shared by :class:`retrikt.store.writer.StoreWriter` and :class:`retrikt.store.store.Store`.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from retrikt.io import RetriktError
from retrikt.store.index import _as_matrix

SCHEMA_VERSION = 1
STORE_KIND = "retrikt-store"
ENTRIES, EMBEDDINGS, INDEX, PARTS, WRITER_STATE = ("entries.parquet", "embeddings.safetensors", "index.faiss",
                                                   "parts", "writer.json")
ENTRY_KEYS = ("fields", "label", "soft_label", "meta")
_NORM_TOL = 1e-3


def _embedder_spec(e) -> dict:
    """Normalise an embedder description (a name, or a dict with name / dim / normalize) to a dict."""
    if isinstance(e, str):
        return {"name": e}
    if isinstance(e, dict) and isinstance(e.get("name"), str):
        return dict(e)
    raise RetriktError(f"embedder must be a name or a dict with 'name' (and 'dim', 'normalize'), got {e!r}")


_RESERVED = ("schema_version", "kind", "counts", "index", "created", "git_commit", "versions", "files")


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
    emb = {"name": emb["name"], "dim": emb["dim"], "normalize": bool(emb.get("normalize", True)),
           **({"pair_format": emb["pair_format"]} if emb.get("pair_format") else {})}
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
