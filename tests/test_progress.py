import logging

from retrikt.progress import LogProgress, progress


def test_log_progress_reports_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="retrikt.progress")
    bar = LogProgress(total=4, desc="train", every=0.0)
    bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.update(1)
    assert "train: 2/4 (50%)" in caplog.records[-1].getMessage()
    assert "ETA" in caplog.records[-1].getMessage() and "loss=0.5" in caplog.records[-1].getMessage()


def test_progress_off_a_terminal_iterates_and_logs(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="retrikt.progress")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    bar = progress(range(3), desc="score", every=0.0)
    assert isinstance(bar, LogProgress) and list(bar) == [0, 1, 2]
    assert any("score: 3/3 (100%)" in r.getMessage() for r in caplog.records)
    assert list(progress(range(2), disable=True)) == [0, 1]
