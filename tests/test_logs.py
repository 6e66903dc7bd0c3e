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
