"""python -m retrikt.compare on tiny random models: table + plots, resumable, a killed run completes, missing listed."""
import dataclasses

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


def test_arithmetic_merges_the_other_tasks_lora_modules_after_they_exist(tmp_path, monkeypatch):
    real, seen = retrikt.train.run_one, []

    def spy(cfg, task, pool, seed):
        seen.append((cfg.method, cfg.task, list(cfg.adapters)))
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", spy)
    args = _args(tmp_path)
    i = args.index("--methods")
    args[i + 1:i + 3] = ["arithmetic"]          # lora is not asked for: its modules are trained anyway
    args[args.index("--tasks") + 1:args.index("--tasks") + 2] = ["cb", "rte"]
    args[args.index("--seeds") + 1:args.index("--seeds") + 3] = ["1"]
    assert compare.main(args) == 0
    runs = tmp_path / "cmp" / "runs"
    assert [(m, t) for m, t, _ in seen] == [("lora", "cb"), ("lora", "rte"), ("arithmetic", "cb"),
                                            ("arithmetic", "rte")]
    assert seen[2][2] == [str(runs / "rte__lora__tiny-encoder__seed1" / "encoder")]
    from retrikt.init.adapters import load_adapter
    assert load_adapter(seen[2][2][0]).sidecar["init_seed"] == 1    # shared, recorded init
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| arithmetic | tiny-encoder |" in table and "| lora |" not in table


def test_arithmetic_with_one_task_is_listed_as_missing(tmp_path):
    args = _args(tmp_path)
    i = args.index("--methods")
    args[i + 1:i + 3] = ["finetune", "arithmetic"]
    assert compare.main(args) == 0
    assert "arithmetic: merges the lora modules of the other tasks" in (tmp_path / "cmp" / "table.md").read_text()


def test_parametric_extracts_from_the_larger_teacher_not_the_store_teacher():
    cfg = compare.CompareConfig()
    tc = compare.train_config(cfg, "parametric", "cb", 1)
    assert (tc.teacher, tc.student) == ("qwen-1.5b", "qwen-0.5b")
    # the paper's recipe for the LM student (3 epochs, lr 3e-4 by default), not the encoders' 20 epochs
    assert (tc.epochs, tc.lr, tc.parametric_seeds) == (3, None, 32)
    assert compare.train_config(cfg, "lora", "cb", 1).epochs == 20
    from retrikt.methods import get_method, method_config
    assert method_config(tc, get_method("parametric")).lr == 3e-4
    assert compare.train_config(cfg, "kd", "cb", 1).teacher == "qwen-0.5b"


def test_shortening_the_encoder_inputs_leaves_the_lm_students_inputs_alone():
    cfg = compare.CompareConfig(max_length=128)
    assert compare.train_config(cfg, "parametric", "rte", 1).max_length == 256
    assert compare.train_config(cfg, "kd", "rte", 1).max_length == 128
    cfg = compare.CompareConfig(max_length=128, lm_max_length=64)
    assert compare.train_config(cfg, "parametric", "rte", 1).max_length == 64


def test_arithmetic_is_redone_when_the_grid_adds_a_task(tmp_path, monkeypatch):
    """Arithmetic merges the other tasks' modules, so a grid that grows changes its init: the old result is stale."""
    args = _args(tmp_path)
    i = args.index("--methods")
    args[i + 1:i + 3] = ["arithmetic"]
    args[args.index("--seeds") + 1:args.index("--seeds") + 3] = ["1"]
    t = args.index("--tasks")
    assert compare.main(args[:t + 1] + ["cb", "rte"] + args[t + 2:]) == 0
    real, seen = retrikt.train.run_one, []

    def spy(cfg, task, pool, seed):
        seen.append((cfg.method, cfg.task, len(cfg.adapters)))
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", spy)
    assert compare.main(args[:t + 1] + ["cb", "rte", "copa"] + args[t + 2:]) == 0
    # cb/rte lora are reused; copa's lora is new; all three arithmetic runs now merge two modules
    assert seen == [("lora", "copa", 0), ("arithmetic", "cb", 2), ("arithmetic", "rte", 2), ("arithmetic", "copa", 2)]
    seen.clear()
    assert compare.main(args[:t + 1] + ["cb", "rte", "copa"] + args[t + 2:]) == 0
    assert seen == []


def test_teacher_scored_before_calibration_is_rescored(tmp_path, monkeypatch):
    import json
    args = _args(tmp_path)
    assert compare.main(args) == 0
    teacher = next((tmp_path / "cmp" / "runs").glob("*teacher*.json"))
    r = json.loads(teacher.read_text())
    assert r["config"]["teacher_calibration"] == "content-free"
    del r["config"]["teacher_calibration"]              # a result written before the option existed: raw scores
    teacher.write_text(json.dumps(r))
    real, seen = retrikt.train.run_one, []

    def spy(cfg, task, pool, seed):
        seen.append(cfg.method)
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", spy)
    assert compare.main(args) == 0
    assert seen == ["teacher"]


def test_report_only_runs_nothing_and_lists_the_seeds_without_results(tmp_path, monkeypatch):
    assert compare.main(_args(tmp_path)) == 0        # teacher + finetune seeds 1 2

    def must_not_run(*a, **k):
        raise AssertionError("--report-only ran a job")

    monkeypatch.setattr(retrikt.train, "run_one", must_not_run)
    args = _args(tmp_path, "--report-only")
    args[args.index("--seeds") + 1:args.index("--seeds") + 3] = ["1", "2", "3"]
    assert compare.main(args) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "- finetune on cb: seeds 3" in table
    assert "teacher on cb" not in table               # deterministic: its one run covers every seed
    assert "--report-only" not in table               # the regenerate command reruns the grid


def test_kd_and_retrikt_runs_of_a_seed_use_the_store_built_from_that_seed():
    cfg = compare.CompareConfig(stores="st")
    assert compare.train_config(cfg, "kd", "cb", 2).store == "st/cb-qwen-0.5b-s2"
    assert compare.train_config(cfg, "retrikt", "rte", 3).store == "st/rte-qwen-0.5b-s3"
    assert compare.train_config(cfg, "finetune", "rte", 3).store is None
    smoke = compare.CompareConfig(stores="st", preset="smoke", teacher="tiny-causal")
    assert compare.store_path(smoke, "cb", 1) == compare.Path("st/cb-tiny-causal-s1-smoke")


def test_two_seeds_build_two_stores_and_each_seeds_runs_use_their_own(tmp_path, monkeypatch):
    import json

    from retrikt.teacher.softprompt import SoftPromptGenerator
    from tests.pipeline.test_build import _fake_generate
    monkeypatch.setattr(SoftPromptGenerator, "generate", _fake_generate)  # parseable samples from the tiny teacher
    args = _args(tmp_path)
    i = args.index("--methods")
    args[i + 1:i + 3] = ["kd", "retrikt"]
    assert compare.main(args) == 0
    stores, runs = tmp_path / "stores", tmp_path / "cmp" / "runs"
    manifests = {s: json.loads((stores / f"cb-tiny-causal-s{s}-smoke" / "manifest.json").read_text()) for s in (1, 2)}
    assert [manifests[s]["seed"] for s in (1, 2)] == [1, 2] and manifests[1]["kshot_idx"] != manifests[2]["kshot_idx"]
    for seed in (1, 2):
        for method in ("kd", "retrikt"):
            r = json.loads((runs / f"cb__{method}__tiny-encoder__seed{seed}.json").read_text())
            assert r["store"] == str(stores / f"cb-tiny-causal-s{seed}-smoke") and r["store_seed"] == seed
    assert "Missing" not in (tmp_path / "cmp" / "table.md").read_text()
    # a result trained on another store (as every seed was on the seed-1 store before) is redone, the rest kept
    path = runs / "cb__kd__tiny-encoder__seed2.json"
    r = json.loads(path.read_text())
    r["config"]["store"] = str(stores / "cb-tiny-causal-smoke")
    path.write_text(json.dumps(r))
    real, seen = retrikt.train.run_one, []

    def spy(cfg, task, pool, seed):
        seen.append((cfg.method, seed))
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", spy)
    assert compare.main(args) == 0
    assert seen == [("kd", 2)]


def test_a_method_with_an_init_is_a_row_of_its_own(tmp_path, monkeypatch):
    """finetune+arithmetic: the other tasks' lora modules (trained first) folded into a fully fine-tuned student."""
    import json
    real, seen = retrikt.train.run_one, []

    def spy(cfg, task, pool, seed):
        seen.append((cfg.method, cfg.init, cfg.task, list(cfg.adapters)))
        return real(cfg, task, pool, seed)

    monkeypatch.setattr(retrikt.train, "run_one", spy)
    args = _args(tmp_path)
    args[args.index("--methods") + 1:args.index("--methods") + 3] = ["finetune+arithmetic", "retrikt+parametric"]
    args[args.index("--tasks") + 1:args.index("--tasks") + 2] = ["cb", "rte"]
    args[args.index("--seeds") + 1:args.index("--seeds") + 3] = ["1"]
    assert compare.main(args) == 0
    runs = tmp_path / "cmp" / "runs"
    assert [s[:3] for s in seen] == [("lora", "none", "cb"), ("lora", "none", "rte"),
                                     ("finetune", "arithmetic", "cb"), ("finetune", "arithmetic", "rte")]
    assert seen[2][3] == [str(runs / "rte__lora__tiny-encoder__seed1" / "encoder")]
    rec = json.loads((runs / "cb__finetune+arithmetic__tiny-encoder__seed1.json").read_text())
    assert rec["init"] == "arithmetic" and rec["arithmetic"]["adapters"] == seen[2][3]
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| finetune+arithmetic | tiny-encoder |" in table
    assert "retrikt+parametric: --init parametric cannot start tiny-encoder, an encoder student" in table
    seen.clear()
    assert compare.main(args) == 0 and seen == []      # done under its own name: nothing reruns


def test_a_combination_reads_its_needs_from_the_method_and_the_init():
    cfg = compare.CompareConfig(stores="st", tasks=["sst2", "cola", "rte"])
    tc = compare.train_config(cfg, "retrikt+arithmetic", "sst2", 2)
    assert (tc.method, tc.init, tc.store, tc.op) == ("retrikt", "arithmetic", "st/sst2-qwen-0.5b-s2", "merge")
    assert [compare.Path(a).parent.name for a in tc.adapters] == ["cola__lora__minilm-l6__seed2",
                                                                  "rte__lora__minilm-l6__seed2"]
    assert compare.result_file(cfg, tc).name == "sst2__retrikt+arithmetic__minilm-l6__seed2.json"
    lm = compare.train_config(cfg, "lora+parametric", "rte", 1)
    assert (lm.student, lm.teacher, lm.epochs) == ("qwen-0.5b", "qwen-1.5b", 3)   # the LM pair, as parametric
    jobs = compare._jobs(dataclasses.replace(cfg, seeds=[1]), ["retrikt+arithmetic", "kd"])
    assert jobs[:3] == [("kd", "sst2", 1), ("kd", "cola", 1), ("kd", "rte", 1)]
    assert jobs[3:6] == [("lora", t, 1) for t in ("sst2", "cola", "rte")]
    assert [j[0] for j in jobs[6:]] == ["retrikt+arithmetic"] * 3
    with pytest.raises(compare.RetriktError, match="unknown init 'magic'"):
        compare.row("retrikt+magic")


def test_preset_file_then_user_yaml_then_command_line(tmp_path):
    """The issue's case: a YAML naming the demo preset with its own seeds ran seed 1 (the preset won)."""
    y = tmp_path / "mine.yaml"
    y.write_text("preset: demo\nseeds: [7, 8]\nepochs: 5\n")
    cfg = compare.parse_args(["--config", str(y)])
    assert (cfg.preset, cfg.seeds, cfg.epochs, cfg.tasks, cfg.out) == (
        "demo", [7, 8], 5, ["sst2"], "benchmarks/results/compare-demo")          # preset < YAML
    cfg = compare.parse_args(["--config", str(y), "--seeds", "9", "--tasks", "rte"])
    assert (cfg.seeds, cfg.tasks, cfg.epochs, cfg.per_label) == ([9], ["rte"], 5, 64)   # YAML < flags
    cfg = compare.parse_args(["--config", str(y), "--smoke"])                  # the flag's preset replaces demo's
    assert (cfg.preset, cfg.seeds, cfg.student, cfg.tasks) == ("smoke", [7, 8], "tiny-encoder",
                                                               compare.CompareConfig().tasks)
    y.write_text("preset: nosuch\n")
    with pytest.raises(compare.RetriktError, match="unknown preset 'nosuch'; known: default, demo, paper, smoke"):
        compare.parse_args(["--config", str(y)])


@pytest.mark.parametrize("name", ["default", "demo", "paper", "smoke"])
def test_every_shipped_preset_is_a_recipe_config_can_read(name):
    """A copy of a preset file passed with --config is the same run as --preset NAME."""
    path = compare.PRESETS / f"{name}.yaml"
    assert compare.parse_args(["--config", str(path)]) == compare.parse_args(["--preset", name])
    assert f"--preset {name}" in compare.regenerate_command(compare.parse_args(["--preset", name]))


def test_a_store_is_built_from_the_task_recipe_under_what_compare_fixes(tmp_path):
    from pathlib import Path

    from retrikt.compare import CompareConfig, build_config
    (tmp_path / "sst2.yaml").write_text("task: sst2\nseed: 7\nper_label: 900\nbatch_size: 32\nprompt_epochs: 5\n"
                                        "out: elsewhere\nteacher: qwen-1.5b\nmin_agreement: 0.7\nmin_entries: 800\n")
    cfg = CompareConfig(store_recipes=str(tmp_path), teacher="tiny-causal", prompt_epochs=2)
    b = build_config(cfg, "sst2", 3, Path("stores/x"))
    assert (b.batch_size, b.per_label, b.min_agreement, b.min_entries) == (32, 900, 0.7, 800)  # the recipe's
    assert (b.seed, b.teacher, b.out, b.prompt_epochs) == (3, "tiny-causal", "stores/x", 2)  # compare's
    cfg.min_agreement = 0.5  # a preset's own (the demo's)
    assert build_config(cfg, "sst2", 3, Path("stores/x")).min_agreement == 0.5
    cfg.per_label = 64  # a size asked for (the demo's) is built as asked, not grown to the recipe's min_entries
    assert (build_config(cfg, "sst2", 3, Path("stores/x")).per_label,
            build_config(cfg, "sst2", 3, Path("stores/x")).min_entries) == (64, 0)
    cfg.min_entries = 100
    assert build_config(cfg, "sst2", 3, Path("stores/x")).min_entries == 100
    assert build_config(cfg, "rte", 3, Path("stores/y")).batch_size == 8  # no recipe: retrikt.build's defaults


def test_smoke_stores_from_the_random_tiny_teacher_have_entries(tmp_path):
    """The smoke preset's stores come from a random teacher: no format, no end, near-identical embeddings. Its
    build settings must still let entries through, or every kd / retrikt cell of `compare --smoke` is missing."""
    args = ["--smoke", "--tasks", "rte", "--methods", "kd", "--seeds", "1", "--out", str(tmp_path / "cmp"),
            "--stores", str(tmp_path / "stores")]
    assert compare.main(args) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| kd | tiny-encoder |" in table and "Missing" not in table


def test_retrieval_keys_reach_the_retrikt_rows_only():
    cfg = compare.CompareConfig(retrieval_keys="teacher")
    assert compare.train_config(cfg, "retrikt", "sst2", 2).retrieval_keys == "teacher"
    assert compare.train_config(cfg, "kd", "sst2", 2).retrieval_keys == "auto"  # TrainConfig's default, unused


def test_batch_calibrated_zero_shot_teacher_runs_on_every_seed(tmp_path):
    """Batch calibration reads the seed's k-shot inputs, so the zero-shot teacher is no longer one run for all seeds."""
    plain, batch = compare.CompareConfig(seeds=[1, 2, 3]), compare.CompareConfig(seeds=[1, 2, 3],
                                                                                teacher_calibration="batch")
    assert compare.seeds_of(plain, "teacher") == [1]
    assert compare.seeds_of(batch, "teacher") == [1, 2, 3]
    assert compare.seeds_of(batch, "finetune") == [1, 2, 3]
    assert compare.train_config(batch, "teacher-icl", "cb", 2).teacher_calibration == "batch"
    assert compare.main(_args(tmp_path, "--teacher-calibration", "batch", "--methods", "teacher")) == 0
    runs = sorted(p.name for p in (tmp_path / "cmp" / "runs").glob("*.json"))
    assert len(runs) == 2 and all("teacher" in r for r in runs)


def test_cv_folds_reach_the_retrikt_rows_and_a_run_of_other_folds_is_redone(tmp_path):
    import json
    from retrikt.io import MANIFEST, sha256_file
    cfg = compare.CompareConfig(tasks=["cb"], seeds=[1], cv_folds=3, out=str(tmp_path / "cmp"),
                                stores=str(tmp_path / "stores"))
    tc = compare.train_config(cfg, "retrikt", "cb", 1)
    assert tc.cv_folds == 3
    assert compare.train_config(cfg, "kd", "cb", 1).cv_folds == 4  # TrainConfig's default, unused by kd
    store = tmp_path / "stores" / "cb-qwen-0.5b-s1"
    store.mkdir(parents=True)
    (store / MANIFEST).write_text("{}")
    assert tc.store == str(store)
    result = compare.result_file(cfg, tc)
    result.parent.mkdir(parents=True)

    def write(folds):
        config = dataclasses.asdict(tc) | {"cv_folds": folds}
        result.write_text(json.dumps({"config": config, "store_checksum": sha256_file(store / MANIFEST)}))
    write(3)
    assert compare._done(cfg, tc)
    write(4)  # settings chosen by another CV: not this table's row
    assert not compare._done(cfg, tc)
    config = dataclasses.asdict(tc)
    del config["cv_folds"]  # a run from before the CV: settings chosen on a held-out quarter
    result.write_text(json.dumps({"config": config, "store_checksum": sha256_file(store / MANIFEST)}))
    assert not compare._done(cfg, tc)


def test_paired_comparisons_are_written_under_the_table_and_a_bad_pair_fails_before_any_run(tmp_path, monkeypatch):
    import json
    assert compare.main(_args(tmp_path, "--paired", "finetune:teacher")) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "## Paired comparisons" in table and "| finetune − teacher | cb |" in table
    rec = json.loads((tmp_path / "cmp" / "paired.json").read_text())
    assert rec["comparisons"][0]["seeds"] == [1] and "git_commit" in rec  # the teacher's one run is seed 1's

    def must_not_run(*a, **k):
        raise AssertionError("a malformed --paired let the grid run")

    monkeypatch.setattr(retrikt.train, "run_one", must_not_run)
    assert compare.main(_args(tmp_path / "again", "--paired", "finetune-teacher")) == 2
    assert compare.main(_args(tmp_path, "--report-only", "--paired", "none")) == 0
    assert "Paired" not in (tmp_path / "cmp" / "table.md").read_text()
    assert not (tmp_path / "cmp" / "paired.json").exists()


def test_a_task_recipe_sets_its_methods_options_on_that_tasks_rows_only(tmp_path):
    (tmp_path / "sst2.yaml").write_text("retrikt:\n  key_align: 30\n  rel_weight: 2\nkd:\n  store_prior: kshot\n")
    cfg = compare.CompareConfig(train_recipes=str(tmp_path))
    tc = compare.train_config(cfg, "retrikt", "sst2", 2)
    assert (tc.key_align, tc.rel_weight, tc.store_prior) == (30, 2, "none")
    assert compare.train_config(cfg, "kd", "sst2", 2).store_prior == "kshot"
    assert compare.train_config(cfg, "retrikt", "cb", 2).key_align == 1.0    # no cb.yaml: the defaults
    assert compare.train_config(cfg, "finetune", "sst2", 2).key_align == 1.0  # no section for finetune
    smoke = compare.CompareConfig(train_recipes=str(tmp_path), preset="smoke")
    assert compare.train_config(smoke, "retrikt", "sst2", 2).key_align == 1.0  # random tiny models: not read


@pytest.mark.parametrize("text, why", [
    ("retrikt:\n  key_algn: 30\n", "retrikt has no option key_algn"),
    ("retrikt:\n  cv_folds: 3\n", "cv_folds is set by retrikt.compare"),
    ("retrikt:\n  epochs: 3\n", "epochs is set by retrikt.compare"),
    ("retrkt:\n  key_align: 30\n", "unknown method 'retrkt'"),
    ("retrikt: 30\n", "expected method: {option: value}"),
    ("retrikt:\n  key_align: strong\n", "key_align"),
])
def test_a_bad_task_recipe_is_refused_naming_the_file_and_the_option(tmp_path, text, why):
    (tmp_path / "sst2.yaml").write_text(text)
    cfg = compare.CompareConfig(train_recipes=str(tmp_path))
    with pytest.raises(compare.RetriktError) as e:
        compare.train_config(cfg, "retrikt", "sst2", 1)
    assert why in str(e.value) and "sst2.yaml" in str(e.value)


def test_a_bad_task_recipe_fails_before_any_run(tmp_path):
    """A typo in the second task's recipe makes the row missing, with its reason, before the first task's runs."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "rte.yaml").write_text("finetune:\n  lr: fast\n")
    args = ["--tasks", "cb", "rte", "--methods", "finetune", "--seeds", "1", "--out", str(tmp_path / "cmp"),
            "--stores", str(tmp_path / "stores"), "--train-recipes", str(recipes)]
    assert compare.main(args) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "rte.yaml" in table.split("Missing:")[1]
    assert not list((tmp_path / "cmp" / "runs").glob("*.json"))


def test_a_run_trained_with_other_recipe_options_is_redone(tmp_path):
    import json
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "cb.yaml"
    cfg = compare.CompareConfig(tasks=["cb"], seeds=[1], out=str(tmp_path / "cmp"), train_recipes=str(recipe.parent))
    recipe.write_text("finetune:\n  lr: 0.001\n")
    tc = compare.train_config(cfg, "finetune", "cb", 1)
    result = compare.result_file(cfg, tc)
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"config": dataclasses.asdict(tc)}))
    assert compare._done(cfg, tc)
    recipe.write_text("finetune:\n  lr: 0.0001\n")  # chosen anew: the run on record is not this row's
    tc = compare.train_config(cfg, "finetune", "cb", 1)
    assert not compare._done(cfg, tc)


def test_a_store_under_the_recipes_min_entries_is_used_with_a_warning_naming_the_growth_command(tmp_path, caplog):
    import json
    import logging

    from retrikt.compare import CompareConfig, ensure_store, store_path
    (tmp_path / "sst2.yaml").write_text("min_entries: 10\n")
    cfg = CompareConfig(store_recipes=str(tmp_path), stores=str(tmp_path / "stores"))
    path = store_path(cfg, "sst2", 3)
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"counts": {"entries": 5}}))
    with caplog.at_level(logging.WARNING):
        assert ensure_store(cfg, "sst2", 3) == path  # not rebuilt: the work already done is kept
    assert any("5 entries, under min_entries 10" in r.getMessage() and "--min-entries 10" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    (path / "manifest.json").write_text(json.dumps({"counts": {"entries": 10}}))
    ensure_store(cfg, "sst2", 3)
    assert not caplog.records
