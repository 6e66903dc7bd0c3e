"""--method arithmetic: ``--method lora --init arithmetic`` under its own name, as the committed compare runs and
``retrikt.compare``'s arithmetic row (the mean of the other tasks' lora modules as the start) record it."""
from __future__ import annotations

import dataclasses

from retrikt.methods import lora
from retrikt.methods.base import Method

Config = lora.Config


def train(cfg: Config, task, examples: list[dict], seed: int):
    return lora.train(dataclasses.replace(cfg, init="arithmetic"), task, examples, seed)


METHOD = Method("arithmetic", Config, train, students=("encoder", "lm"), needs_lora_modules=True, default_lr=5e-4,
                help="lora started from a composition of saved modules (--adapters, --op)")
