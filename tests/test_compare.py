"""python -m retrikt.compare on tiny random models: table + plots, resumable, a killed run completes, missing listed."""
import pytest

import retrikt.train
from retrikt import compare

ARGS = ["--preset", "smoke", "--tasks", "cb", "--methods", "teacher", "finetune", "--seeds", "1", "2",
        "--epochs", "1", "--eval-limit", "8", "--shots", "6"]


def _args(tmp_path, *extra):
    return ARGS + ["--out", str(tmp_path / "cmp"), "--stores", str(tmp_path / "stores"), *extra]


def test_compare_writes_table_plots_and_does_not_recompute(tmp_path, monkeypatch, capsys):
    assert compare.main(_args(tmp_path)) == 0
    out = tmp_path / "cmp"
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    # the zero-shot teacher is deterministic: one run; finetune: one per seed
    assert len(runs) == 3 and sum("teacher" in r for r in runs) == 1
    table = (out / "table.md").read_text()
    assert "| teacher | tiny-causal |" in table and "| finetune | tiny-encoder |" in table
    assert (out / "accuracy_by_task.png").stat().st_size > 0 and (out / "accuracy_vs_size_speed.png").exists()
    assert len((out / "results.jsonl").read_text().splitlines()) == 3

    def must_not_run(*a, **k):
        raise AssertionError("a finished (method, task, seed) was recomputed")

    monkeypatch.setattr(retrikt.train, "run_one", must_not_run)
    assert compare.main(_args(tmp_path)) == 0


def test_killed_compare_completes_on_rerun_without_redoing_finished_runs(tmp_path, monkeypatch):
    real, calls = retrikt.train.run_one, []

    def dying(cfg, task, pool, seed):
        calls.append((cfg.method, seed))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", dying)
    with pytest.raises(KeyboardInterrupt):
        compare.main(_args(tmp_path))
    assert len(list((tmp_path / "cmp" / "runs").glob("*.json"))) == 1
    assert compare.main(_args(tmp_path)) == 0
    assert len(list((tmp_path / "cmp" / "runs").glob("*.json"))) == 3
    assert calls[2:] == [("finetune", 1), ("finetune", 2)]  # only what was missing ran again


def test_unavailable_method_is_listed_as_missing_not_skipped(tmp_path):
    args = _args(tmp_path)
    i = args.index("--methods")
    args[i + 1:i + 3] = ["finetune", "no-such-method"]
    assert compare.main(args) == 0
    assert "no-such-method: unknown method" in (tmp_path / "cmp" / "table.md").read_text()
