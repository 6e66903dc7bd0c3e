"""Student initialisers: alternative starting points for a student's PEFT module, one file each.

    INITIALISERS[name] -> (module, function, config class)

Like mergekit's merge methods: a plain dict, imported lazily so that using one initialiser never imports the others.
``python -m retrikt.train --method NAME`` reaches them through ``retrikt.init.runner``.
"""
from __future__ import annotations

import importlib

from retrikt.io import RetriktError

INITIALISERS: dict[str, tuple[str, str, str]] = {
    "parametric": ("retrikt.init.parametric", "init_parametric", "ParametricConfig"),
    "arithmetic": ("retrikt.init.arithmetic", "init_arithmetic", "ArithmeticConfig"),
    "port": ("retrikt.init.port", "port_adapter", "PortConfig"),
}


def get_initialiser(name: str):
    """(function, config class) of a registered initialiser."""
    if name not in INITIALISERS:
        raise RetriktError(f"unknown initialiser {name!r}; known: {', '.join(sorted(INITIALISERS))}")
    mod, fn, cfg = INITIALISERS[name]
    module = importlib.import_module(mod)
    return getattr(module, fn), getattr(module, cfg)
