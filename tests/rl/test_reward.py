import numpy as np
import pytest

from retrikt.io import RetriktError
from retrikt.rl.reward import RewardConfig, compute_rewards, diversity_scores

EMB = {"premise: a": [1.0, 0.0, 0.0], "premise: a ": [1.0, 0.0, 0.0], "premise: b": [0.6, 0.8, 0.0],
       "premise: c": [0.0, 0.0, 2.0], "garbage": [0.0, 0.0, 1.0]}
QUALITY = {("a", 0): 0.9, ("b", 1): 0.2, ("c", 2): 0.7}


def parse(text):
    return {"premise": text.split(": ", 1)[1].strip()} if text.startswith("premise: ") else None


def quality(examples, labels):
    return [QUALITY[(e["premise"], lab)] for e, lab in zip(examples, labels)]


def embed(texts):
    return np.array([EMB[t] for t in texts])


def test_diversity_scores_by_hand():
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -3.0]])
    # cos(0,1)=0.6, cos(0,2)=0, cos(1,2)=-0.8 -> 1 - max similarity per row, clipped to [0, 1]
    np.testing.assert_allclose(diversity_scores(emb, None), [0.4, 0.4, 1.0])
    np.testing.assert_allclose(diversity_scores(emb[:1], None), [1.0])  # nothing to compare with
    np.testing.assert_allclose(diversity_scores(emb[2:], np.array([[0.0, 1.0]])), [1.0])  # cos -1 -> clipped
    np.testing.assert_allclose(diversity_scores(emb, np.array([[0.0, 1.0]]), vs_batch=False), [1.0, 0.2, 1.0])


def test_rewards_hand_made_samples():
    samples = [{"text": "premise: a", "label": 0}, {"text": "premise: b", "label": 1},
               {"text": "garbage", "label": 2}, {"text": "premise: c", "label": 2}]
    cfg = RewardConfig(w_quality=1.0, w_diversity=0.5)
    r, parts = compute_rewards(samples, parse, quality, embed, None, cfg)
    np.testing.assert_allclose(parts["quality"], [0.9, 0.2, 0.0, 0.7])  # unparsable -> 0
    np.testing.assert_allclose(parts["diversity"], [0.4, 0.4, 0.0, 1.0])  # garbage not compared, scores 0
    np.testing.assert_allclose(parts["parsed"], [1, 1, 0, 1])
    np.testing.assert_allclose(r, [0.9 + 0.2, 0.2 + 0.2, 0.0, 0.7 + 0.5])


def test_duplicates_and_accepted_store_kill_diversity():
    samples = [{"text": "premise: a", "label": 0}, {"text": "premise: a ", "label": 0},
               {"text": "premise: b", "label": 1}]
    _, parts = compute_rewards(samples, parse, quality, embed, None, RewardConfig())
    np.testing.assert_allclose(parts["diversity"], [0.0, 0.0, 0.4])
    accepted = np.array([[0.0, 1.0, 0.0]])  # cos with b is 0.8
    _, parts = compute_rewards(samples[2:], parse, quality, embed, accepted, RewardConfig())
    np.testing.assert_allclose(parts["diversity"], [0.2])


def test_fluency_weight_and_errors():
    samples = [{"text": "premise: a", "label": 0}, {"text": "garbage", "label": 1}]
    cfg = RewardConfig(w_quality=2.0, w_diversity=0.0, w_fluency=0.1)
    r, parts = compute_rewards(samples, parse, quality, embed, None, cfg, fluency_fn=lambda s: [-2.0, -5.0])
    np.testing.assert_allclose(r, [2 * 0.9 - 0.2, -0.5])
    with pytest.raises(RetriktError, match="fluency_fn"):
        compute_rewards(samples, parse, quality, embed, None, cfg)
    with pytest.raises(RetriktError, match="label"):
        compute_rewards([{"text": "premise: a"}], parse, quality, embed, None, RewardConfig())
    with pytest.raises(RetriktError, match="quality_fn"):
        compute_rewards(samples, parse, lambda e, lab: [0.1, 0.2, 0.3], embed, None, RewardConfig())
