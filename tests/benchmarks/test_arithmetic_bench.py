"""benchmarks.arithmetic: data splits, the SST-2 detokeniser, and the whole --smoke run (tiny random models),
including that a rerun skips every finished (experiment, seed)."""
import dataclasses
import json

import numpy as np
import pytest
from retrikt.init.arithmetic import merge
from retrikt.tasks import get_task

from benchmarks.arithmetic import (EXPERIMENTS, RESULT_FIELDS, ArithmeticBench, encoder_module, fingerprint,
                                   load_state, main, module_state)
from benchmarks.arithmetic_classify import skewed_subsets
from benchmarks.arithmetic_unlearning import detokenize


def _train(n: int = 400) -> list[dict]:
    return [{"idx": i, "sentence": f"s{i}", "label": int(i % 3 != 0)} for i in range(n)]


def test_skewed_subsets_are_disjoint_and_skewed():
    s1, s2, held = skewed_subsets(_train(), 50, 0.8, 30, seed=1)
    ids = [{e["idx"] for e in part} for part in (s1, s2, held)]
    assert [len(p) for p in (s1, s2, held)] == [50, 50, 30]
    assert not (ids[0] & ids[1]) and not (ids[2] & (ids[0] | ids[1]))
    assert sum(e["label"] for e in s1) == 40 and sum(e["label"] for e in s2) == 10
    assert skewed_subsets(_train(), 50, 0.8, 30, seed=1)[0] == s1 != skewed_subsets(_train(), 50, 0.8, 30, seed=2)[0]


def test_every_result_setting_is_fingerprinted_per_experiment():
    used = set().union(*RESULT_FIELDS.values())
    fields = {f.name for f in dataclasses.fields(ArithmeticBench)}
    assert fields - used == {"experiments", "seeds", "device", "out_dir", "name"} and used <= fields
    base, other = ArithmeticBench(), ArithmeticBench(lm="qwen-0.5b", seeds=[7])
    assert [fingerprint(base, e) == fingerprint(other, e) for e in EXPERIMENTS] == [True, True, False]
    assert fingerprint(base, "distribution") != fingerprint(ArithmeticBench(head_lr=1e-3), "distribution")


def test_detokenize_undoes_ptb_spacing():
    assert detokenize("it 's slow -- very , very slow . ") == "It's slow -- very, very slow."
    assert detokenize("does n't ( really ) work `` here '' ; costs $ 5 !") == 'Doesn\'t (really) work "here"; costs $5!'


@pytest.mark.parametrize("ptype", ["lora", "ia3"])
def test_merge_at_lambda_one_is_the_first_module_head_included(ptype):
    task = get_task("sst2")
    data = [{"idx": i, "sentence": w, "label": i % 2} for i, w in enumerate("good bad great awful fine poor".split())]
    cfg = ArithmeticBench(encoder="tiny-encoder", epochs=2, batch_size=2)
    first, second = (encoder_module(cfg, task, d, ptype, 3, "cpu") for d in (data, data[::-1]))
    assert first.encoder.retrikt_init == second.encoder.retrikt_init
    states = [module_state(first), module_state(second)]
    assert not np.allclose(first.predict_proba(data), second.predict_proba(data))
    load_state(second, merge(states, [1.0, 0.0], ptype.upper(), head="merge"))
    np.testing.assert_allclose(second.predict_proba(data), first.predict_proba(data), atol=1e-6)


def test_smoke_run_writes_tables_and_resumes(tmp_path, capsys):
    argv = ["--smoke", "--seeds", "1", "--out-dir", str(tmp_path)]
    main(argv)
    result = json.loads((tmp_path / "arithmetic_smoke.json").read_text())
    exps = result["experiments"]
    assert set(exps) == {"distribution", "multitask", "unlearning"} and all(len(v) == 1 for v in exps.values())
    dist = exps["distribution"][0]["result"]
    assert dist["subset_pos_share"] == [13 / 16, 3 / 16]
    for ptype in ("lora", "ia3"):
        row = dist["rows"][ptype]
        assert row["shared_init"] and row["merged"]["lam"] in (0.3, 0.5) and row["merged-0.5"]["lam"] == 0.5
        assert set(row["merged"]["heldout_curve"]) == {"0.3", "0.5"}
    mt = exps["multitask"][0]["result"]
    assert mt["shared_init"] and set(mt["rows"]) == {"sst2", "cola"}
    unl = exps["unlearning"][0]["result"]
    assert unl["lam"] in (0.5, 1.0) and unl["rows"]["negated-1"]["lam"] == 1.0
    assert 0 <= unl["rows"]["negated"]["negative_share"] <= 1 and set(unl["heldout_curve"]) == {"0.5", "1.0"}
    assert unl["rows"]["base"]["ppl_val"] > 1 and 0 < unl["classifier"]["accuracy"] <= 1
    md = (tmp_path / "arithmetic_smoke.md").read_text()
    assert "## 1. Distribution" in md and "| ia3 | union |" in md and "| cola | mcc % |" in md
    assert "⊖ module (λ = 1)" in md and "Regenerate: `OMP_NUM_THREADS=1" in md
    lines = (tmp_path / "arithmetic_smoke.runs.jsonl").read_text().splitlines()
    assert len(lines) == 3
    capsys.readouterr()
    main(argv)
    assert capsys.readouterr().out.count("skipped") == 3
    assert (tmp_path / "arithmetic_smoke.runs.jsonl").read_text().splitlines() == lines
