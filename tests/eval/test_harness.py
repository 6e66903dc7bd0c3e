import numpy as np
import pytest

from retrikt.eval import evaluate, markdown_table, summarise
from retrikt.tasks import get_task


class FixedStudent:
    def __init__(self, probs):
        self.probs = np.asarray(probs)

    def predict_proba(self, examples):
        return self.probs[: len(examples)]

    def num_parameters(self):
        return 1234


def test_evaluate_reports_hand_computed_metrics_predictions_and_size():
    task = get_task("cb")
    ex = [{"idx": i, "premise": "p", "hypothesis": "h", "label": y} for i, y in enumerate([0, 1, 2, 0])]
    probs = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
    res = evaluate(FixedStudent(probs), task, examples=ex)
    assert res["metrics"]["accuracy"] == pytest.approx(0.5)
    # macro F1: class0 P=1/2 R=1/2 -> .5; class1 P=1/2 R=1 -> 2/3; class2 -> 0
    assert res["metrics"]["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert [p["pred"] for p in res["predictions"]] == [0, 1, 0, 1]
    assert res["num_parameters"] == 1234 and res["n"] == 4 and res["examples_per_s"] > 0


def test_evaluate_skips_unlabelled_and_refuses_an_unlabelled_split():
    task = get_task("cb")
    ex = [{"idx": 0, "premise": "p", "hypothesis": "h", "label": None}]
    with pytest.raises(ValueError, match="no labelled"):
        evaluate(FixedStudent([[1, 0, 0]]), task, examples=ex)


def test_summary_mean_std_over_seeds():
    rs = [{"task": "cb", "method": "finetune", "student": "m", "seed": s, "main": v, "num_parameters": 10,
           "examples_per_s": 2.0} for s, v in zip([1, 2, 3], [0.5, 0.6, 0.7])]
    rows = summarise(rs)
    assert rows[0]["average"] == pytest.approx(0.6)
    table = markdown_table(rows, ["cb"])
    assert "60.0 ± 10.0" in table


def test_a_row_missing_a_task_gets_no_average_and_goes_last():
    rs = [{"task": t, "method": "full", "student": "m", "seed": 1, "main": v, "num_parameters": 10,
           "examples_per_s": 2.0} for t, v in [("cb", 0.5), ("rte", 0.6)]]
    rs.append({"task": "cb", "method": "partial", "student": "m", "seed": 1, "main": 0.9, "num_parameters": 10,
               "examples_per_s": 2.0})
    lines = markdown_table(summarise(rs), ["cb", "rte"]).splitlines()
    assert lines[2].startswith("| full |") and "| 55.0 |" in lines[2]
    assert lines[3].startswith("| partial |") and "| – (1/2 tasks) |" in lines[3] and "90.0" in lines[3]
