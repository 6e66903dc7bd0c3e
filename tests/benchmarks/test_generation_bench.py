import json

import pytest

from benchmarks import generation
from retrikt import models
from retrikt.teacher.softprompt import SoftPromptGenerator


def test_smoke_with_a_prompt_compares_both_samplers_on_the_same_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "RESULTS", tmp_path)
    model, tok = models.load_causal_lm("tiny-causal")
    SoftPromptGenerator(model, tok, n_virtual=20).save(tmp_path / "prompt")
    generation.main(["--smoke", "--task", "sst2", "--batch-sizes", "1", "4", "--prompt-dir", str(tmp_path / "prompt"),
                     "--natural-batch-sizes", "2", "4", "--natural-rows", "4", "--natural-max-new-tokens", "5"])
    out = json.loads((tmp_path / "generation_smoke.json").read_text())
    assert [r["batch_size"] for r in out["rows"]] == [1, 4]
    nat = out["natural"]
    assert [(r["batch_size"], r["sampler"]) for r in nat] == [(2, "hf"), (2, "compact"), (4, "hf"), (4, "compact")]
    for r in nat:
        assert r["samples"] == 4 and 4 <= r["useful_tokens"] <= 20
        assert r["samples_s"] == pytest.approx(4 / r["seconds"])
    md = (tmp_path / "generation_smoke.md").read_text()
    assert "Store-style sampling" in md and md.count("| compact |") == 2
