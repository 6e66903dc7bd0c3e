from collections import Counter

import pytest

from retrikt.io import RetriktError
from retrikt.tasks import sample_few_shot


def pool(counts, regression=False):
    """Examples whose label counts are ``counts`` ({label: count}), interleaved, idx = position."""
    labels = [lab for lab, c in sorted(counts.items()) for _ in range(c)]
    labels = labels[::2] + labels[1::2]
    return [{"text": f"t{i}", "label": float(lab) + 0.5 if regression else lab, "idx": i}
            for i, lab in enumerate(labels)]


def idxs(examples):
    return [ex["idx"] for ex in examples]


def per_label(examples):
    return dict(sorted(Counter(ex["label"] for ex in examples).items()))


def test_k_per_label_counts_and_reproducibility():
    data = pool({0: 115, 1: 119, 2: 16})
    shots = sample_few_shot(data, k_per_label=8, seed=3)
    assert per_label(shots) == {0: 8, 1: 8, 2: 8}
    assert len(set(idxs(shots))) == 24
    assert idxs(sample_few_shot(data, k_per_label=8, seed=3)) == idxs(shots)
    assert idxs(sample_few_shot(data, k_per_label=8, seed=4)) != idxs(shots)
    assert all(any(s is d for d in data) for s in shots)  # the same dicts, not copies


def test_input_order_does_not_matter():
    data = pool({0: 40, 1: 40})
    shuffled = data[::-1][:50] + data[::-1][50:]
    assert idxs(sample_few_shot(shuffled[::-1], k_per_label=5, seed=0)) == idxs(sample_few_shot(data, k_per_label=5))
    assert idxs(sample_few_shot(list(reversed(data)), n=7, seed=2)) == idxs(sample_few_shot(data, n=7, seed=2))


def test_pinned_draws_stay_the_same_across_versions():
    # only random.Random(seed).random() drives the shuffle: Python guarantees its stream never changes
    data = [{"text": str(i), "label": i % 3, "idx": i} for i in range(30)]
    assert idxs(sample_few_shot(data, k_per_label=2, seed=0)) == [27, 1, 12, 23, 14, 28]
    assert idxs(sample_few_shot(data, k_per_label=2, seed=1)) == [4, 8, 24, 20, 25, 0]
    assert idxs(sample_few_shot(data, n=5, seed=0)) == [12, 27, 1, 14, 28]


def test_label_with_too_few_examples_is_an_error():
    with pytest.raises(RetriktError, match="label 2 has 16"):
        sample_few_shot(pool({0: 115, 1: 119, 2: 16}), k_per_label=17)


def test_task_requires_every_label():
    with pytest.raises(RetriktError, match="label 2 has 0"):
        sample_few_shot(pool({0: 10, 1: 10}), k_per_label=2, task="cb")
    assert per_label(sample_few_shot(pool({0: 3, 1: 3, 2: 3}), k_per_label=2, task="cb")) == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("counts,n,expected", [
    ({0: 90, 1: 10}, 10, {0: 9, 1: 1}),
    ({0: 90, 1: 10}, 20, {0: 18, 1: 2}),
    ({0: 115, 1: 119, 2: 16}, 8, {0: 3, 1: 4, 2: 1}),  # 3.68 / 3.81 / 0.51 -> 4 / 4 / 0, then label 2 gets one
    ({0: 98, 1: 1, 2: 1}, 3, {0: 1, 1: 1, 2: 1}),
    ({0: 50, 1: 50, 2: 50}, 2, {0: 1, 1: 1}),  # fewer than the labels: largest remainder, ties by label
    ({0: 3, 1: 2}, 5, {0: 3, 1: 2}),
])
def test_n_is_stratified(counts, n, expected):
    shots = sample_few_shot(pool(counts), n=n, seed=0)
    assert len(shots) == n and len(set(idxs(shots))) == n
    assert per_label(shots) == expected


def test_regression_takes_n_only():
    data = pool({0: 20, 3: 20}, regression=True)
    shots = sample_few_shot(data, n=6, seed=1)
    assert len(shots) == 6 and idxs(shots) == idxs(sample_few_shot(data, n=6, seed=1))
    with pytest.raises(RetriktError, match="regression tasks take n="):
        sample_few_shot(data, k_per_label=2)


def test_unlabelled_examples():
    data = [{"text": "x", "label": None, "idx": i} for i in range(10)]
    assert len(sample_few_shot(data, n=4)) == 4
    with pytest.raises(RetriktError, match="unlabelled"):
        sample_few_shot(data, k_per_label=1)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"), ({"k_per_label": 2, "n": 4}, "exactly one"), ({"n": 0}, "positive int"),
    ({"k_per_label": 1.5}, "positive int"), ({"n": 101}, "only 100 examples"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(RetriktError, match=match):
        sample_few_shot(pool({0: 50, 1: 50}), **kwargs)
