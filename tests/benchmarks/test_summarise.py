import json

import pytest

from benchmarks.summarise import SummariseBench, collect


def _run(folder, method, seed, main):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"cb__{method}__m__seed{seed}.json").write_text(json.dumps(
        {"task": "cb", "method": method, "student": "m", "seed": seed, "main": main, "predictions": [1]}))


def test_labels_prefix_each_folders_rows_and_predictions_are_dropped(tmp_path):
    _run(tmp_path / "a", "kd", 1, 0.5)
    _run(tmp_path / "b", "kd", 1, 0.7)
    rows = collect(SummariseBench(runs=[str(tmp_path / "a"), str(tmp_path / "b")], labels=["sup", "ppo"]))
    assert sorted((r["method"], r["main"]) for r in rows) == [("ppo kd", 0.7), ("sup kd", 0.5)]
    assert all("predictions" not in r for r in rows)
    with pytest.raises(SystemExit, match="1 given for 2"):
        collect(SummariseBench(runs=[str(tmp_path / "a"), str(tmp_path / "b")], labels=["x"]))


def test_task_and_method_filters_apply_before_labels(tmp_path):
    _run(tmp_path / "a", "kd", 1, 0.5)
    _run(tmp_path / "a", "lora", 1, 0.6)
    rows = collect(SummariseBench(runs=[str(tmp_path / "a")], labels=["sup"], methods=["kd"]))
    assert [r["method"] for r in rows] == ["sup kd"]
    with pytest.raises(SystemExit, match="no results"):
        collect(SummariseBench(runs=[str(tmp_path / "a")], tasks=["rte"]))
