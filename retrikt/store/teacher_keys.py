"""Task-aware keys: the labeller's hidden state at the answer position, a second key set beside a store's own.

The store's own keys come from an off-the-shelf sentence embedder, in which neighbours share topic and wording but
not necessarily the label (kNN over SST-2's 32 gold examples in MiniLM space is below fine-tuning). The labeller's
final hidden state at the answer position is what its head turns into the label scores, so there neighbours share
what the teacher thinks of them (ReAugKD keys its memory by the teacher's representation). Written beside a finished
store (by retrikt.pipeline.keys) for its entries and for the k-shot examples it was built from (a retrieval
student's training queries), in two files that leave the store's own checksum alone::

    teacher_keys.safetensors   {"entries": float32 [n, d], "kshot": float32 [k, d], "kshot_idx": int64 [k]}
    teacher_keys.json          labeller, dim, the store checksum they were computed for, the file's sha256

Raw states are kept; :func:`load_teacher_keys` centres them on the entries' mean and L2-normalises (an LLM's hidden
states share a large common direction that would otherwise dominate every cosine).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrikt.io import RetriktError, sha256_file

logger = logging.getLogger(__name__)

KEYS_FILE, KEYS_META = "teacher_keys.safetensors", "teacher_keys.json"


@dataclass
class TeacherKeys:
    entries: np.ndarray   # [n, d] centred, L2-normalised: row i keys store entry i
    kshot: dict           # k-shot example idx -> [d] key, same transform
    labeller: dict
    mean: np.ndarray      # [1, d] the raw entries' mean the transform subtracts

    @property
    def dim(self) -> int:
        return int(self.entries.shape[1])

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw answer states of other inputs (e.g. queries) put in the keys' space: centred on the entries' mean,
        L2-normalised."""
        return _normalise(np.asarray(raw, dtype=np.float32), self.mean)


def _normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return (x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def load_teacher_keys(store) -> TeacherKeys:
    """The teacher keys beside ``store``, verified against it (checksum, file hash, row count)."""
    import json

    from safetensors.numpy import load_file
    folder = Path(store.folder)
    meta_path, keys_path = folder / KEYS_META, folder / KEYS_FILE
    if not meta_path.exists() or not keys_path.exists():
        raise RetriktError(f"{folder} has no teacher keys: add them with python -m retrikt.keys --store {folder}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("store_checksum") != store.checksum:
        raise RetriktError(f"{keys_path} was computed for another version of this store (checksum "
                           f"{str(meta.get('store_checksum'))[:12]}…, the store's is {store.checksum[:12]}…): "
                           "recompute them with python -m retrikt.keys")
    if sha256_file(keys_path) != meta.get("sha256"):
        raise RetriktError(f"{keys_path} does not match the sha256 in {meta_path} (corrupted or edited)")
    raw = load_file(str(keys_path))
    if len(raw["entries"]) != len(store):
        raise RetriktError(f"{keys_path}: {len(raw['entries'])} rows for a {len(store)}-entry store")
    mean = raw["entries"].mean(0, keepdims=True)
    kshot = dict(zip(raw["kshot_idx"].tolist(), _normalise(raw["kshot"], mean)))
    return TeacherKeys(_normalise(raw["entries"], mean), kshot, meta.get("labeller") or {}, mean)
