"""Paired comparisons of two rows: McNemar counts and p, per-seed differences, the bootstrap's metrics."""
import numpy as np
import pytest

from retrikt.eval import paired
from retrikt.io import RetriktError
from retrikt.tasks import compute_metrics, get_task


def _run(method, seed, labels, preds, task="rte"):
    return {"method": method, "student": "s", "task": task, "seed": seed, "main": 0.0,
            "predictions": [{"idx": i, "label": y, "pred": p} for i, (y, p) in enumerate(zip(labels, preds))]}


@pytest.mark.parametrize("task", ["rte", "cb", "cola", "mrpc"])  # accuracy, 3-class, MCC, binary F1
def test_bootstrap_metrics_equal_the_task_metrics_on_every_resample(task):
    t = get_task(task)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, t.num_labels, 60), rng.integers(0, t.num_labels, 60)
    p[:5] = 0  # some agreement and some classes missing from a resample
    draws = rng.integers(0, 60, (25, 60))
    want = [compute_metrics(t, y[j], p[j])["main"] for j in draws]
    assert np.allclose(paired._resampled(t, y, p, draws), want)
    assert np.allclose(paired.confusion_metric("f1_macro", np.array([[[3, 0, 0], [1, 0, 0], [0, 0, 0]]])),
                       compute_metrics("cb", [0, 0, 0, 1], [0, 0, 0, 0])["f1_macro"])


def test_a_row_right_where_the_other_is_wrong_is_counted_and_tested_per_seed_and_pooled():
    y = [1, 0] * 20
    b = [1 - v for v in y[:12]] + y[12:]              # B wrong on the first 12
    a1 = y[:]                                          # seed 1: A right everywhere
    a2 = [1 - v for v in y[:2]] + y[2:]                # seed 2: A wrong on the first 2
    results = [_run("retrikt", 1, y, a1), _run("kd", 1, y, b), _run("retrikt", 2, y, a2), _run("kd", 2, y, b),
               _run("retrikt", 3, y, a1)]              # seed 3 has no kd run: not paired
    c = paired.compare_rows(results, "retrikt", "kd", "rte", n_boot=200)
    assert c["seeds"] == [1, 2] and c["n"] == 40
    assert np.allclose(c["delta_per_seed"], [12 / 40, 10 / 40]) and c["a_wins"] == 2 and c["b_wins"] == 0
    assert (c["a_only_right"], c["b_only_right"]) == (22, 0)
    assert c["mcnemar_p"] == pytest.approx(2 * 0.5 ** 22)
    lo, hi = c["ci95"]
    assert 0 < lo <= 11 / 40 <= hi
    table = paired.paired_table([c])
    assert "| retrikt − kd | rte | +27.5 | +30.0 / +25.0 | 2 / 2 | 22 / 0 | 0.000 |" in table


def test_equal_rows_differ_by_nothing_and_unpaired_or_malformed_input_is_refused():
    y = [0, 1, 1, 0, 1]
    same = paired.compare_rows([_run("a", 1, y, y), _run("b", 1, y, y)], "a", "b", "rte", n_boot=50)
    assert same["delta"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    assert paired.compare_rows([_run("a", 1, y, y)], "a", "b", "rte") is None
    with pytest.raises(RetriktError, match="different examples"):
        paired.compare_rows([_run("a", 1, y, y), _run("b", 1, y[:4], y[:4])], "a", "b", "rte")
    cola = paired.compare_rows([_run("a", 1, y, y, "cola"), _run("b", 1, y, [1] * 5, "cola")], "a", "b", "cola",
                               n_boot=50)
    assert "mcnemar_p" not in cola and cola["a_only_right"] == 2  # MCC-scored: counts, no test of the metric
    with pytest.raises(RetriktError, match="ROW_A:ROW_B"):
        paired.parse_pairs(["retrikt-kd"])
    assert paired.parse_pairs(["retrikt:kd"]) == [("retrikt", "kd")] and paired.parse_pairs(["none"]) == []
