"""--method port: ``--method lora --init port`` under its own name; its runs are tagged with the condition."""
from __future__ import annotations

import dataclasses

from retrikt.methods import lora
from retrikt.methods.base import Method

Config = lora.Config


def train(cfg: Config, task, examples: list[dict], seed: int):
    student, extra = lora.train(dataclasses.replace(cfg, init="port"), task, examples, seed)
    return student, {**extra, "tag": cfg.condition}


METHOD = Method("port", Config, train, students=("encoder", "lm"), default_lr=5e-4,
                help="a module from another host, ported (--adapters, --condition), then trained")
