import json

import pytest

from benchmarks.draw_spread import DrawSpreadBench, collect, parse_draws, render, spread
from retrikt.io import RetriktError


def _run(folder, task, method, seed, main, entries):
    folder.mkdir(exist_ok=True)
    (folder / f"{task}__{method}__seed{seed}.json").write_text(json.dumps(
        {"task": task, "method": method, "seed": seed, "main": main, "store_entries": entries}))


def test_spread_is_the_range_over_draws_and_the_gap_is_per_draw(tmp_path):
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    for folder, kd, rk in ((d0, (0.78, 0.77), (0.79, 0.79)), (d1, (0.80, 0.76), (0.81, 0.78))):
        for s in (1, 2):
            _run(folder, "sst2", "kd", s, kd[s - 1], 1400)
            _run(folder, "sst2", "retrikt", s, rk[s - 1], 1400)
    _run(d1, "rte", "kd", 1, 0.1, 900)  # another task: ignored
    table = collect("sst2", [1, 2], parse_draws([f"0={d0}", f"1={d1}"]))
    sp = spread(table, [1, 2])
    assert sp["range"]["kd"] == pytest.approx({1: 0.02, 2: 0.01})
    assert sp["range"]["retrikt"] == pytest.approx({1: 0.02, 2: 0.01})
    assert sp["gap"]["0"] == pytest.approx({1: 0.01, 2: 0.02}) and sp["gap"]["1"] == pytest.approx({1: 0.01, 2: 0.02})
    text = render(DrawSpreadBench(seeds=[1, 2]), table, sp)
    assert "| kd, draw 1 (store entries) | 80.0 (1400) | 76.0 (1400) |" in text
    assert "| retrikt − kd, draw 0 | +1.0 | +2.0 |" in text


def test_a_seed_missing_from_one_draw_has_no_range(tmp_path):
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    _run(d0, "sst2", "kd", 1, 0.78, 10)
    _run(d0, "sst2", "kd", 2, 0.77, 10)
    _run(d1, "sst2", "kd", 1, 0.75, 10)
    sp = spread(collect("sst2", [1, 2], parse_draws([f"0={d0}", f"1={d1}"])), [1, 2])
    assert sp["range"]["kd"] == pytest.approx({1: 0.03})


@pytest.mark.parametrize("specs", [["0=a"], ["0=a", "b"], ["=a", "1=b"]])
def test_bad_draw_specs_are_refused(specs):
    with pytest.raises(RetriktError, match="--draws"):
        parse_draws(specs)
