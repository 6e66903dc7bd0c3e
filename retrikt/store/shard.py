"""Sharded store builds: each rank writes its generation batches to a shard; rank 0 merges them in batch order.

A shard (``<store>/shards/rank-<k>/``) is an unfinished :class:`~retrikt.store.StoreWriter` folder (own lock, one
resumable part per batch) holding a rank's *candidates*: parsed, copy-filtered, teacher-labelled samples with their
embeddings, before the duplicate filters. Those filters depend on everything accepted before (exact keys, near
duplicates by cosine), so only a sequential pass is order-stable: :func:`merge_shards` replays them over all shards'
candidates in the plan's batch order, which is exactly what a one-process build does, since a one-process build is
this same code with one shard.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from retrikt.io import RetriktError, atomic_write_text, read_jsonl
from retrikt.store.samples import example_key, near_duplicates

logger = logging.getLogger(__name__)

SHARDS, LOG = "shards", "build_log.jsonl"
BATCH_TAG = "batch"  # entry meta key that ties a shard's candidate to its batch; dropped by the merge
_RANK_RE = re.compile(r"^rank-(\d+)$")


def shard_dir(out: Path, rank: int) -> Path:
    return Path(out) / SHARDS / f"rank-{rank}"


def shard_dirs(out: Path) -> list[Path]:
    """Every shard folder of a build, by rank (a resumed build may have been run with more ranks before)."""
    root = Path(out) / SHARDS
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _RANK_RE.match(p.name))] if root.is_dir() else []
    return [p for _, p in sorted(found)]


def rank_batches(plan: list[tuple[int, int, int]], rank: int, world: int) -> list[tuple[int, int, int]]:
    """A rank's share of the generation batches: round-robin, so every rank gets every label."""
    return plan[rank::world]


class Dedup:
    """The order-dependent filters, applied batch after batch: drop a candidate whose key was seen in any earlier
    candidate (kept or not), then one whose embedding's cosine to an accepted entry, or to an earlier candidate of
    its batch, is above ``threshold``."""

    def __init__(self, task, threshold: float, dim: int, capacity: int):
        self.task, self.threshold = task, threshold
        self.seen: set[str] = set()
        self.accepted = np.zeros((capacity, dim), np.float32)  # preallocated: appending per batch is quadratic
        self.n = 0

    def __call__(self, entries: list[dict], emb: np.ndarray) -> tuple[list[int], dict]:
        fresh = []
        for i, e in enumerate(entries):
            key = example_key(self.task, e["fields"])
            if key not in self.seen:
                self.seen.add(key)
                fresh.append(i)
        drop = near_duplicates(emb[fresh], self.accepted[:self.n], self.threshold)
        keep = [i for i, d in zip(fresh, drop) if not d]
        self.accepted[self.n:self.n + len(keep)] = emb[keep]
        self.n += len(keep)
        return keep, {"exact_dups": len(entries) - len(fresh), "near_dups": int(drop.sum())}


def repair_log(path: Path) -> None:
    """Drop a torn last line (its rank was killed mid-append), so that the next record starts a line of its own."""
    if path.exists() and not path.read_text(encoding="utf-8").endswith("\n"):
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in read_jsonl(path)))


def last_records(path: Path) -> dict[int, dict]:
    return {r["batch_id"]: r for r in read_jsonl(path)}  # a batch re-run after a crash is logged twice


def read_shards(out: Path, meta: dict) -> tuple[dict, dict]:
    """All shards' candidates: {batch_id: (entries, embeddings)} and {batch_id: shard log record}.

    A batch found in two shards (a resume with another world size) is taken from the lowest rank."""
    from retrikt.store import StoreWriter
    cands: dict[int, tuple[list[dict], np.ndarray]] = {}
    logs: dict[int, dict] = {}
    for folder in shard_dirs(out):
        with StoreWriter(folder, meta, reading=True) as shard:  # takes the shard's lock: its rank must have finished
            done, entries, emb = shard.done_batches(), shard.accepted_entries(), shard.accepted_embeddings()
        records = last_records(folder / LOG)
        rows: dict[int, list[int]] = {b: [] for b in done}
        for i, e in enumerate(entries):
            rows[e["meta"][BATCH_TAG]].append(i)
        for b in sorted(set(rows) - set(cands)):
            if b not in records:
                raise RetriktError(f"{folder / LOG}: no record of batch {b}, which {folder} holds")
            cands[b] = ([entries[i] for i in rows[b]], emb[rows[b]])
            logs[b] = records[b]
    return cands, logs


def _untag(e: dict) -> dict:
    return dict(e, meta={k: v for k, v in e["meta"].items() if k != BATCH_TAG})


def dedup_batches(cands: dict, logs: dict, batch_ids: list[int], dedup: Dedup, keep=None):
    """The duplicate filters over the candidates of ``batch_ids``, in that order: yields (batch id, its surviving
    entries untagged, their keys, its log record with the merge's counts). ``keep``: a predicate a candidate must
    pass before them (retrikt.pipeline.refilter's stricter agreement threshold)."""
    for b in batch_ids:
        entries, emb = cands[b]
        ok = [i for i, e in enumerate(entries) if keep is None or keep(e)]
        idx, stats = dedup([entries[i] for i in ok], emb[ok])
        rows = [ok[i] for i in idx]
        kept = [_untag(entries[i]) for i in rows]
        rec = logs[b]
        yield b, kept, emb[rows], rec | {"exact_dups": rec["exact_dups"] + stats["exact_dups"],
                                         "near_dups": stats["near_dups"], "kept": len(kept),
                                         "agree": sum(e["meta"]["agree"] for e in kept)}


def _check_complete(ids: list[int], cands: dict, out: Path) -> None:
    missing = [b for b in ids if b not in cands]
    if missing:
        raise RetriktError(f"{out}: batches {missing[:5]}{'...' if len(missing) > 5 else ''} are in no shard under "
                           f"{Path(out) / SHARDS}; re-run the build to generate them")


def count_kept(task, plan: list[tuple[int, int, int]], out: Path, meta: dict, threshold: float) -> int:
    """How many entries the merge would keep of the plan's batches: the duplicate filters replayed over every
    shard's candidates, writing nothing (a --min-entries build decides its next round on it)."""
    cands, logs = read_shards(out, meta)
    ids = [b for b, _, _ in plan]
    _check_complete(ids, cands, out)
    dedup = Dedup(task, threshold, meta["embedder"]["dim"], sum(len(cands[b][0]) for b in ids))
    for _ in dedup_batches(cands, logs, ids, dedup):
        pass
    return dedup.n


def merge_shards(writer, task, plan: list[tuple[int, int, int]], out: Path, threshold: float) -> list[dict]:
    """Replay the duplicate filters over every shard in plan order and write the survivors to ``writer``, one
    part per batch (rewritten each time, so a killed merge just runs again). Writes and returns the build log."""
    cands, logs = read_shards(out, writer.meta)
    _check_complete([b for b, _, _ in plan], cands, out)
    stale = writer.discard_batches({b for b, _, _ in plan})
    if stale:  # an earlier run planned more (a larger --min-entries): the store is this plan's, as a fresh build's
        logger.warning("%s: %d batches of an earlier, larger plan left out of the store (their candidates stay in "
                       "the shards)", out, len(stale))
    dedup = Dedup(task, threshold, writer.dim, sum(len(cands[b][0]) for b, _, _ in plan))
    records = []
    for batch_id, kept, emb, rec in dedup_batches(cands, logs, [b for b, _, _ in plan], dedup):
        writer.add_batch(batch_id, kept, emb, overwrite=True)
        records.append(rec)
    atomic_write_text(Path(out) / LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    logger.info("%s: merged %d batches from %d shard(s): %d of %d candidates kept", out, len(plan),
                len(shard_dirs(out)), dedup.n, len(dedup.accepted))
    return records
