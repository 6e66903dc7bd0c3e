"""Log set-up of the ``python -m`` entry points: retrikt's own loggers at INFO, everyone else's at WARNING.

Third-party INFO lines are noise at best and alarming at worst: faiss's loader logs
``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx2'")`` at INFO on every machine without AVX2 wheels of it,
although it then loads the generic build and works. Likewise peft probes ``model.is_gradient_checkpointing``, which
transformers 5 answers with a FutureWarning on every adapter: not the user's to fix, so it is silenced here.
"""
from __future__ import annotations

import logging
import warnings

OURS = ("retrikt", "benchmarks")
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, fmt: str = FORMAT) -> None:
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in OURS:
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
