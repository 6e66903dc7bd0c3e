import logging

from retrikt.pipeline.filters import YieldWatch


def _stats(generated, parsed, unfinished, first_field_only=0):
    return {"generated": generated, "parsed": parsed, "unfinished": unfinished, "first_field_only": first_field_only}


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
    assert "--complete-fields" not in msg


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


def test_yield_watch_names_complete_fields_when_samples_stop_after_their_first_field(caplog):
    watch = YieldWatch(min_samples=64, min_rate=0.6)
    with caplog.at_level(logging.WARNING, logger="retrikt.pipeline.filters"):
        # 64 samples, 20 usable; 30 of the 44 lost ones hold a premise and nothing more
        assert watch.add(_stats(64, 21, 1, first_field_only=30), prompt_epochs=5)
    msg = caplog.records[-1].getMessage()
    assert "30 of them stopped after their first field" in msg and "--complete-fields" in msg
    assert "--gen-demos 1" in msg
    assert "--prompt-epochs" not in msg


def test_filter_counts_samples_that_stop_after_their_first_field():
    from retrikt.pipeline.filters import Filter
    from retrikt.tasks import get_task

    class Embedder:
        def encode(self, texts, **kw):
            import numpy as np
            return np.ones((len(texts), 4), dtype="float32") / 2

    samples = [{"text": " a man sat.", "finished": True, "label": 0},             # first field only
               {"text": " a man sat.\nhypothesis: he sat", "finished": True, "label": 0},  # parses
               {"text": " a man", "finished": False, "label": 0},                # cut off, not counted
               {"text": " a man sat.\nthen he left", "finished": True, "label": 0}]  # garbled, not counted
    _, _, stats = Filter(get_task("cb"), set())(samples, Embedder())
    assert stats["first_field_only"] == 1 and stats["parsed"] == 1


def test_yield_watch_counts_unfinished_as_usable_when_the_store_keeps_them():
    watch = YieldWatch(min_samples=64, min_rate=0.6)
    assert not watch.add(_stats(64, 64, 32), prompt_epochs=5, keep_unfinished=True)
