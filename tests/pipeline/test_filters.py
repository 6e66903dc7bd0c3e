import logging

from retrikt.pipeline.filters import YieldWatch


def _stats(generated, parsed, unfinished):
    return {"generated": generated, "parsed": parsed, "unfinished": unfinished}


def test_yield_watch_warns_once_after_enough_samples(caplog):
    watch = YieldWatch(min_samples=64, min_rate=0.6)
    with caplog.at_level(logging.WARNING, logger="retrikt.pipeline.filters"):
        # 32 samples, 10 usable: too few samples to judge yet
        assert not watch.add(_stats(32, 12, 2), prompt_epochs=5)
        # 64 samples, 20 usable (31%): warns, naming the counts and the remedy
        assert watch.add(_stats(32, 11, 1), prompt_epochs=5)
        # still low: no second warning
        assert not watch.add(_stats(32, 5, 0), prompt_epochs=5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "20 of the first 64" in msg and "--prompt-epochs" in msg and "5 tuning epochs" in msg


def test_yield_watch_quiet_when_samples_parse_and_end(caplog):
    watch = YieldWatch(min_samples=64, min_rate=0.6)
    with caplog.at_level(logging.WARNING, logger="retrikt.pipeline.filters"):
        for _ in range(4):  # 26 of 32 parse, 1 cut off: 78% usable
            assert not watch.add(_stats(32, 26, 1), prompt_epochs=5)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_yield_watch_counts_unfinished_as_unusable():
    watch = YieldWatch(min_samples=64, min_rate=0.6)
    # every sample parses, but half run past --max-new-tokens: 50% usable
    assert watch.add(_stats(64, 64, 32), prompt_epochs=5)
