"""Log set-up of the ``python -m`` entry points: retrikt's own loggers at INFO, everyone else's at WARNING.

Third-party INFO lines are noise at best and alarming at worst: faiss's loader logs
``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx2'")`` at INFO on every machine without AVX2 wheels of it,
although it then loads the generic build and works. Likewise peft probes ``model.is_gradient_checkpointing``, which
transformers 5 answers with a FutureWarning on every adapter: not the user's to fix, so it is silenced here. When
stderr is not a terminal (a log file), transformers' own tqdm bars ("Loading weights" on every model load) are
turned off: redrawn with carriage returns they make a log unreadable, and retrikt logs its own progress with ETAs.
"""
from __future__ import annotations

import logging
import sys
import warnings

OURS = ("retrikt", "benchmarks")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, fmt: str = FORMAT) -> None:
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in OURS:
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    if sys.stderr is not None and not sys.stderr.isatty():
        quiet_library_bars()


def quiet_library_bars() -> None:
    """transformers' (and huggingface_hub's) progress bars off; its flag is read when a bar starts, so this works
    after import too."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
