"""A finished store re-filtered by a stricter labeller-agreement threshold, in a new folder: what a build at that
threshold would have kept, without generating again.

The agreement filter (``--min-agreement``) is the one build filter whose threshold is a trade: a higher one keeps
fewer entries whose teacher labels agree more with what the generator was asked for. A build writes every labelled
candidate that passes it to its shards (``<store>/shards/``), before the duplicate filters, which depend on what was
accepted before. So the re-filter replays the build's last stage: the source's shard candidates that pass the new
threshold (:func:`retrikt.pipeline.filters.passes_agreement`, the build's rule) go through the same duplicate
filters in the same batch order (:class:`retrikt.store.shard.Dedup`), and the build log is rewritten with the counts
a build at that threshold logs. Build once with ``--min-agreement 0``, sweep, choose on training data. Entries a
build dropped are gone, so a threshold below the source's is refused. A source without shards (itself a re-filtered
or re-keyed copy) is filtered entry by entry instead, which can differ where a dropped entry had shadowed a
duplicate; the manifest then says ``exact: false``. The copy keeps the source's provenance (task, seed, k-shot
indices, labeller; its commit, versions and build time under ``refiltered_from``); teacher keys are carried over
for the kept rows when they verify against the source.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from retrikt.io import MANIFEST, RetriktError, atomic_write_text
from retrikt.pipeline.filters import passes_agreement, summarise_log
from retrikt.store.schema import _RESERVED, PARTS, WRITER_STATE
from retrikt.store.shard import LOG, SHARDS, Dedup, dedup_batches, read_shards

logger = logging.getLogger(__name__)

_OWN = _RESERVED + ("task", "teacher", "embedder")


def _passes(e: dict, threshold: float) -> bool:
    return threshold <= 0 or passes_agreement(e, threshold)  # 0 keeps every candidate, as the build does


def _source_threshold(m: dict, folder) -> float:
    built = (m.get("config") or {}).get("min_agreement")
    if not isinstance(built, (int, float)) or isinstance(built, bool):
        raise RetriktError(f"{folder}: the manifest records no --min-agreement (an older store or not a built one); "
                           "cannot tell which entries its build already dropped")
    return float(built)


def _check(store, out: Path, threshold: float) -> float:
    m = store.manifest
    if (out / MANIFEST).exists():
        raise RetriktError(f"{out} already holds a finished store; choose another --out")
    if (out / WRITER_STATE).exists() or (out / PARTS).exists():
        raise RetriktError(f"{out} holds an unfinished store or build; delete it or choose another --out")
    if out.resolve() == Path(store.folder).resolve():
        raise RetriktError("--out must differ from the source store")
    if m.get("source", "generated") != "generated":
        raise RetriktError(f"{store.folder} is an {m.get('source')} store: its inputs have no conditioned label for "
                           "the labeller to agree with")
    built = _source_threshold(m, store.folder)
    if not 0 <= threshold <= 1:
        raise RetriktError(f"--min-agreement is a probability, got {threshold}")
    if threshold < built:
        raise RetriktError(f"{store.folder} was built with --min-agreement {built}: entries below it were never "
                           f"kept, so it cannot be re-filtered at {threshold}; rebuild with the lower threshold")
    if threshold == built:
        logger.warning("%s was built with --min-agreement %g already: the re-filtered store is a copy", store.folder,
                       threshold)
    return built


def _replay(store, threshold: float) -> tuple[dict, list[dict]]:
    """The build's merge at ``threshold``: {batch_id: (kept entries, their keys)} and the build log's records."""
    from retrikt.tasks import get_task
    m = store.manifest
    meta = json.loads((Path(store.folder) / WRITER_STATE).read_text(encoding="utf-8"))
    cands, logs = read_shards(Path(store.folder), meta)
    dedup = Dedup(get_task(m["task"]), float(m["config"]["dedup_threshold"]), int(m["embedder"]["dim"]),
                  sum(len(c[0]) for c in cands.values()))
    kept, records = {}, []
    # sorted ids are the plan's order: batch ids grow with label, then batch number
    for b, entries, emb, rec in dedup_batches(cands, logs, sorted(cands), dedup, keep=lambda e: _passes(e, threshold)):
        kept[b] = (entries, emb)
        agreed = sum(passes_agreement(e, threshold) for e in cands[b][0])  # the shard holds every candidate that passed
        records.append(rec | {"agreed": agreed, "disagree": rec["agreed"] + rec["disagree"] - agreed})
    return kept, records


def _entrywise(store, threshold: float) -> tuple[dict, None]:
    entries = store.entries(range(len(store)))
    ok = [i for i, e in enumerate(entries) if _passes(e, threshold)]
    return {0: ([{k: entries[i][k] for k in ("fields", "label", "soft_label", "meta") if k in entries[i]}
                 for i in ok], store.embeddings[ok])}, None


def _approx_stats(m: dict, kept: dict) -> dict:
    """Without the shards: the source's counts, with those of the kept entries recomputed."""
    entries = [e for k in kept.values() for e in k[0]]
    stats = dict(m.get("stats") or {})
    stats.update(kept=len(entries), agree=sum(bool(e["meta"].get("agree")) for e in entries))
    stats.update(keep_rate=stats["kept"] / max(1, stats.get("generated", 0)),
                 agreement=stats["agree"] / max(1, stats["kept"]))
    return stats


def refilter_store(src: str | Path, min_agreement: float, out: str | Path) -> Path:
    """Write what a build of ``src``'s config at ``min_agreement`` keeps to ``out``; returns ``out``."""
    from retrikt.store import Store, StoreWriter
    store, out = Store.open(src), Path(out)
    built = _check(store, out, min_agreement)
    exact = (Path(store.folder) / SHARDS).is_dir() and (Path(store.folder) / WRITER_STATE).exists()
    if not exact:
        logger.warning("%s has no build shards: filtering its entries one by one, which can differ from a build "
                       "where a dropped entry had shadowed a duplicate", store.folder)
    kept, records = _replay(store, min_agreement) if exact else _entrywise(store, min_agreement)
    if not sum(len(k[0]) for k in kept.values()):
        raise RetriktError(f"{store.folder}: no entry passes --min-agreement {min_agreement}")
    keys = _source_keys(store)
    m = store.manifest
    stats = summarise_log(records) if records else _approx_stats(m, kept)
    # the build's cost and provenance are the source's: kept under refiltered_from, not as this store's own
    moved = ("git_commit", "versions", "created", "build_seconds", "peak_rss_gib")
    extra = {k: v for k, v in m.items() if k not in _OWN + moved + ("stats",)} | {
        "config": dict(m["config"], min_agreement=min_agreement), "stats": stats,
        "refiltered_from": {"store": str(Path(store.folder).resolve()), "checksum": store.checksum,
                            "entries": len(store), "min_agreement": built, "exact": exact,
                            **{k: m.get(k) for k in moved}}}
    with StoreWriter(out, {"task": m["task"], "teacher": m["teacher"], "embedder": m["embedder"]}) as w:
        for b, (entries, emb) in sorted(kept.items()):
            w.add_batch(b, entries, emb)
        w.finalize(index_kind=m["config"].get("index", "auto"), extra_meta=extra)
    if records:
        atomic_write_text(out / LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    if keys is not None:
        _write_keys(store, out, keys, [e for b in sorted(kept) for e in kept[b][0]])
    n = sum(len(k[0]) for k in kept.values())
    logger.info("%s: %d entries (%s had %d) at --min-agreement %g", out, n, store.folder, len(store), min_agreement)
    return out


def _source_keys(store):
    """The source's raw teacher keys, verified, or None (absent, or stale: then not carried, with a warning)."""
    from safetensors.numpy import load_file

    from retrikt.store.teacher_keys import KEYS_FILE, load_teacher_keys
    if not (Path(store.folder) / KEYS_FILE).exists():
        return None
    try:
        load_teacher_keys(store)
    except RetriktError as e:
        logger.warning("teacher keys not carried over: %s", e)
        return None
    return load_file(str(Path(store.folder) / KEYS_FILE))


def _write_keys(store, out: Path, raw: dict, entries: list[dict]) -> None:
    """The kept rows' teacher keys (matched by text: the replay's entries are the source's candidates)."""
    from safetensors.numpy import save_file

    from retrikt.io import atomic_path, atomic_write_json, sha256_file
    from retrikt.store import Store
    from retrikt.store.teacher_keys import KEYS_FILE, KEYS_META
    row = {json.dumps(e["fields"], sort_keys=True): i for i, e in enumerate(store.entries(range(len(store))))}
    rows = [row.get(json.dumps(e["fields"], sort_keys=True)) for e in entries]
    if None in rows:  # kept here, dropped as a duplicate in the source: it has no key there
        logger.warning("%s: %d kept entries have no teacher key in the source; none carried over (add them with "
                       "python -m retrikt.keys --store %s)", out, rows.count(None), out)
        return
    new = Store.open(out)
    with atomic_path(out / KEYS_FILE) as tmp:
        save_file({"entries": np.ascontiguousarray(raw["entries"][rows]), "kshot": raw["kshot"],
                   "kshot_idx": raw["kshot_idx"]}, str(tmp))
    meta = json.loads((Path(store.folder) / KEYS_META).read_text(encoding="utf-8"))
    atomic_write_json(out / KEYS_META, meta | {"entries": len(rows), "store_checksum": new.checksum,
                                               "sha256": sha256_file(out / KEYS_FILE)})
