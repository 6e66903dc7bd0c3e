import numpy as np
import pytest
import torch

from retrikt.teacher.lm import LMClassifier, length_batches
from retrikt.tasks import get_task
from tests.tiny import tiny_qwen, tiny_tokenizer

CB = [{"idx": 0, "premise": "the man ran", "hypothesis": "he ran", "label": 0},
      {"idx": 1, "premise": "it is a dog", "hypothesis": "it is not a cat because it is a dog", "label": 1},
      {"idx": 2, "premise": "she sat", "hypothesis": "maybe", "label": 2}]


@pytest.fixture(scope="module")
def lm():
    tok = tiny_tokenizer()
    return tiny_qwen(tok), tok


def _manual_scores(model, tok, prompt: str, conts: list[str]) -> list[float]:
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for c in conts:
        cid = tok(c, add_special_tokens=False)["input_ids"]
        logp = model(input_ids=torch.tensor([ids + cid])).logits[0].log_softmax(-1)
        out.append(sum(float(logp.detach()[len(ids) - 1 + j, t]) for j, t in enumerate(cid)))
    return out


def test_verbaliser_scores_match_manual_loglik(lm):
    model, tok = lm
    task = get_task("cb")
    clf = LMClassifier(model, tok, task)
    with torch.no_grad():
        scores = clf(clf.tokenize(CB))
    for i, e in enumerate(CB):
        manual = _manual_scores(model, tok, task.prompt(e), list(task.verbalizers))
        np.testing.assert_allclose(scores[i].numpy(), manual, atol=1e-4)


def test_fast_path_equals_sequence_path_and_is_padding_invariant(lm):
    model, tok = lm
    clf = LMClassifier(model, tok, get_task("cb"))
    batch = clf.tokenize(CB)
    with torch.no_grad():
        fast = clf._single_token_scores(batch["prompts"], batch["conts"])
        slow = clf._sequence_scores(batch["prompts"], batch["conts"])
        one = torch.cat([clf(clf.tokenize([e])) for e in CB])
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast, one, atol=1e-4, rtol=1e-4)


def test_predict_proba_is_a_distribution_and_demos_enter_the_prompt(lm):
    model, tok = lm
    task = get_task("cb")
    clf = LMClassifier(model, tok, task, demos=CB[:2])
    p = clf.predict_proba(CB)
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert clf._prefix.startswith(task.prompt(CB[0]) + task.verbalizers[0])
    zero = LMClassifier(model, tok, task).predict_proba(CB)
    assert not np.allclose(p, zero)


def test_length_sorted_batches_keep_input_order(lm):
    # CB[1] is the longest; sorting by length must not move its row.
    model, tok = lm
    clf = LMClassifier(model, tok, get_task("cb"))
    batched = clf.predict_proba(CB, batch_size=2)
    one_by_one = np.concatenate([clf.predict_proba([e], batch_size=1) for e in CB])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert clf.predict_proba([]).shape == (0, 3)


def test_multiple_choice_uses_length_normalised_choice_loglik(lm):
    model, tok = lm
    task = get_task("copa")
    ex = {"idx": 0, "premise": "the man ran", "choice1": "he sat", "choice2": "the dog ran on the cat",
          "question": "cause", "label": 1}
    clf = LMClassifier(model, tok, task)
    assert clf.length_norm
    with torch.no_grad():
        got = clf(clf.tokenize([ex]))[0].numpy()
    conts = task.choices(ex)
    manual = _manual_scores(model, tok, task.prompt(ex), conts)
    lens = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in conts]
    np.testing.assert_allclose(got, [m / n for m, n in zip(manual, lens)], atol=1e-4)


def test_content_free_calibration_divides_by_the_prior_of_content_free_inputs(lm):
    model, tok = lm
    task = get_task("cb")
    raw = LMClassifier(model, tok, task, demos=CB[:1])
    cal = LMClassifier(model, tok, task, demos=CB[:1], calibrate="content-free")
    # hand-computed: the raw probabilities of the three content-free inputs, with the same demonstration
    fillers = [{"premise": x, "hypothesis": x, "label": 0} for x in ("N/A", "", "[MASK]")]
    prior = raw.predict_proba(fillers).mean(0)
    np.testing.assert_allclose(cal.label_prior(), prior, atol=1e-6)
    expected = raw.predict_proba(CB) / prior
    np.testing.assert_allclose(cal.predict_proba(CB), expected / expected.sum(1, keepdims=True), atol=1e-5)
    # calibrated content-free inputs are uniform on average: the bias is gone
    np.testing.assert_allclose(cal.predict_proba(fillers).mean(0), 1 / 3, atol=0.1)
    assert not np.allclose(cal.predict_proba(CB), raw.predict_proba(CB))


def test_batch_calibration_divides_by_the_mean_over_task_inputs_aimed_at_the_label_mix(lm):
    """The bias is the mean label distribution over real task inputs; an input whose raw scores equal that mean is
    calibrated to the label mix (content-free calibration would send it to uniform)."""
    model, tok = lm
    task = get_task("cb")
    raw = LMClassifier(model, tok, task, demos=CB[:1])
    mix = [0.5, 0.4, 0.1]
    cal = LMClassifier(model, tok, task, demos=CB[:1], calibrate="batch", calibration_inputs=CB[1:], label_mix=mix)
    bias = raw.predict_proba(CB[1:]).mean(0)
    prior = bias / np.array(mix)
    np.testing.assert_allclose(cal.label_prior(), prior / prior.sum(), atol=1e-6)
    expected = raw.predict_proba(CB) / prior
    np.testing.assert_allclose(cal.predict_proba(CB), expected / expected.sum(1, keepdims=True), atol=1e-5)
    one = LMClassifier(model, tok, task, calibrate="batch", calibration_inputs=CB[:1], label_mix=mix)
    np.testing.assert_allclose(one.predict_proba(CB[:1])[0], mix, atol=1e-5)
    with pytest.raises(Exception, match="calibration_inputs"):
        LMClassifier(model, tok, task, calibrate="batch")


def test_calibration_leaves_multiple_choice_alone_and_rejects_unknown_modes(lm):
    model, tok = lm
    task = get_task("copa")
    ex = {"idx": 0, "premise": "the man ran", "choice1": "he sat", "choice2": "the dog ran", "question": "cause",
          "label": 1}
    np.testing.assert_allclose(LMClassifier(model, tok, task, calibrate="content-free").predict_proba([ex]),
                               LMClassifier(model, tok, task).predict_proba([ex]), atol=1e-6)
    with pytest.raises(Exception, match="unknown calibration"):
        LMClassifier(model, tok, task, calibrate="platt")


def test_single_pass_scoring_equals_per_continuation_scoring(lm):
    """One forward per example, head on the last position, demonstrations as a KV cache == one full-logits pass per
    (example, verbaliser) with the demonstrations written into the prompt (the old scoring), to 1e-5."""
    model, tok = lm
    task = get_task("cb")
    clf = LMClassifier(model, tok, task, demos=CB[:2])
    got = clf.predict_proba(CB, batch_size=2)
    manual = np.array([_manual_scores(model, tok, clf._prefix + task.prompt(e), list(task.verbalizers)) for e in CB])
    expected = np.exp(manual - manual.max(1, keepdims=True))
    np.testing.assert_allclose(got, expected / expected.sum(1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("name", ["cb", "copa"])
def test_demonstration_kv_cache_equals_demonstrations_inline(lm, name):
    model, tok = lm
    task = get_task(name)
    exs = CB if name == "cb" else [
        {"idx": i, "premise": p, "choice1": "he sat", "choice2": c2, "question": q, "label": i % 2}
        for i, (p, c2, q) in enumerate([("the man ran", "the dog ran on the cat", "cause"),
                                        ("she sat on a cat", "no", "effect"), ("it is a dog", "he ran", "cause")])]
    clf = LMClassifier(model, tok, task, demos=exs[:2])
    batch = clf.tokenize(exs)
    with torch.no_grad():
        inline = clf(batch)  # no cache: the demonstrations' ids are prepended to every row
        cached = clf({**batch, "past": clf.demo_cache()})
    torch.testing.assert_close(cached, inline, atol=1e-5, rtol=1e-5)
    assert clf.demo_cache() is not None and LMClassifier(model, tok, task).demo_cache() is None


def test_demonstrations_longer_than_the_context_are_refused(lm):
    model, tok = lm
    with pytest.raises(Exception, match="demonstrations take"):
        LMClassifier(model, tok, get_task("cb"), demos=CB, max_length=20)


def test_length_batches_cover_every_index_once_and_bound_padding():
    from retrikt.teacher.lm import length_batches
    lengths = [30, 250, 31, 35, 120, 33, 260, 32, 100, 34]
    batches = length_batches(lengths, 4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)
    for b in batches:
        assert max(lengths[i] for i in b) <= 1.25 * min(lengths[i] for i in b) + 2
    assert [lengths[i] for i in batches[0]] == [30, 31, 32, 33]  # sorted, full batches where lengths allow


def test_an_example_with_no_room_left_is_refused_not_silently_overlong(lm):
    model, tok = lm
    task = get_task("copa")
    ex = {"idx": 0, "premise": "the man ran", "choice1": "he sat", "choice2": "the dog ran on the cat " * 6,
          "question": "cause", "label": 1}
    clf = LMClassifier(model, tok, task, max_length=30)
    with pytest.raises(Exception, match="leaves no room"):
        clf.tokenize([ex])


def test_answer_states_are_the_heads_input_at_the_last_prompt_position(lm):
    """Task-aware keys: the state the head turns into label scores, the same batched (padded) or one by one."""
    model, tok = lm
    task = get_task("cb")
    clf = LMClassifier(model, tok, task)
    states = clf.answer_states(CB, batch_size=2)
    assert states.shape == (3, model.config.hidden_size) and states.dtype == np.float32
    for i, e in enumerate(CB):
        ids = torch.tensor([tok(task.prompt(e), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            logits = model(input_ids=ids).logits[0, -1]
        np.testing.assert_allclose(states[i], hidden.numpy(), atol=1e-4)
        # the head applied to the state gives the model's own next-token logits
        np.testing.assert_allclose(model.get_output_embeddings()(torch.from_numpy(states[i])).detach().numpy(),
                                   logits.numpy(), atol=1e-3)


def _count_forwards(model):
    calls = []
    return calls, model.register_forward_hook(lambda *_: calls.append(1))


def test_answer_states_kept_while_labelling_cost_no_second_pass_and_equal_a_fresh_pass(lm):
    """A store's teacher keys reuse its labelling pass: same states as computing them afresh, no extra forward."""
    model, tok = lm
    task = get_task("cb")
    clf = LMClassifier(model, tok, task, demos=CB[:2], calibrate="content-free")
    _, conts = clf._encode(CB)
    assert all(len(c) == 1 for cs in conts for c in cs)  # the single-token path, where scoring ends at the answer
    new = {"idx": 3, "premise": "a cat sat on the mat", "hypothesis": "a cat sat", "label": 0}
    fresh = clf.answer_states(CB + [new], batch_size=2)
    clf.keep_answer_states()
    clf.predict_proba(CB, batch_size=2)
    calls, hook = _count_forwards(model)
    try:
        kept = clf.answer_states(CB, batch_size=2)
        assert not calls  # all three states were kept from scoring
        mixed = clf.answer_states([new] + CB, batch_size=2)
        assert len(calls) == 2  # the demonstrations' cache, then the one new example
    finally:
        hook.remove()
    np.testing.assert_allclose(kept, fresh[:3], atol=1e-5)
    np.testing.assert_allclose(mixed, np.concatenate([fresh[3:], fresh[:3]]), atol=1e-5)
    clf.reset_prior()  # weights may have changed: nothing kept is trusted
    calls, hook = _count_forwards(model)
    try:
        clf.answer_states(CB, batch_size=8)
    finally:
        hook.remove()
    assert len(calls) == 1 + len(length_batches([len(p) for p in clf._encode(CB)[0]], 8))


def test_multi_token_continuations_keep_no_answer_states(lm):
    """COPA's scoring pass ends inside a choice, not at the answer position: its states are computed afresh."""
    model, tok = lm
    task = get_task("copa")
    ex = [{"idx": 0, "premise": "the man ran", "choice1": "he sat", "choice2": "the dog ran", "question": "cause",
           "label": 1}]
    clf = LMClassifier(model, tok, task)
    clf.keep_answer_states()
    clf.predict_proba(ex)
    calls, hook = _count_forwards(model)
    try:
        clf.answer_states(ex)
    finally:
        hook.remove()
    assert len(calls) == 1
