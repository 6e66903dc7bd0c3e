"""python -m retrikt.train on tiny models: table, results JSON, resume of finished seeds, clear errors."""
import json

import retrikt.train as T

ARGS = ["--smoke", "--task", "cb", "--method", "finetune", "--seeds", "1", "2", "--eval-limit", "6", "--epochs", "1"]


def test_train_writes_results_and_resumes_only_same_config(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "runs")
    assert T.main(ARGS + ["--out", out]) == 0
    files = sorted((tmp_path / "runs").glob("*.json"))
    assert [f.name for f in files] == ["cb__finetune__tiny-encoder__seed1.json", "cb__finetune__tiny-encoder__seed2.json"]
    rec = json.loads(files[0].read_text())
    assert rec["config"]["epochs"] == 1 and rec["seeds"] == [1, 2] and "torch" in rec["versions"]
    assert "| finetune | tiny-encoder |" in capsys.readouterr().out

    calls = []
    real = T.run_one
    monkeypatch.setattr(T, "run_one", lambda *a: calls.append(a[-1]) or real(*a))
    assert T.main(ARGS + ["--out", out]) == 0
    assert calls == []  # same config: both seeds reused
    assert T.main(ARGS + ["--out", out, "--lr", "1e-4"]) == 0
    assert calls == [1, 2]  # another config: recomputed, never a stale result


def test_unknown_task_and_method_fail_clearly(tmp_path, capsys):
    assert T.main(["--task", "nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert T.main(["--task", "cb", "--method", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_causal_lm_students_and_adapted_teachers_are_saved_and_reloaded_by_retrikt_eval(tmp_path):
    """--save-student used to do nothing for causal-LM students; now every kind saves, and retrikt.eval reloads it."""
    import numpy as np

    from retrikt.eval.__main__ import load_saved
    from retrikt.tasks import get_task, load_split
    task = get_task("cb")
    val = load_split(task, "validation")[:4]
    for method, extra in (("lora", ["--student", "tiny-causal"]), ("teacher-lora", ["--adapt-epochs", "1"]),
                          ("teacher-icl", [])):
        out = tmp_path / method
        args = ["--smoke", "--task", "cb", "--method", method, "--seeds", "1", "--eval-limit", "4", "--epochs", "1",
                "--save-student", "--out", str(out)] + extra
        assert T.main(args) == 0
        folder = next(p for p in out.iterdir() if p.is_dir())
        rec = json.loads(folder.with_suffix(".json").read_text())
        reloaded = load_saved(folder, task, None, None)
        np.testing.assert_allclose(reloaded.predict_proba(val), [p["probs"] for p in rec["predictions"][:4]],
                                   atol=1e-4)
        assert (folder / "adapter" / "adapter_model.safetensors").exists() == (method != "teacher-icl")
