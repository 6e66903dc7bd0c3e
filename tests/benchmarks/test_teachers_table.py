import json

from benchmarks.teachers import TeachersTable, cell_text, collect, mode_name


def _run(folder, method, cal, seed, main):
    folder.mkdir(parents=True, exist_ok=True)
    r = {"task": "cola", "method": method, "student": "qwen-1.5b", "seed": seed, "main": main, "n": 300,
         "calibration": cal}
    (folder / f"cola__{method}__qwen-1.5b__seed{seed}.json").write_text(json.dumps(r))


def test_a_batch_calibrated_teacher_is_its_own_row_beside_the_content_free_one(tmp_path):
    """Same method, model, task and seed, another calibration: both kept, in separate rows (not first-folder-wins)."""
    for s in (1, 2):
        _run(tmp_path / "a", "teacher-icl", "content-free", s, 0.15)
        _run(tmp_path / "b", "teacher-icl", "batch", s, 0.30)
        _run(tmp_path / "c", "teacher-icl", "content-free", s, 0.99)  # a later folder's duplicate loses
    table = collect(TeachersTable(runs=[str(tmp_path / x) for x in "abc"], seeds=[1, 2]))
    assert [r["main"] for r in table[("teacher-icl", "qwen-1.5b", "")]["cola"]] == [0.15, 0.15]
    assert [r["main"] for r in table[("teacher-icl", "qwen-1.5b", "batch")]["cola"]] == [0.30, 0.30]
    assert "batch-calibrated" in mode_name("teacher-icl", "batch")
    assert mode_name("teacher-icl", "") == "in-context, 4 demos, calibrated"


def test_a_calibration_that_cannot_apply_is_marked_not_missing():
    row = {"calibration": "batch", "cells": {"copa": None, "cb": None}}
    assert cell_text(row, "copa").startswith("n/a")          # multiple choice: no label bias
    assert cell_text(row, "cb") == "–"                         # could apply: simply not run
    assert cell_text({"calibration": None, "cells": {"copa": None}}, "copa") == "–"
