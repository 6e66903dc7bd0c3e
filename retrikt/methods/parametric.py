"""--method parametric: ``--method lora --init parametric`` under its own name and with the paper's learning rate
(Seeking Neural Nuggets, ICLR 2024: 3e-4), as the committed runs record it."""
from __future__ import annotations

import dataclasses

from retrikt.methods import lora
from retrikt.methods.base import Method

Config = lora.Config


def train(cfg: Config, task, examples: list[dict], seed: int):
    return lora.train(dataclasses.replace(cfg, init="parametric"), task, examples, seed)


METHOD = Method("parametric", Config, train, students=("lm",), default_lr=3e-4,
                help="a causal-LM student's LoRA started from SVD factors of a larger teacher's blocks")
