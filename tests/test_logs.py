import logging
import warnings

from retrikt.logs import setup_logging


def test_third_party_noise_is_quiet_and_ours_is_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_logging()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    assert logging.getLogger("retrikt.x").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("faiss.loader").getEffectiveLevel() >= logging.WARNING


def test_library_bars_are_off_in_a_log_file_and_left_alone_on_a_terminal(monkeypatch):
    import io
    import sys

    from transformers.utils import logging as hf_logging

    class _Tty(io.StringIO):
        def isatty(self):
            return True
    was = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        monkeypatch.setattr(sys, "stderr", _Tty())
        setup_logging()
        assert hf_logging.is_progress_bar_enabled()
        monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file
        setup_logging()
        assert not hf_logging.is_progress_bar_enabled()
        assert list(hf_logging.tqdm(range(3), desc="Loading weights")) == [0, 1, 2]
        assert sys.stderr.getvalue() == ""  # the bar drew nothing
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
