"""A finished store re-filtered by a stricter labeller-agreement threshold: its passing entries in a new folder.

The agreement filter (``--min-agreement``) is the one build filter whose threshold is a trade: a higher one keeps
fewer entries whose teacher labels agree more with what the generator was asked for. A store built with
``--min-agreement 0`` keeps every entry with its labeller's soft label and ``meta.agree``, so the filter can be
re-applied at any threshold without generating again: build once, sweep the threshold, choose it on training data.
The rule is the build's own (:func:`retrikt.pipeline.filters.passes_agreement`); entries a build dropped are gone,
so a threshold below the source's is refused. The copy keeps the source's provenance (task, seed, k-shot indices,
labeller, build statistics with the new counts) and names the source's checksum; teacher keys are carried over for
the kept rows, re-checked against the new store's checksum.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from retrikt.io import MANIFEST, RetriktError
from retrikt.pipeline.filters import passes_agreement
from retrikt.store.schema import _RESERVED

logger = logging.getLogger(__name__)

_OWN = _RESERVED + ("task", "teacher", "embedder")


def _source_threshold(m: dict, folder) -> float:
    built = (m.get("config") or {}).get("min_agreement")
    if not isinstance(built, (int, float)) or isinstance(built, bool):
        raise RetriktError(f"{folder}: the manifest records no --min-agreement (an older store or not a built one); "
                           "cannot tell which entries its build already dropped")
    return float(built)


def _stats(m: dict, entries: list[dict], kept: list[int], built: float, threshold: float) -> dict:
    """The source's build statistics with the counts after the new filter (generation counts stay): an entry that
    agreed at the source's threshold and fails the new one now counts as disagreeing."""
    stats = dict(m.get("stats") or {})
    newly = sum(passes_agreement(e, built) and not passes_agreement(e, threshold) for e in entries)
    stats["disagree"] = stats.get("disagree", 0) + newly
    stats["agreed"] = stats.get("agreed", len(entries)) - newly
    stats["kept"] = len(kept)
    stats["agree"] = sum(bool(entries[i]["meta"].get("agree")) for i in kept)
    stats["keep_rate"] = len(kept) / max(1, stats.get("generated", len(entries)))
    stats["agreement"] = stats["agree"] / max(1, len(kept))
    return stats


def _copy_teacher_keys(src, out: Path, kept: list[int]) -> None:
    import json

    from safetensors.numpy import load_file, save_file

    from retrikt.io import atomic_path, atomic_write_json, sha256_file
    from retrikt.store import Store
    from retrikt.store.teacher_keys import KEYS_FILE, KEYS_META, load_teacher_keys
    load_teacher_keys(src)  # verify the source's keys before copying rows of them
    raw = load_file(str(Path(src.folder) / KEYS_FILE))
    new = Store.open(out)
    with atomic_path(out / KEYS_FILE) as tmp:
        save_file({"entries": np.ascontiguousarray(raw["entries"][kept]), "kshot": raw["kshot"],
                   "kshot_idx": raw["kshot_idx"]}, str(tmp))
    meta = json.loads((Path(src.folder) / KEYS_META).read_text(encoding="utf-8"))
    atomic_write_json(out / KEYS_META, meta | {"entries": len(kept), "store_checksum": new.checksum,
                                               "sha256": sha256_file(out / KEYS_FILE)})


def refilter_store(src: str | Path, min_agreement: float, out: str | Path) -> Path:
    """Write the entries of ``src`` that pass ``min_agreement`` to ``out``; returns ``out``."""
    from retrikt.store import Store, StoreWriter
    from retrikt.store.teacher_keys import KEYS_FILE
    store = Store.open(src)
    out = Path(out)
    if (out / MANIFEST).exists():
        raise RetriktError(f"{out} already holds a finished store; choose another --out")
    if out.resolve() == Path(store.folder).resolve():
        raise RetriktError("--out must differ from the source store")
    m = store.manifest
    if m.get("source", "generated") != "generated":
        raise RetriktError(f"{store.folder} is an {m.get('source')} store: its inputs have no conditioned label for "
                           "the labeller to agree with")
    built = _source_threshold(m, store.folder)
    if not 0 <= min_agreement <= 1:
        raise RetriktError(f"--min-agreement is a probability, got {min_agreement}")
    if min_agreement < built:
        raise RetriktError(f"{store.folder} was built with --min-agreement {built}: entries below it were never "
                           f"kept, so it cannot be re-filtered at {min_agreement}; rebuild with the lower threshold")
    entries = store.entries(range(len(store)))
    # 0 keeps every entry, as the build does (a copy)
    kept = [i for i, e in enumerate(entries) if min_agreement <= 0 or passes_agreement(e, min_agreement)]
    if not kept:
        raise RetriktError(f"{store.folder}: no entry passes --min-agreement {min_agreement}")
    meta = {"task": m["task"], "teacher": m["teacher"], "embedder": m["embedder"]}
    extra = {k: v for k, v in m.items() if k not in _OWN} | {
        "config": dict(m["config"], min_agreement=min_agreement), "stats": _stats(m, entries, kept, built, min_agreement),
        "refiltered_from": {"store": str(Path(store.folder).resolve()), "checksum": store.checksum,
                            "entries": len(entries), "min_agreement": built}}
    with StoreWriter(out, meta) as w:
        w.add_batch(0, [{k: entries[i][k] for k in ("fields", "label", "soft_label", "meta") if k in entries[i]}
                        for i in kept], store.embeddings[kept])
        w.finalize(extra_meta=extra)
    if (Path(store.folder) / KEYS_FILE).exists():
        _copy_teacher_keys(store, out, kept)
    logger.info("%s: %d of %d entries of %s pass --min-agreement %g", out, len(kept), len(entries), store.folder,
                min_agreement)
    return out
