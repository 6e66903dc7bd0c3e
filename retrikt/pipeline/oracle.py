"""The oracle reference store's inputs: real training examples in place of generated samples.

An oracle store answers "how good could the store be if generation were perfect?": the same labeller, filters,
embedder and writer as a generated store, but its entries are training inputs the seed's k-shot run never saw. Gold
labels only stratify the draw (so the store keeps the planned label mix); entries carry the labeller's labels.
"""
from __future__ import annotations

import logging

from retrikt.tasks import sample_few_shot

logger = logging.getLogger(__name__)


def oracle_inputs(task, pool: list[dict], kshot: list[dict], counts: list[int], seed: int) -> dict[int, list[dict]]:
    """Per gold label, ``counts[label]`` training inputs: a seeded sample of that label's training examples minus
    the k-shot ones (all of them, with a warning, when there are fewer)."""
    used = {e["idx"] for e in kshot}
    groups: dict[int, list[dict]] = {lab: [] for lab in range(task.num_labels)}
    for e in pool:
        if e["idx"] not in used:
            groups[int(e["label"])].append(e)
    drawn = {}
    for lab, want in enumerate(counts):
        have = groups[lab]
        if want > len(have):
            logger.warning("oracle store: label %s wants %d inputs, the training split has %d outside the k-shot set",
                           task.label_names[lab], want, len(have))
        # one label's examples: sample_few_shot is then a plain seeded sample, reproducible across Python versions
        drawn[lab] = sample_few_shot(have, n=min(want, len(have)), seed=seed) if want and have else []
    return drawn


def oracle_draw(task, drawn: dict[int, list[dict]], batch_size: int, stride: int):
    """``draw(batch_id, label, n)`` for :func:`retrikt.pipeline.run.generate_shard`: the batch's slice of the drawn
    inputs, as already-parsed samples with no conditioned label (the labeller's argmax becomes the label) and
    their training-split ``idx``; the gold label stays behind."""
    def draw(batch_id: int, label: int, n: int) -> list[dict]:
        start = (batch_id % stride) * batch_size
        return [{"fields": {f: e[f] for f in task.text_fields}, "idx": e["idx"], "label": None, "tokens": [],
                 "finished": True} for e in drawn[label][start:start + n]]
    return draw
