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


def test_more_batches_continue_each_labels_numbering_in_the_planned_mix():
    c = B.BuildConfig(batch_size=4, min_entries=30, max_samples=100)
    plan = B.batch_plan([6, 3, 0], 4)  # ids 0, 1 | 100000
    # 9 samples kept 6: rate 2/3, 24 short -> 36 x 1.1 = 39.6 -> 40, split 6:3:0 -> 27 / 13 / 0
    extra = more_batches(plan, [6, 3, 0], 6, c)
    assert [b[0] for b in extra] == [2, 3, 4, 5, 6, 7, 8, BATCH_STRIDE + 1, BATCH_STRIDE + 2, BATCH_STRIDE + 3,
                                     BATCH_STRIDE + 4]
    assert sum(n for _, lab, n in extra if lab == 0) == 27 and sum(n for _, lab, n in extra if lab == 1) == 13
    assert more_batches(plan, [6, 3, 0], 30, c) == []  # enough kept
    assert sum(n for *_, n in more_batches(plan, [6, 3, 0], 6, B.BuildConfig(batch_size=4, min_entries=30,
                                                                           max_samples=12))) == 3  # the cap
    assert more_batches(plan, [6, 3, 0], 6, B.BuildConfig(min_entries=30, max_samples=9)) == []
    # nothing kept: the keep-rate floor asks for 528; by default the cap is 3 x the planned 9
    assert sum(n for *_, n in more_batches(plan, [6, 3, 0], 0, B.BuildConfig(batch_size=4, min_entries=30))) == 27 - 9


def test_a_build_grows_until_it_keeps_min_entries(cfg, caplog):
    cfg.min_entries = 20
    with caplog.at_level(logging.INFO):
        store = Store.open(B.build_store(cfg))
    # 12 kept of 12: rate 1, 8 short -> 9 more as 3 / 3 / 3 (batches of 2 + 1): 21 kept
    assert len(store) == 21 and len(set(_keys(store))) == 21
    log = read_jsonl(store.folder / "build_log.jsonl")
    assert sorted(r["batch_id"] for r in log if r["label"] == 1) == [BATCH_STRIDE + j for j in range(4)]
    assert store.manifest["min_entries"] == {"target": 20, "reached": True, "planned_samples": 12, "samples": 21,
                                             "cap": 36}
    assert any("short of --min-entries 20: 9 more samples" in r.getMessage() for r in caplog.records)


def test_the_cap_stops_a_build_short_and_says_so(cfg, caplog):
    cfg.min_entries, cfg.max_samples = 20, 15
    with caplog.at_level(logging.WARNING):
        store = Store.open(B.build_store(cfg))
    assert len(store) == 15 and store.manifest["min_entries"]["reached"] is False
    assert any("stopping at the cap of 15 samples" in r.getMessage() for r in caplog.records)


def test_min_entries_is_refused_for_an_oracle_store(cfg):
    cfg.min_entries, cfg.source = 20, "oracle"
    with pytest.raises(Exception, match="--min-entries grows a generated store"):
        B.build_store(cfg)


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
    # the grown store's cost includes the finished build's: its seconds are added, the larger peak kept
    assert grown.manifest["build_seconds"] > grown.manifest["earlier_runs_seconds"] > 0
    assert _keys(grown) == _keys(reference)
    assert grown.manifest["min_entries"]["samples"] == 21
