import math

import numpy as np
import pytest

from retrikt.io import RetriktError
from retrikt.tasks import compute_metrics, get_task

Y = [1, 0, 1, 1, 0]
P = [1, 1, 1, 0, 0]  # TP 2, TN 1, FP 1, FN 1


def test_mrpc_f1_and_accuracy():
    m = compute_metrics("mrpc", Y, P)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["main"] == m["f1"]
    assert set(m) == {"f1", "accuracy", "main"}


def test_f1_is_for_the_positive_class_1():
    # swapping the classes changes binary F1: TP 1, FP 1, FN 1 for class 1 here
    m = compute_metrics("qqp", [0, 1, 0, 0, 1], [0, 0, 0, 1, 1])
    assert m["f1"] == pytest.approx(0.5)


def test_cola_matthews():
    m = compute_metrics(get_task("cola"), np.array(Y), np.array(P))
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert m["main"] == m["mcc"]


def test_cb_accuracy_and_macro_f1():
    m = compute_metrics("cb", [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    # per class F1: 0 -> P 1/2 R 1/2 = 0.5; 1 -> P 2/3 R 1 = 0.8; 2 -> P 1 R 1/2 = 2/3
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["main"] == m["accuracy"]


def test_stsb_correlations():
    m = compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 10.0])
    pearson = 14 / math.sqrt(5 * 50)
    assert m["pearson"] == pytest.approx(pearson)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson_spearman_mean"] == pytest.approx((pearson + 1.0) / 2)
    assert m["main"] == m["pearson_spearman_mean"]
    m = compute_metrics("stsb", [1, 2, 3, 4], [1, 3, 2, 4])
    assert m["pearson"] == pytest.approx(0.8) and m["spearman"] == pytest.approx(0.8)


def test_stsb_constant_predictions_give_nan():
    assert math.isnan(compute_metrics("stsb", [1.0, 2.0, 3.0], [2.5, 2.5, 2.5])["main"])


def test_multirc_f1a_and_exact_match():
    examples = [{"paragraph_idx": 0, "question_idx": 0}] * 3 + [{"paragraph_idx": 0, "question_idx": 1}] * 2
    labels, preds = [1, 0, 1, 0, 1], [1, 0, 1, 1, 1]  # question 0 all right, question 1 one wrong
    m = compute_metrics("multirc", labels, preds, examples=examples)
    assert m["em"] == pytest.approx(0.5)
    assert m["f1a"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    assert m["main"] == m["f1a"]
    assert "em" not in compute_metrics("multirc", labels, preds)


def test_accuracy_with_bool_and_integral_float_predictions():
    assert compute_metrics("boolq", [1, 0, 1, 1], np.array([True, False, False, True]))["accuracy"] == 0.75
    assert compute_metrics("boolq", [1, 0, 1, 1], [1.0, 0.0, 0.0, 1.0])["accuracy"] == 0.75


@pytest.mark.parametrize("labels,preds,match", [
    ([0, 1], [0], "2 labels but 1 predictions"),
    ([], [], "no examples"),
    ([0, None], [0, 1], r"labels\[1\] is None"),
    ([0, 1], [0, 3], "outside 0..2"),
    ([0, 1], [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]], "argmax"),
    ([0, 1], [0.4, 1.0], "non-integer"),
    ([0, 1], ["a", "b"], "label ints"),
])
def test_bad_inputs(labels, preds, match):
    with pytest.raises(RetriktError, match=match):
        compute_metrics("cb", labels, preds)


def test_skipped_task_cannot_be_scored():
    with pytest.raises(RetriktError, match="not supported"):
        compute_metrics("record", [0], [0])


def test_exact_match_needs_question_ids():
    with pytest.raises(RetriktError, match="question_idx"):
        compute_metrics("multirc", [0, 1], [0, 1], examples=[{"idx": 0}, {"idx": 1}])
