"""A finished store re-keyed by another sentence embedder: the same entries, in the same order, in a new folder.

Off-the-shelf embedders differ in what their neighbours share: in MiniLM space SST-2 neighbours share topic more
than sentiment, in mpnet's they share more of it (benchmarks.store_knn --key-spaces). A retrieval student never runs
the embedder at inference (its query is its own embedding, projected into the keys' space), so a larger embedder
costs only this one pass over the store. The copy keeps the source's provenance (task, seed, k-shot indices,
labeller) and names the source's checksum; teacher keys are not copied (they are checked against a store's checksum:
recompute them on the copy with python -m retrikt.keys).
"""
from __future__ import annotations

import logging
from pathlib import Path

from retrikt.io import MANIFEST, RetriktError
from retrikt.store.schema import _RESERVED

logger = logging.getLogger(__name__)

# written by the writer itself, or fixed by its meta (task / teacher / the new embedder)
_OWN = _RESERVED + ("task", "teacher", "embedder")


def rekey_store(src: str | Path, embedder_name: str, out: str | Path, device: str = "cpu") -> Path:
    """Write ``src``'s entries keyed by ``embedder_name`` to ``out``; returns ``out``."""
    from retrikt import models
    from retrikt.store import Store, StoreWriter
    from retrikt.store.samples import embed_examples, embedding_dim, pair_format
    from retrikt.tasks import get_task
    store = Store.open(src)
    out = Path(out)
    if (out / MANIFEST).exists():
        raise RetriktError(f"{out} already holds a finished store; choose another --out")
    if out.resolve() == Path(store.folder).resolve():
        raise RetriktError("--out must differ from the source store")
    m = store.manifest
    task = get_task(m["task"])
    embedder = models.load_sentence_transformer(embedder_name, device=device)
    entries = store.entries(range(len(store)))
    fmt = pair_format(m)
    keys = embed_examples(embedder, task, [dict(e["fields"]) for e in entries], fmt)  # the encoder batches
    meta = {"task": m["task"], "teacher": m["teacher"],
            "embedder": {"name": embedder_name, "dim": embedding_dim(embedder), "normalize": True,
                         "pair_format": fmt}}
    extra = {k: v for k, v in m.items() if k not in _OWN} | {
        "rekeyed_from": {"store": str(Path(store.folder).resolve()), "checksum": store.checksum,
                         "embedder": m["embedder"]}}
    with StoreWriter(out, meta) as w:
        w.add_batch(0, [{k: e[k] for k in ("fields", "label", "soft_label", "meta") if k in e} for e in entries],
                    keys)
        w.finalize(extra_meta=extra)
    logger.info("%s: %d entries of %s re-keyed by %s", out, len(entries), store.folder, embedder_name)
    return out
