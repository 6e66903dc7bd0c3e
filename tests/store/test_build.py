"""The build pipeline with tiny random models and a scripted generator: filtering, stats and kill-and-resume."""
import json

import pytest

from retrikt.io import read_jsonl
from retrikt.store import Store
from retrikt.store import build as B
from retrikt.store.softprompt import SoftPromptGenerator

WORDS = "the a good bad movie film man woman dog cat ran sat big small red blue old new".split()


def _fake_generate(self, conditions, n_per_condition=1, seed=0, **kw):
    """Deterministic, parseable samples that depend on the seed (like real sampling) and include one copy and
    one exact duplicate per batch."""
    out = []
    for i in range(n_per_condition):
        w = [WORDS[(seed * 7 + i * 3 + j) % len(WORDS)] for j in range(6)]
        text = f" {' '.join(w[:3])} {seed % 997} {i}\nhypothesis: {' '.join(w[3:])} {seed % 991}"
        out.append({"condition": conditions[0], "text": text, "tokens": [1] * 10, "finished": True})
    out.append(dict(out[0]))  # an exact duplicate
    out.append({"condition": conditions[0], "text": " cut off", "tokens": [1] * 3, "finished": False})
    return out


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(SoftPromptGenerator, "generate", _fake_generate)
    return B.BuildConfig(task="cb", teacher="tiny-causal", embedder="tiny-encoder", per_label=4, batch_size=2,
                         shots=8, prompt_epochs=1, label_demos=1, dedup_threshold=0.9999,
                         out=str(tmp_path / "store"))


def _keys(store):
    return sorted(json.dumps(e["fields"], sort_keys=True) for e in store.entries(range(len(store))))


def test_build_filters_labels_and_records_stats(cfg):
    path = B.build_store(cfg)
    store = Store.open(path, expected_embedder={"name": "tiny-encoder", "dim": 64})
    log = read_jsonl(path / "build_log.jsonl")
    assert len(log) == 6  # 3 labels x 2 batches
    assert all(r["generated"] == 4 and r["parsed"] == 3 and r["exact_dups"] == 1 for r in log)
    assert len(store) == 12 and len(set(_keys(store))) == 12
    e = store.entries([0])[0]
    assert len(e["soft_label"]) == 3 and abs(sum(e["soft_label"]) - 1) < 1e-4
    stats = store.manifest["stats"]
    assert stats["parse_rate"] == pytest.approx(18 / 24) and stats["kept"] == 12


def test_killed_build_resumes_without_duplicates_or_losses(cfg, tmp_path, monkeypatch):
    reference = Store.open(B.build_store(cfg))
    calls = {"n": 0}
    real = B.Filter.__call__

    def dying(self, samples, embedder):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed halfway through the fourth batch
        return real(self, samples, embedder)

    cfg.out = str(tmp_path / "resumed")
    monkeypatch.setattr(B.Filter, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        B.build_store(cfg)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    calls["n"] = -100  # count the second run's batches without dying again
    resumed = Store.open(B.build_store(cfg))
    assert calls["n"] == -100 + 3  # the 3 batches finished before the kill were not generated again
    assert _keys(resumed) == _keys(reference)
    assert (tmp_path / "resumed" / "prompt" / "manifest.json").exists()


def test_regression_task_is_refused(cfg):
    cfg.task = "stsb"
    with pytest.raises(Exception, match="regression"):
        B.build_store(cfg)


def test_task_text_changes_the_prompt_key_and_leaves_older_keys_alone():
    import dataclasses
    import hashlib
    import json

    from retrikt.store.build import BuildConfig, prompt_key
    cfg = BuildConfig(task="sst2")
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    before = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]
    assert prompt_key(cfg) == before      # a prompt tuned before the option existed is still reused
    assert prompt_key(dataclasses.replace(cfg, task_text="description")) != before
