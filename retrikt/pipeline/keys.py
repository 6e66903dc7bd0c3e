"""python -m retrikt.keys: add task-aware keys (the labeller's answer-position hidden states) to a finished store.

The storage side (file names, loading, verification) is retrikt.store.teacher_keys; this module runs the store's
own labeller (its manifest's spec, its seed's k-shot set, an adapted teacher from the cache) over the store's
entries and the k-shot examples.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from retrikt.io import RetriktError, atomic_path, atomic_write_json, sha256_file
from retrikt.store.teacher_keys import KEYS_FILE, KEYS_META

logger = logging.getLogger(__name__)


def labeller_for(store, data_dir=None, device: str = "cpu"):
    """The store's own labeller (its manifest's spec, its seed's k-shot set) and that k-shot set."""
    from retrikt.tasks import get_task, load_split
    from retrikt.teacher.adapted import AdaptConfig
    from retrikt.teacher.labeller import make_labeller
    m = store.manifest
    if "labeller" not in m or "kshot_idx" not in m:
        raise RetriktError(f"{store.folder}: the manifest records no labeller or k-shot set (an older store); "
                           "rebuild it to add teacher keys")
    task = get_task(m["task"])
    by_idx = {e["idx"]: e for e in load_split(task, "train", data_dir=data_dir)}
    missing = [i for i in m["kshot_idx"] if i not in by_idx]
    if missing:
        raise RetriktError(f"{store.folder}: k-shot indices {missing[:5]} are not in {task.name}'s training split "
                           "here (another copy of the data?)")
    kshot = [by_idx[i] for i in m["kshot_idx"]]
    spec = m["labeller"]
    adapt = AdaptConfig(**spec["recipe"]) if spec["kind"] == "adapted" else None
    clf, _ = make_labeller(spec["kind"], spec["model"], task, kshot, int(m["seed"]), demos=spec.get("demos", 4),
                           calibration=spec.get("calibration", "content-free"), adapt=adapt, device=device)
    return clf, kshot


def add_teacher_keys(folder: str | Path, data_dir=None, device: str = "cpu", batch_size: int = 8,
                     classifier=None) -> Path:
    """Compute and write the teacher keys of the finished store in ``folder``; returns the keys file.
    ``classifier``: an already loaded labeller (an LMClassifier) with the k-shot set, as (clf, kshot)."""
    from safetensors.numpy import save_file

    from retrikt.store import Store
    store = Store.open(folder)
    clf, kshot = classifier or labeller_for(store, data_dir, device)
    texts = [dict(e["fields"]) for e in store.entries(range(len(store)))]
    entries, shots = clf.answer_states(texts, batch_size), clf.answer_states(kshot, batch_size)
    out = Path(folder) / KEYS_FILE
    with atomic_path(out) as tmp:
        save_file({"entries": entries, "kshot": shots,
                   "kshot_idx": np.array([e["idx"] for e in kshot], dtype=np.int64)}, str(tmp))
    atomic_write_json(Path(folder) / KEYS_META, {
        "labeller": store.manifest.get("labeller"), "dim": int(entries.shape[1]), "entries": len(entries),
        "store_checksum": store.checksum, "sha256": sha256_file(out)})
    logger.info("%s: teacher keys for %d entries and %d k-shot examples (%d-d)", folder, len(entries), len(shots),
                entries.shape[1])
    return out
