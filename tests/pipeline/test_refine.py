"""The RL stage of a store build, on tiny random models: it refines the prompt, logs, and is reused on resume."""
import json

import numpy as np
import pytest
import torch

from retrikt.io import read_jsonl
from retrikt.pipeline import config as refine_config, refine
from retrikt.pipeline.config import SMOKE, BuildConfig
from retrikt.pipeline.run import build_store


@pytest.mark.parametrize("rl", ["ppo"])
def test_build_with_ppo_refines_the_prompt_and_resumes(tmp_path, rl, monkeypatch):
    cfg = BuildConfig(**{**SMOKE, "task": "cb", "out": str(tmp_path / "store"), "rl": rl, "rl_steps": 2,
                         "per_label": 2, "batch_size": 2})
    path = build_store(cfg)
    log = read_jsonl(path / "rl_log.jsonl")
    assert len(log) == 2 and all({"reward", "kl", "value_loss", "clip_frac"} <= set(r) for r in log)
    assert (path / "rl_log.png").stat().st_size > 0
    from safetensors.torch import load_file
    sup = load_file(str(path / "prompt" / "adapter_model.safetensors"))["prompt_embeddings"]
    ref = load_file(str(path / "prompt-rl" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert not torch.equal(sup, ref)  # PPO moved the prompt the store was then generated from
    assert json.loads((path / "manifest.json").read_text())["config"]["rl"] == rl

    def boom(*a, **k):
        raise AssertionError("PPO ran again although a refined prompt with the same settings exists")

    monkeypatch.setattr("retrikt.rl.ppo.ppo_train", boom)
    (path / "manifest.json").unlink()  # force the build to run again over the same folder
    build_store(cfg)


def test_reward_fn_scores_quality_of_the_conditioned_label_and_zero_for_garbage():
    from retrikt.tasks import get_task
    task = get_task("cb")

    class Labeller:
        def predict_proba(self, examples):
            return np.array([[0.7, 0.2, 0.1]] * len(examples))

    class Embedder:
        def encode(self, texts, **kw):
            return np.eye(len(texts), 8, dtype=np.float32)

    fn = refine.make_reward_fn(task, Labeller(), Embedder(), kshot=[])
    samples = [{"text": " a\nhypothesis: b", "label": 0}, {"text": " c\nhypothesis: d", "label": 1},
               {"text": " garbage", "label": 0}]
    rewards, parts = fn(samples)
    np.testing.assert_allclose(parts["quality"], [0.7, 0.2, 0.0])
    np.testing.assert_allclose(parts["diversity"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(rewards, [0.7 + 0.5, 0.2 + 0.5, 0.0])


def test_kl_coefficient_and_lr_reach_ppo_and_change_the_reuse_key(tmp_path, monkeypatch):
    import dataclasses
    cfg = BuildConfig(**{**SMOKE, "task": "cb", "out": str(tmp_path / "store"), "rl": "ppo"})
    assert refine_config.refine_key(dataclasses.replace(cfg, rl_kl_coef=0.05)) == refine_config.refine_key(cfg)  # old stores keep their key
    assert refine_config.refine_key(dataclasses.replace(cfg, rl_kl_coef=0.2)) != refine_config.refine_key(cfg)
    assert refine_config.refine_key(dataclasses.replace(cfg, rl_lr=1e-4)) != refine_config.refine_key(cfg)
    seen = {}
    monkeypatch.setattr("retrikt.rl.ppo.ppo_train", lambda gen, fn, conds, ppo_cfg, **kw: seen.update(
        kl=ppo_cfg.init_kl_coef, lr=ppo_cfg.lr))
    monkeypatch.setattr("retrikt.rl.ppo.plot_log", lambda *a, **k: None)
    build_store(dataclasses.replace(cfg, rl_kl_coef=0.2, rl_lr=1e-4, rl_steps=1, per_label=1, batch_size=2))
    assert seen == {"kl": 0.2, "lr": 1e-4}
