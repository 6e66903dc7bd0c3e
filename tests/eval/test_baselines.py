from retrikt.eval import baselines, markdown_table, summarise


def _split(task, split, data_dir=None):
    labels = [1, 1, 1, 0] if split == "train" else [0, 1, 1, 1, 1, 1, 0, 0]
    return [{"idx": i, "sentence1": "a", "sentence2": "b", "label": y} for i, y in enumerate(labels)]


def test_majority_record_predicts_the_training_majority_and_scores_it_like_a_run(monkeypatch):
    monkeypatch.setattr(baselines, "load_split", _split)
    r = baselines.majority_record("mrpc")  # F1-scored: the majority class (1) scores F1 0.77 here
    assert r["majority_label"] == "equivalent" and r["n"] == 8
    assert abs(r["main"] - 2 * 5 / (2 * 5 + 3)) < 1e-9  # F1 with 5 TP, 3 FP, 0 FN
    assert baselines.majority_record("stsb") is None  # regression: no label to be the majority


def _run(preds, main=0.5, method="retrikt", seed=1):
    return {"method": method, "student": "s", "task": "rte", "seed": seed, "main": main,
            "predictions": [{"pred": p} for p in preds]}


def test_runs_predicting_one_class_are_marked_in_the_table():
    assert baselines.one_class_share(_run([1] * 9 + [0])) == 0.9
    assert baselines.collapsed(_run([1] * 9 + [0])) and not baselines.collapsed(_run([1] * 8 + [0, 0]))
    rows = summarise([_run([1] * 10), _run([0, 1] * 5, seed=2), _run([0, 1] * 5, method="finetune")])
    table = markdown_table(rows, ["rte"])
    assert "50.0 ± 0.0 †1" in table and "†N: N runs" in table
    assert "| finetune | s | 50.0 |" in table  # one seed: no spread shown, no mark
