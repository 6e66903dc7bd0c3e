"""--min-entries: a build keeps generating, in rounds sized by its keep rate, until its store keeps enough entries."""
import logging

import pytest

from retrikt.io import read_jsonl
from retrikt.pipeline import run as B
from retrikt.pipeline.plan import BATCH_STRIDE, more_batches
from retrikt.store import Store
from tests.pipeline.test_build import _keys, cfg  # noqa: F401  (cfg is a fixture)

# the fixture's scripted generator: a batch of n gives n parseable samples + an exact duplicate + a cut one, so a
# build keeps exactly one entry per planned sample; 3 labels x 2 batches of 2 plan 12


def test_more_batches_continue_each_labels_numbering_in_whole_batches_in_the_planned_mix():
    c = B.BuildConfig(batch_size=4, min_entries=30, max_samples=100)
    plan = B.batch_plan([6, 3, 0], 4)  # ids 0, 1 (of 4 and 2) | 100000 (of 3)
    # 9 samples kept 6: rate 2/3, 24 short -> 36 x 1.1 = 39.6 -> 40, split 6:3:0 -> 27 / 13 / 0 -> 7 / 4 batches
    extra = more_batches(plan, [6, 3, 0], 6, c)
    assert [b[0] for b in extra] == [2, 3, 4, 5, 6, 7, 8] + [BATCH_STRIDE + j for j in range(1, 5)]
    assert {n for *_, n in extra} == {4}  # an extra batch's id always means batch_size samples
    assert more_batches(plan, [6, 3, 0], 30, c) == []  # enough kept
    assert more_batches(plan, [6, 3, 0], 0, c) == []  # none kept: no keep rate to size a round by
    # the cap: 3 samples of room -> 2 / 1 -> one batch each, passing it by less than a batch per label
    capped = more_batches(plan, [6, 3, 0], 6, B.BuildConfig(batch_size=4, min_entries=30, max_samples=12))
    assert [b[0] for b in capped] == [2, BATCH_STRIDE + 1]
    assert more_batches(plan, [6, 3, 0], 6, B.BuildConfig(min_entries=30, max_samples=9)) == []
    # by default the cap is 3 x the planned 9: a keep rate of 1/9 asks for 288, the room is 18 -> 12 / 6 -> 5 batches
    assert sum(n for *_, n in more_batches(plan, [6, 3, 0], 1, B.BuildConfig(batch_size=4, min_entries=30))) == 20


def test_a_build_grows_until_it_keeps_min_entries(cfg, caplog):
    cfg.min_entries = 20
    with caplog.at_level(logging.INFO):
        store = Store.open(B.build_store(cfg))
    # 12 kept of 12: rate 1, 8 short -> 9 more, 3 / 3 / 3 -> 2 batches of 2 per label: 24 kept
    assert len(store) == 24 and len(set(_keys(store))) == 24
    log = read_jsonl(store.folder / "build_log.jsonl")
    assert sorted(r["batch_id"] for r in log if r["label"] == 1) == [BATCH_STRIDE + j for j in range(4)]
    assert store.manifest["min_entries"] == {"target": 20, "reached": True, "planned_samples": 12, "samples": 24,
                                             "cap": 36}
    assert any("short of --min-entries 20: 12 more samples" in r.getMessage() for r in caplog.records)


def test_the_cap_stops_a_build_short_and_says_so(cfg, caplog):
    cfg.min_entries, cfg.max_samples = 20, 15
    with caplog.at_level(logging.WARNING):
        store = Store.open(B.build_store(cfg))
    assert len(store) == 18 and store.manifest["min_entries"]["reached"] is False  # 12 + one batch of 2 per label
    assert any("stopping at the cap of 15 samples" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("change,match", [({"max_samples": 20}, "--max-samples caps the rounds"),
                                          ({"min_entries": 20, "max_samples": 10}, "below the 12 samples planned")])
def test_a_cap_without_a_target_or_below_the_plan_is_refused(cfg, change, match):
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(Exception, match=match):
        B.build_store(cfg)


def test_an_oracle_store_ignores_a_recipes_min_entries(cfg, monkeypatch):
    cfg.source, cfg.min_entries, cfg.per_label = "oracle", 1000, 2
    store = Store.open(B.build_store(cfg))
    assert "min_entries" not in store.manifest and store.manifest["config"]["min_entries"] == 0


def test_a_finished_store_grows_when_rerun_with_min_entries_and_a_killed_round_resumes(cfg, tmp_path, monkeypatch):
    cfg.min_entries = 20
    reference = Store.open(B.build_store(cfg))
    cfg.out, cfg.min_entries = str(tmp_path / "grown"), 0
    assert len(Store.open(B.build_store(cfg))) == 12  # finished at the planned samples
    calls = {"n": 0}
    real = B.Filter.__call__

    def dying(self, samples, embedder):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the third batch of the first extra round
        return real(self, samples, embedder)

    monkeypatch.setattr(B.Filter, "__call__", dying)
    cfg.min_entries = 20
    with pytest.raises(KeyboardInterrupt):
        B.build_store(cfg)
    calls["n"] = -100
    grown = Store.open(B.build_store(cfg))
    assert calls["n"] == -100 + 6 - 2  # the round's 6 batches, 2 of them finished before the kill
    assert _keys(grown) == _keys(reference)
    assert grown.manifest["min_entries"]["samples"] == 24
    # the grown store's cost includes the finished build's: its seconds are added, the larger peak kept
    assert grown.manifest["build_seconds"] > grown.manifest["earlier_runs_seconds"] > 0
    seconds = grown.manifest["build_seconds"]
    assert Store.open(B.build_store(cfg)).manifest["build_seconds"] == seconds  # a plain re-run costs nothing more


def test_a_store_rerun_with_another_target_is_the_store_a_fresh_build_at_that_target_makes(cfg, tmp_path):
    cfg.min_entries = 30
    fresh = Store.open(B.build_store(cfg))  # 12 kept, 18 short -> 20 -> 7 / 7 / 6 -> 4 / 4 / 3 batches: 34
    assert len(fresh) == 34
    cfg.out, cfg.min_entries = str(tmp_path / "regrown"), 20
    assert len(Store.open(B.build_store(cfg))) == 24
    cfg.min_entries = 30  # its first round re-planned larger: the batches it shares are reused, the rest added
    assert _keys(Store.open(B.build_store(cfg))) == _keys(fresh)
    cfg.min_entries = 0  # and back to the plan alone: the extra rounds' entries leave the store
    shrunk = Store.open(B.build_store(cfg))
    assert len(shrunk) == 12 and shrunk.manifest["counts"]["batches"] == 6


def test_a_batch_written_at_another_size_is_redone(cfg, monkeypatch):
    import json
    cfg.min_entries = 20
    reference = Store.open(B.build_store(cfg))
    log = reference.folder / "shards" / "rank-0" / "build_log.jsonl"
    records = read_jsonl(log)
    extra = next(r for r in records if r["batch_id"] == BATCH_STRIDE + 3)
    extra["n"] = 1  # as if an earlier run had planned that batch with one sample
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    calls = {"n": 0}
    real = B.Filter.__call__

    def counting(self, samples, embedder):
        calls["n"] += 1
        return real(self, samples, embedder)

    monkeypatch.setattr(B.Filter, "__call__", counting)
    again = Store.open(B.build_store(cfg))
    assert calls["n"] == 1 and _keys(again) == _keys(reference)  # only that batch, at the plan's size
    assert last_n(again.folder, BATCH_STRIDE + 3) == 2


def last_n(folder, batch_id):
    from retrikt.store.shard import last_records
    return last_records(folder / "shards" / "rank-0" / "build_log.jsonl")[batch_id]["n"]
