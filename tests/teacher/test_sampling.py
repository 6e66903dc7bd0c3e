import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from retrikt.teacher import sampling
from retrikt.teacher.softprompt import SoftPromptGenerator
from tests.teacher.test_softprompt import CONDS, INIT, make_model

ROWS = CONDS + CONDS[:1] + CONDS[1:2]  # two rows share a condition with another row


@pytest.fixture
def gen():
    model, tok = make_model()
    g = SoftPromptGenerator(model, tok, n_virtual=6, init_text=INIT)
    with torch.no_grad():
        g.prompt.add_(0.3 * torch.randn(g.prompt.shape, generator=torch.Generator().manual_seed(0)))
    return g


def _hf(gen, rows, n, eos):
    batch = gen.encode(rows, [[0]] * len(rows))
    emb, mask = gen._prefix(batch.cond_ids, batch.cond_mask, "policy")
    gcfg = gen._generation_config(n, 0.0, 1.0, None)
    gcfg.eos_token_id = eos
    gcfg.output_scores, gcfg.return_dict_in_generate = True, True
    with torch.no_grad():
        out = gen.model.generate(inputs_embeds=emb, attention_mask=mask, generation_config=gcfg)
    return out.sequences, torch.stack(out.scores, 1), emb, mask


def _an_eos_that_ends_rows_early(gen, rows, n):
    """A token that greedy decoding emits mid-way in some rows and not in others: rows of different lengths."""
    seqs, *_ = _hf(gen, rows, n, None)
    for tok in seqs[:, 1:n - 1].flatten().tolist():
        if tok != gen.pad_id and 0 < sum(tok in r for r in seqs.tolist()) < len(rows):
            return tok
    pytest.skip("the tiny model's greedy rows share no usable token")


def test_nucleus_equals_hf_top_p():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    for p in (0.1, 0.5, 0.9, 1.0):
        want = TopPLogitsWarper(p)(None, logits.clone()) if p < 1 else logits
        torch.testing.assert_close(sampling._nucleus(logits, p), want)


def test_greedy_equals_generate_with_rows_ending_at_different_steps(gen):
    n = 10
    eos = _an_eos_that_ends_rows_early(gen, ROWS, n)
    want, scores, emb, mask = _hf(gen, ROWS, n, eos)
    seen = []
    real_next = sampling.next_tokens

    def spy(logits, temperature, top_p):
        seen.append(logits.clone())
        return real_next(logits, temperature, top_p)

    sizes = []
    hook = gen.model.register_forward_pre_hook(lambda m, a, kw: sizes.append(
        (kw.get("inputs_embeds") if kw.get("inputs_embeds") is not None else kw["input_ids"]).shape[0]),
        with_kwargs=True)
    try:
        sampling.next_tokens = spy
        got = sampling.sample(gen.model, emb, mask, max_new_tokens=n, eos_id=eos, pad_id=gen.pad_id,
                              temperature=0.0, groups=[0, 1, 2, 0, 1])
    finally:
        sampling.next_tokens = real_next
        hook.remove()
    assert got.tolist() == want.tolist()
    finished = [(r == eos).nonzero()[0].item() + 1 if eos in r else n for r in want]
    assert min(finished) < max(finished)
    # the scores of every row still running equal those generate sampled from
    active = list(range(len(ROWS)))
    for t, logits in enumerate(seen):
        torch.testing.assert_close(logits, scores[active, t], atol=1e-4, rtol=1e-4)
        active = [i for i in active if finished[i] > t + 1]
    # three distinct conditions prefilled once each; finished rows left the batch
    assert sizes[0] == 3
    assert sizes[1:] == [sum(f > t for f in finished) for t in range(1, len(sizes))]


def test_generator_sampler_deterministic_and_marks_finished(gen):
    a = gen.generate(ROWS, n_per_condition=2, max_new_tokens=6, batch_size=4, seed=3)
    assert a == gen.generate(ROWS, n_per_condition=2, max_new_tokens=6, batch_size=4, seed=3)
    assert a != gen.generate(ROWS, n_per_condition=2, max_new_tokens=6, batch_size=4, seed=4)
    for s in a:
        assert 1 <= len(s["tokens"]) <= 6
        assert s["finished"] == (s["tokens"][-1] == gen.tokenizer.eos_token_id)
    greedy = gen.generate(ROWS, max_new_tokens=6, temperature=0, batch_size=5)
    gen.sampler = "hf"
    assert greedy == gen.generate(ROWS, max_new_tokens=6, temperature=0, batch_size=5)


def test_max_time_stops_all_rows(gen):
    out = gen.generate(CONDS, max_new_tokens=200, batch_size=3, max_time=1e-6)
    assert all(len(s["tokens"]) == 1 for s in out)
