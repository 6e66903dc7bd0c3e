import json

from benchmarks.selection_table import SelectionTable, slice_rows, slices
from retrikt.eval import load_results


def _run(folder, method, seed, main, **extra):
    r = {"task": "sst2", "method": method, "seed": seed, "main": main, **extra}
    (folder / f"sst2__{method}__s{seed}.json").write_text(json.dumps(r))


def test_each_retrikt_student_is_shown_under_every_rule_it_was_scored_with(tmp_path):
    for s, (kd, chosen, alone) in enumerate([(0.70, 0.75, 0.72), (0.66, 0.71, 0.70)], start=1):
        _run(tmp_path, "kd", s, kd)
        _run(tmp_path, "retrikt", s, chosen, store_entries=85,
             retrieval={"keys": "teacher", "beta": 0.5, "k": 4, "tau": 0.5},
             selection={"method": "4-fold CV, calibrated log-loss"},
             variants={"no retrieval at inference": {"main": alone}},
             predictions=[{"pred": 1}, {"pred": 1}, {"pred": 0}, {"pred": 1}])
    rows, chosen = slice_rows(load_results(tmp_path), [1, 2, 3])
    table = dict(rows)
    assert table["kd"] == {1: 0.70, 2: 0.66}
    assert table["retrikt, chosen setting"] == {1: 0.75, 2: 0.71}
    assert table["retrikt, no retrieval at inference"] == {1: 0.72, 2: 0.70}
    assert "retrikt, accuracy rule (old criterion)" not in table  # a rule the runs were not scored with: no row
    assert chosen[0].startswith("seed 1: 4-fold CV, calibrated log-loss: keys teacher, β 0.5, k 4")
    assert chosen[0].endswith("one class 75%")


def test_a_student_trained_without_the_relational_loss_is_its_own_row_not_the_chosen_one(tmp_path):
    base = dict(store_entries=85, retrieval={"keys": "store", "beta": 1.0, "k": 8, "tau": 0.5},
                selection={"method": "cv"}, predictions=[{"pred": 0}, {"pred": 1}])
    _run(tmp_path, "retrikt", 1, 0.75, config={"no_relational": False},
         variants={"keys student": {"main": 0.74}}, **base)
    (tmp_path / "sst2__retrikt-norel__s1.json").write_text(json.dumps(
        {"task": "sst2", "method": "retrikt", "seed": 1, "main": 0.70, "config": {"no_relational": True}, **base}))
    table = dict(slice_rows(load_results(tmp_path), [1, 2, 3])[0])
    assert table["retrikt, chosen setting"] == {1: 0.75}
    assert table["retrikt, keys student"] == {1: 0.74}
    assert table["retrikt, no relational loss (trained apart)"] == {1: 0.70}


def test_slicing_by_task_joins_the_students_trained_apart(tmp_path):
    grid, extra = tmp_path / "grid", tmp_path / "extra"
    grid.mkdir(), extra.mkdir()
    for task in ("sst2", "rte"):
        (grid / f"{task}__kd__s1.json").write_text(json.dumps({"task": task, "method": "kd", "seed": 1, "main": 0.6}))
    (extra / "rte__retrikt__s1.json").write_text(json.dumps({"task": "rte", "method": "retrikt", "seed": 1,
                                                              "main": 0.5, "config": {"no_relational": True}}))
    got = dict(slices(SelectionTable(runs=str(grid), tasks=["sst2", "rte"], extra=[str(extra)])))
    assert [r["method"] for r in got["sst2"]] == ["kd"]
    assert sorted(r["method"] for r in got["rte"]) == ["kd", "retrikt"]


def test_by_default_each_sub_folder_is_a_slice(tmp_path):
    for name in ("demo", "sst2-1k"):
        (tmp_path / name).mkdir()
        _run(tmp_path / name, "kd", 1, 0.7)
    assert [name for name, _ in slices(SelectionTable(runs=str(tmp_path)))] == ["demo", "sst2-1k"]


def test_a_run_recorded_before_the_se_margin_is_its_own_no_margin_row(tmp_path):
    """Runs chosen before the SE margin existed were chosen by the rule without it: their own score fills that row
    beside the reruns that carry it as a variant; runs under the margin without the variant leave the cell empty."""
    base = dict(store_entries=85, retrieval={"keys": "store", "beta": 1.0, "k": 8, "tau": 0.5},
                predictions=[{"pred": 0}, {"pred": 1}])
    _run(tmp_path, "retrikt", 1, 0.74, selection={"method": "cv", "se_margin": 1.0},
         variants={"no SE margin (session-11 rule)": {"main": 0.75}}, **base)
    _run(tmp_path, "retrikt", 2, 0.72, selection={"method": "cv", "se_margin": 1.0}, variants={}, **base)
    _run(tmp_path, "retrikt", 3, 0.77, selection={"method": "4-fold CV, calibrated log-loss"}, variants={}, **base)
    (tmp_path / "sst2__retrikt__s4.json").write_text(json.dumps(  # the old holdout rule: not the no-margin rule
        {"task": "sst2", "method": "retrikt", "seed": 4, "main": 0.6, "selection": {"method": "holdout accuracy"},
         "variants": {}, **base}))
    table = dict(slice_rows(load_results(tmp_path), [1, 2, 3, 4])[0])
    assert table["retrikt, chosen setting"] == {1: 0.74, 2: 0.72, 3: 0.77, 4: 0.6}
    assert table["retrikt, no SE margin (session-11 rule)"] == {1: 0.75, 3: 0.77}
