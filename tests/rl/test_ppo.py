import math

import numpy as np
import pytest
import torch

from retrikt.io import read_jsonl
from retrikt.rl.ppo import (KLController, PPOConfig, Rollout, ValueHead, advantages, check_frozen, gae, plot_log,
                            ppo_losses, ppo_train, ppo_update, rollout, whiten)
from retrikt.teacher.softprompt import ResponseBatch, SoftPromptGenerator
from tests.tiny import tiny_qwen, tiny_tokenizer

CONDS = ["label : positive", "label : negative the", "label : neutral"]


def make_generator(seed: int = 0) -> SoftPromptGenerator:
    tok = tiny_tokenizer()
    model = tiny_qwen(tok, seed=seed)
    with torch.no_grad():  # std 0.2 instead of 0.02: a random LM that the prompt can actually steer
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return SoftPromptGenerator(model, tok, n_virtual=4, init_text="write a movie review")


def token_reward(samples):
    """Fraction of the sample's tokens with an id below 40: a dense toy reward."""
    r = np.array([np.mean([t < 40 for t in s["tokens"]]) for s in samples])
    return r, {"low_ids": r}


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, 9.9]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.2, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    a2 = 1 - 0.3
    a1 = (0.3 - 0.4) + 0.95 * a2
    a0 = (0.4 - 0.5) + 0.95 * a1
    b1 = 1.0 - 0.2  # padded tail: no bootstrap from the masked value 7.0, its reward 9.9 ignored
    b0 = (0.2 + 0.2 - 0.1) + 0.95 * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3], [b0 + 0.1, b1 + 0.2, 0.0]]))
    adv, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.5)
    c2 = 0.7
    c1 = (0.9 * 0.3 - 0.4) + 0.45 * c2
    c0 = (0.9 * 0.4 - 0.5) + 0.45 * c1
    torch.testing.assert_close(adv, torch.tensor([[c0, c1, c2]]))


def test_ppo_losses_by_hand():
    ratios = torch.tensor([[1.5, 0.7, 1.0, 0.5, 50.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    new = old + ratios.log()
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0, 100.0]])
    values = torch.tensor([[0.5, -0.1, 0.3, 1.0, 50.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding: its crazy numbers must not count
    out = ppo_losses(new, old, adv, values, torch.zeros_like(values), returns, mask, 0.2, 0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2 (clipped), -0.7, 2.0, 0.8 (clipped)
    assert out["policy_loss"].item() == pytest.approx((-1.2 - 0.7 + 2.0 + 0.8) / 4, abs=1e-6)
    assert out["clip_frac"].item() == pytest.approx(0.5)
    kl = [(r - 1) - math.log(r) for r in (1.5, 0.7, 1.0, 0.5)]
    assert out["approx_kl"].item() == pytest.approx(sum(kl) / 4, abs=1e-6)
    # value clipped to +-0.2 around 0: max of (0.25, 0.64), (1.21, 1.21), (0.09, 0.04), (1.0, 0.04)
    assert out["value_loss"].item() == pytest.approx(0.5 * (0.64 + 1.21 + 0.09 + 1.0) / 4, abs=1e-6)


def test_whiten_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert vals.std().item() == pytest.approx(1.0, abs=1e-4)
    assert w[1, 1].item() == 0.0 and w[1, 2].item() == 0.0
    torch.testing.assert_close(vals, (torch.tensor([1.0, 2, 3, 4]) - 2.5) / torch.tensor([1.0, 2, 3, 4]).std())


def test_kl_controller_by_hand():
    ctl = KLController(0.05, target=6.0, horizon=10000)
    ctl.update(9.0, n_samples=100)  # error 0.5 clipped to 0.2
    assert ctl.value == pytest.approx(0.05 * (1 + 0.2 * 100 / 10000))
    ctl.update(5.4, n_samples=100)  # error -0.1
    assert ctl.value == pytest.approx(0.05 * 1.002 * (1 - 0.1 * 0.01))
    fixed = KLController(0.05, 6.0, 10000, adaptive=False)
    fixed.update(100.0, 100)
    assert fixed.value == 0.05


def test_advantages_put_score_on_last_token_minus_kl():
    batch = ResponseBatch(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long),
                          torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, 0.0, 0.0]])
    ro = Rollout([], batch, logp, ref, torch.zeros(2, 3), torch.tensor([2.0, 3.0]), {})
    cfg = PPOConfig(gamma=1.0, lam=1.0, whiten_advantages=False)
    adv, ret, seq_kl = advantages(ro, kl_coef=0.1, cfg=cfg)
    torch.testing.assert_close(seq_kl, torch.tensor([0.0, -1.0]))
    # row 0 token rewards: -0.1 * [0.5, 0, -0.5] + [0, 0, 2]; with gamma = lam = 1 and zero values the
    # advantage is the reward-to-go
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.05, 2.05], [3.1, 0.0, 0.0]]))


def test_one_ppo_update_changes_only_prompt_and_value_head():
    gen = make_generator()
    lm_before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    prompt_before = gen.prompt.detach().clone()
    head = ValueHead(gen.hidden_size)
    head_before = [p.detach().clone() for p in head.parameters()]
    cfg = PPOConfig(rollout_batch=6, n_minibatches=2, ppo_epochs=1, max_new_tokens=5, lr=1e-2, value_lr=1e-2)
    opt = torch.optim.AdamW([{"params": [gen.prompt], "lr": cfg.lr},
                             {"params": head.parameters(), "lr": cfg.value_lr}])
    ro = rollout(gen, head, token_reward, CONDS * 2, None, cfg, step=0)
    adv, ret, _ = advantages(ro, 0.05, cfg)
    stats = ppo_update(gen, head, opt, ro, adv, ret, cfg, torch.Generator().manual_seed(0))
    after = gen.model.state_dict()
    assert all(torch.equal(lm_before[k], after[k]) for k in lm_before)  # bit-identical LM
    assert all(p.grad is None for p in gen.model.parameters())
    assert not torch.equal(prompt_before, gen.prompt.detach())
    assert torch.equal(gen.reference_prompt, prompt_before)
    assert all(not torch.equal(a, b.detach()) for a, b in zip(head_before, head.parameters()))
    assert set(stats) == {"policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy"}


def test_first_minibatch_is_on_policy():
    """With lr 0 the recomputed log-probs equal the rollout's: ratio 1, nothing clipped, approx-KL 0."""
    gen = make_generator(seed=1)
    head = ValueHead(gen.hidden_size)
    cfg = PPOConfig(rollout_batch=6, n_minibatches=3, ppo_epochs=2, max_new_tokens=6, lr=0.0, value_lr=0.0)
    opt = torch.optim.SGD([gen.prompt, *head.parameters()], lr=0.0)
    ro = rollout(gen, head, token_reward, CONDS * 2, None, cfg, step=0)
    adv, ret, seq_kl = advantages(ro, 0.05, cfg)
    torch.testing.assert_close(seq_kl, torch.zeros(6))  # policy == reference before any update
    stats = ppo_update(gen, head, opt, ro, adv, ret, cfg, torch.Generator().manual_seed(0))
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats["clip_frac"] == 0.0


def test_check_frozen_refuses_a_trainable_lm_weight():
    gen = make_generator()
    check_frozen(gen)
    gen.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="only the soft prompt"):
        check_frozen(gen)


def test_ppo_train_logs_every_step_and_plots(tmp_path):
    gen = make_generator()
    labels = ["positive", "negative", "neutral"]
    seen = []

    def reward_fn(samples):
        seen.extend(s["label"] for s in samples)
        return token_reward(samples)

    cfg = PPOConfig(steps=2, rollout_batch=4, n_minibatches=2, ppo_epochs=2, max_new_tokens=4)
    log = ppo_train(gen, reward_fn, CONDS, cfg, log_path=tmp_path / "ppo.jsonl", labels=labels)
    assert [r["step"] for r in log] == [0, 1]
    assert read_jsonl(tmp_path / "ppo.jsonl") == log
    for key in ("reward", "reward_low_ids", "kl", "kl_coef", "policy_loss", "value_loss", "clip_frac",
                "approx_kl", "entropy", "response_len"):
        assert all(np.isfinite(r[key]) for r in log), key
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # first rollout comes from the reference prompt
    assert 0 < log[0]["response_len"] <= 4
    assert set(seen) <= set(labels) and len(seen) == 8
    png = plot_log(tmp_path / "ppo.jsonl", tmp_path / "ppo.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# TRL's own deprecation noise, and PEFT's documented position-id limitation (see retrikt/rl/trl_backend.py)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:Position ids are not supported:UserWarning")
@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_trl_backend_trains_only_the_prompt_against_the_supervised_reference(algo):
    pytest.importorskip("trl")
    from retrikt.rl.trl_backend import TRLConfig, trl_train
    gen = make_generator()
    lm_before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    prompt_before = gen.prompt.detach().clone()
    seen = []

    def reward_fn(samples):
        seen.extend(samples)
        return token_reward(samples)

    cfg = TRLConfig(algo=algo, steps=2, batch_size=4, num_generations=4, max_new_tokens=4)
    log = trl_train(gen, reward_fn, CONDS, cfg, labels=[0, 1, 2])
    steps = [h for h in log if "reward" in h]
    assert len(steps) == 2 and steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # reference = the starting prompt
    assert "reward_low_ids" in steps[0]  # the reward's parts reach TRL's log
    assert len(seen) == 8 and all(s["label"] == CONDS.index(s["condition"]) for s in seen)
    assert all(1 <= len(s["tokens"]) <= 4 for s in seen)
    assert not torch.equal(prompt_before, gen.prompt.detach())
    assert all(torch.equal(lm_before[k], v) for k, v in gen.model.state_dict().items())
    assert "forward" not in vars(gen.model) and not any(p.requires_grad for p in gen.model.parameters())
    assert len(gen.generate(CONDS[:1], max_new_tokens=3)) == 1  # the generator still works afterwards


def test_ppo_train_is_deterministic_for_a_seed():
    cfg = PPOConfig(steps=1, rollout_batch=4, n_minibatches=2, ppo_epochs=1, max_new_tokens=4, lr=1e-2, seed=5)
    runs = []
    for _ in range(2):
        gen = make_generator()
        log = ppo_train(gen, token_reward, CONDS, cfg)
        runs.append(({k: v for k, v in log[0].items() if k != "seconds"}, gen.prompt.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
