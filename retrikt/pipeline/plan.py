"""How many samples each label gets, in which batches, and how long a sample may be."""
from __future__ import annotations

import math
from collections import Counter

from retrikt.pipeline.config import BuildConfig
from retrikt.store.samples import target


BATCH_STRIDE = 100_000  # batch id = label x BATCH_STRIDE + the batch's number within its label
DRAW_STRIDE = 1_000_000  # --draw N shifts the sampling seed past any k-shot seed in use
MAX_SAMPLES_FACTOR = 3  # --min-entries without --max-samples: at most this many times the planned samples
MIN_KEEP_RATE = 0.05  # --min-entries: a round assumes at least this keep rate (a store that keeps none still grows)
ROUND_MARGIN = 1.1  # --min-entries: a round generates 10% more than the keep rate so far says it needs


def sampling_seed(cfg: BuildConfig) -> int:
    """The seed every sampling step of a build derives from: the k-shot seed for draw 0 (so stores built before
    --draw existed rebuild identically), shifted by the draw otherwise; the k-shot set, the tuned prompt and the
    adapted labeller stay the seed's."""
    return cfg.seed + DRAW_STRIDE * cfg.draw


def _split(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``: the floors, then the leftover one at a time to the largest
    remainders (ties: the lower index)."""
    exact = [total * w / max(1, sum(weights)) for w in weights]
    parts = [math.floor(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: (parts[i] - exact[i], i))[:total - sum(parts)]:
        parts[i] += 1
    return parts


def label_counts(task, cfg: BuildConfig, kshot: list[dict]) -> list[int]:
    """Samples to generate (an oracle store: inputs to draw) per label.

    uniform: ``per_label`` each. kshot: ``per_label x num_labels`` in all, split in proportion to the k-shot set's
    label counts: the floors, then the leftover one at a time to the largest remainders (ties: the lower label); then
    each label the k-shot set holds is raised to one batch (``batch_size``, or an equal share of the total when that
    is smaller), one sample at a time from the largest count (ties: the lower label). A label the k-shot set lacks
    gets none: the prompt and the labeller saw no example of it."""
    n = task.num_labels
    if cfg.label_mix == "uniform":
        return [cfg.per_label] * n
    seen = Counter(int(e["label"]) for e in kshot)
    total = cfg.per_label * n
    counts = _split(total, [seen[lab] for lab in range(n)])
    present = [lab for lab in range(n) if seen[lab]]
    least = min(cfg.batch_size, total // max(1, len(present)))
    for lab in present:
        while counts[lab] < least:  # the largest count is above `least` while any present label is below it
            donor = max(range(n), key=lambda d: (counts[d], -d))
            counts[donor], counts[lab] = counts[donor] - 1, counts[lab] + 1
    return counts


def more_batches(plan: list[tuple[int, int, int]], counts: list[int], kept: int,
                 cfg: BuildConfig) -> list[tuple[int, int, int]]:
    """--min-entries: the next round of batches for a store that keeps ``kept`` entries of the ``plan``'s samples;
    none when it keeps enough, keeps nothing (another round would keep nothing either), or the samples reach
    --max-samples (default 3 x the planned ``counts``; a round may pass it by less than a batch per label).

    The round is the shortfall over the keep rate so far (at least MIN_KEEP_RATE), plus ROUND_MARGIN, split in the
    planned label mix, in whole batches that continue each label's numbering. An extra batch's id thus always means
    the same ``batch_size`` samples, whichever round planned it: a resumed build plans the same rounds, and a re-run
    with another --min-entries reuses the batches it shares with the earlier run and ends as a fresh build would."""
    done = sum(n for _, _, n in plan)
    room = (cfg.max_samples or MAX_SAMPLES_FACTOR * sum(counts)) - done
    if kept >= cfg.min_entries or not kept or room <= 0:
        return []
    rate = max(kept / done, MIN_KEEP_RATE)
    want = _split(min(room, math.ceil((cfg.min_entries - kept) / rate * ROUND_MARGIN)), counts)
    made = Counter(label for _, label, _ in plan)
    return [(label * BATCH_STRIDE + made[label] + j, label, cfg.batch_size)
            for label, count in enumerate(want) for j in range(math.ceil(count / cfg.batch_size))]


def batch_plan(counts: list[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(batch_id, label, n) for every batch, ``counts[label]`` samples per label. An id depends only on the label and
    the batch's number within it, and the counts only on the config and the seed's k-shot set, so a resumed build
    plans the same batches and skips the finished ones."""
    plan = []
    for label, count in enumerate(counts):
        for j in range(math.ceil(count / batch_size)):
            plan.append((label * BATCH_STRIDE + j, label, min(batch_size, count - j * batch_size)))
    return plan


def auto_max_new_tokens(task, tok, kshot: list[dict]) -> tuple[int, int]:
    """(max_new_tokens, longest k-shot target in tokens): 1.5 x the longest target, rounded up, plus 8, so a sample
    as long as the longest real example still ends with room to spare."""
    longest = max(len(tok(target(task, e), add_special_tokens=False)["input_ids"]) for e in kshot)
    return math.ceil(1.5 * longest) + 8, longest
