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


# ---- methods as declarations, the --init axis ----------------------------------------------------------------

def train_untrained(cfg, task, examples, seed):
    """A toy method (what one new file in retrikt/methods/ holds): score the student as --init starts it."""
    from retrikt.init.start import start_student
    student, facts = start_student(cfg, task, examples, seed, "cpu")
    return student, {**facts, "toy_examples": len(examples)}


def toy_method():
    from retrikt.init import INITS
    from retrikt.methods.base import Method, StudentConfig
    return Method("toy", StudentConfig, train_untrained, students=("encoder",), inits=tuple(INITS))


def test_a_new_method_is_one_file_and_one_registry_line(tmp_path, monkeypatch, capsys):
    from retrikt import compare
    from retrikt.methods import METHODS
    monkeypatch.setitem(METHODS, "toy", toy_method())     # the one registry line
    out = tmp_path / "runs"
    assert T.main(["--smoke", "--task", "cb", "--method", "toy", "--seeds", "1", "--eval-limit", "6",
                   "--out", str(out)]) == 0
    rec = json.loads((out / "cb__toy__tiny-encoder__seed1.json").read_text())
    assert rec["method"] == "toy" and rec["toy_examples"] == 8 and "init" not in rec and rec["config"]["init"] == "none"
    assert compare.main(["--smoke", "--tasks", "cb", "--methods", "toy", "finetune", "--epochs", "1",
                         "--eval-limit", "6", "--out", str(tmp_path / "cmp"), "--stores", str(tmp_path / "st")]) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| toy | tiny-encoder |" in table and "Missing" not in table and "Not run" not in table


def test_a_method_whose_options_are_not_flags_is_refused_with_the_fix(monkeypatch, capsys):
    import dataclasses

    from retrikt.config import arg
    from retrikt.methods import METHODS
    from retrikt.methods.base import StudentConfig

    @dataclasses.dataclass
    class Config(StudentConfig):
        toy_depth: int = arg(3, help="an option TrainConfig does not know")

    monkeypatch.setitem(METHODS, "toy", dataclasses.replace(toy_method(), config_cls=Config))
    assert T.main(["--smoke", "--task", "cb", "--method", "toy"]) == 2
    assert "options toy_depth are not in TrainConfig" in capsys.readouterr().err


def lora_modules(folder, tasks=("cola", "rte"), seed=1):
    """LoRA modules of tiny-encoder with one shared init (seed) and different, non-zero B: composable."""
    import torch

    from retrikt import models
    from retrikt.init.adapters import lora_config_for, save_adapter, seeded_peft_model
    out = []
    for i, task in enumerate(tasks):
        encoder, _ = models.load_encoder("tiny-encoder")
        peft_model = seeded_peft_model(encoder, lora_config_for(encoder, 4, 8, False), seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2, generator=torch.Generator().manual_seed(i))
        out.append(str(save_adapter(peft_model, folder / task, task=task)))
    return out


def test_retrikt_with_arithmetic_init_runs_end_to_end_and_records_the_init(tmp_path):
    from tests.student.test_retrieval import _tiny_store
    adapters = lora_modules(tmp_path / "modules")
    store = _tiny_store(tmp_path / "store")
    out = tmp_path / "runs"
    args = ["--smoke", "--task", "sst2", "--method", "retrikt", "--init", "arithmetic", "--adapters", *adapters,
            "--store", str(store), "--seeds", "1", "--eval-limit", "6", "--epochs", "1", "--out", str(out)]
    assert T.main(args) == 0
    rec = json.loads((out / "sst2__retrikt+arithmetic__tiny-encoder__seed1.json").read_text())
    assert (rec["method"], rec["init"], rec["config"]["method"], rec["config"]["init"]) == (
        "retrikt+arithmetic", "arithmetic", "retrikt", "arithmetic")
    assert rec["arithmetic"]["adapters"] == adapters and rec["store_entries"] == 12 and rec["refit"] is True
    assert T.main(args) == 0          # the same command resumes: the run is found under its combined name


def test_impossible_combinations_are_refused_with_a_reason(tmp_path, capsys):
    base = ["--smoke", "--task", "cb", "--out", str(tmp_path)]
    assert T.main(base + ["--method", "finetune", "--init", "parametric"]) == 2
    err = capsys.readouterr().err
    assert "--init parametric cannot start tiny-encoder, an encoder student: it starts causal-LM students" in err
    assert T.main(base + ["--method", "teacher", "--init", "arithmetic"]) == 2
    assert "it scores the teacher LLM, there is no student to start" in capsys.readouterr().err
    assert T.main(base + ["--method", "arithmetic", "--init", "port"]) == 2
    assert "use --method lora --init port to combine" in capsys.readouterr().err
    assert T.main(base + ["--method", "retrikt", "--student", "tiny-causal"]) == 2
    assert "tiny-causal is a causal LM" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())        # refused before any data was loaded or run
