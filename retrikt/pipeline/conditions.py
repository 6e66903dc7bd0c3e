"""What the generator is asked to continue: the label's header, same-label demonstrations, the chat template."""
from __future__ import annotations

import random

from retrikt.pipeline.config import BuildConfig
from retrikt.store.samples import chat_condition, condition, target


class Conditioner:
    """The generator's conditions: the label's header, after ``gen_demos`` same-label k-shot examples drawn anew for
    each sample (varied contexts, varied samples), inside the chat template when ``chat_template``."""

    def __init__(self, cfg: BuildConfig, task, tokenizer, kshot: list[dict]):
        self.cfg, self.task, self.tokenizer = cfg, task, tokenizer
        self.by_label = {lab: [e for e in kshot if int(e["label"]) == lab] for lab in range(task.num_labels)}

    def __call__(self, label: int, rng: random.Random, exclude: dict | None = None) -> str:
        pool = [e for e in self.by_label.get(label, []) if e is not exclude]
        demos = rng.sample(pool, min(self.cfg.gen_demos, len(pool))) if self.cfg.gen_demos else []
        if self.cfg.chat_template:
            return chat_condition(self.tokenizer, self.task, label, self.cfg.task_text, demos)
        return condition(self.task, label, self.cfg.task_text, demos)

    def batch(self, label: int, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self(label, rng) for _ in range(n)]

    def pairs(self, kshot: list[dict], seed: int) -> list[tuple[str, str]]:
        """(condition, target) for prompt tuning; an example is never its own demonstration."""
        rng = random.Random(seed)
        return [(self(int(e["label"]), rng, exclude=e), target(self.task, e)) for e in kshot]
