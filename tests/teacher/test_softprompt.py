import json

import pytest
import torch
from peft import PeftModel

from retrikt.io import IntegrityError, RetriktError
from retrikt.teacher.softprompt import SoftPromptConfig, SoftPromptGenerator
from tests.tiny import tiny_qwen, tiny_tokenizer

INIT = "write a movie review"
CONDS = ["label : positive", "label : negative the movie", "label : neutral"]
PAIRS = [("label : positive", "the movie was great"), ("label : negative", "the film was terrible"),
         ("label : positive", "a good film"), ("label : negative", "a bad movie")]


def make_model(seed: int = 0, scale: float = 10.0):
    tok = tiny_tokenizer()
    model = tiny_qwen(tok, seed=seed)
    with torch.no_grad():  # std 0.2 instead of 0.02: a random LM that the prompt can actually steer
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    return model, tok


@pytest.fixture
def gen():
    model, tok = make_model()
    g = SoftPromptGenerator(model, tok, n_virtual=6, init_text=INIT)
    with torch.no_grad():  # a prompt that differs from any token embedding, as after training
        g.prompt.add_(0.3 * torch.randn(g.prompt.shape, generator=torch.Generator().manual_seed(0)))
    return g


def test_prompt_starts_as_repeated_init_text_embeddings():
    model, tok = make_model()
    g = SoftPromptGenerator(model, tok, n_virtual=6, init_text=INIT)
    ids = tok(INIT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 4
    want = model.get_input_embeddings().weight[torch.tensor((ids * 2)[:6])]
    torch.testing.assert_close(g.prompt.detach(), want)
    assert g.prompt.requires_grad and g.prompt.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    short = SoftPromptGenerator(model, tok, n_virtual=2, init_text=INIT)  # truncated
    torch.testing.assert_close(short.prompt.detach(), want[:2])


def test_generation_batched_deterministic_and_bounded(gen):
    a = gen.generate(CONDS, n_per_condition=2, max_new_tokens=5, batch_size=4, seed=3)
    b = gen.generate(CONDS, n_per_condition=2, max_new_tokens=5, batch_size=4, seed=3)
    c = gen.generate(CONDS, n_per_condition=2, max_new_tokens=5, batch_size=4, seed=4)
    assert a == b and a != c
    assert [s["condition"] for s in a] == [x for x in CONDS for _ in range(2)]
    assert all(1 <= len(s["tokens"]) <= 5 for s in a)
    for s in a:
        assert s["finished"] == (s["tokens"][-1] == gen.tokenizer.eos_token_id)
        assert s["text"] == gen.tokenizer.decode(s["tokens"], skip_special_tokens=True)
    cut = gen.generate(CONDS, max_new_tokens=200, batch_size=3, max_time=1e-6)  # stops after the first token
    assert all(len(s["tokens"]) < 200 for s in cut)
    with pytest.raises(RetriktError, match="prompt must be"):
        gen.generate(CONDS, prompt="teacher")


def test_greedy_batched_equals_one_by_one(gen):
    """Left padding must not change a row: the batch of 3 matches three unpadded generations."""
    batched = gen.generate(CONDS, max_new_tokens=6, temperature=0, batch_size=3)
    single = [gen.generate([c], max_new_tokens=6, temperature=0)[0] for c in CONDS]
    assert batched == single
    unprompted = gen.generate(CONDS, max_new_tokens=6, temperature=0, batch_size=3, prompt="none")
    assert [s["tokens"] for s in unprompted] != [s["tokens"] for s in batched]  # the prompt steers


def test_logprobs_are_those_generate_samples_from(gen):
    """sequence_logprobs(temperature=T) equals the log-softmax of the scores generate() sampled from."""
    batch = gen.encode(CONDS, [[0]] * 3)
    emb, mask = gen._prefix(batch.cond_ids, batch.cond_mask, "policy")
    gcfg = gen._generation_config(5, 0.7, 1.0, None)
    gcfg.output_scores, gcfg.return_dict_in_generate = True, True
    torch.manual_seed(0)
    with torch.no_grad():
        out = gen.model.generate(inputs_embeds=emb, attention_mask=mask, generation_config=gcfg)
    want = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, out.sequences.unsqueeze(-1)).squeeze(-1)
    logp, m = gen.sequence_logprobs(CONDS, out.sequences.tolist(), temperature=0.7)
    assert m.all()
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)


def test_logprob_gradients_reach_only_the_prompt(gen):
    samples = gen.generate(CONDS, max_new_tokens=4, seed=0)
    conds, toks = [s["condition"] for s in samples], [s["tokens"] for s in samples]
    logp, mask = gen.sequence_logprobs(conds, toks)
    assert logp.shape == mask.shape == (3, max(len(t) for t in toks))
    assert (logp[mask == 0] == 0).all() and (logp[mask == 1] < 0).all()
    logp.sum().backward()
    assert gen.prompt.grad is not None and gen.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.model.parameters())
    ref, _ = gen.sequence_logprobs(conds, toks, prompt="reference")
    assert not ref.requires_grad and not torch.allclose(ref, logp.detach())  # reference = the init text
    gen.snapshot_reference()
    ref, _ = gen.sequence_logprobs(conds, toks, prompt="reference")
    torch.testing.assert_close(ref, logp.detach())


def test_supervised_training_lowers_the_loss():
    model, tok = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = SoftPromptGenerator(model, tok, n_virtual=8, init_text=INIT)
    conds, targets = [c for c, _ in PAIRS], [t for _, t in PAIRS]

    def full_loss():
        with torch.no_grad():
            logp, mask = g.sequence_logprobs(conds, [t + " [EOS]" for t in targets])
        return (-logp.sum() / mask.sum()).item()

    start = full_loss()
    log = g.train_supervised(PAIRS, SoftPromptConfig(lr=0.3, epochs=20, batch_size=4, seed=0))
    assert len(log) == 20 and all(k in log[0] for k in ("loss", "grad_norm", "epoch"))
    assert log[0]["loss"] == pytest.approx(start, rel=1e-4)  # the logged loss is the target-token NLL
    assert full_loss() < 0.6 * start
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_supervised_rejects_bad_input():
    model, tok = make_model()
    g = SoftPromptGenerator(model, tok, n_virtual=4, init_text=INIT)
    with pytest.raises(RetriktError, match="no"):
        g.train_supervised([])
    with pytest.raises(RetriktError, match="max_length"):
        g.train_supervised([("the movie " * 10, "great")], SoftPromptConfig(max_length=5))


def test_save_load_round_trip_through_peft(gen, tmp_path):
    gen.save(tmp_path / "sp")
    cfg = json.loads((tmp_path / "sp" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_virtual_tokens"] == 6
    fresh, tok = make_model()
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "sp")
    torch.testing.assert_close(peft_model.get_prompt_embedding_to_save("default"), gen.prompt.detach())
    # PEFT puts the prompt first too: its logits over condition + response equal ours (one unpadded row)
    cond, resp = CONDS[1], [10, 20, 30]
    ids = torch.tensor([tok(cond, add_special_tokens=False)["input_ids"] + resp])
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits[0, -len(resp) - 1:-1]
    ours, _ = gen.sequence_logprobs([cond], [resp])
    torch.testing.assert_close(logits.log_softmax(-1)[torch.arange(3), torch.tensor(resp)], ours[0])
    loaded = SoftPromptGenerator.load(tmp_path / "sp", make_model()[0], tok)
    torch.testing.assert_close(loaded.prompt.detach(), gen.prompt.detach(), rtol=0, atol=0)
    assert loaded.init_text == INIT


def test_load_refuses_corrupt_or_mismatched_folders(gen, tmp_path):
    gen.save(tmp_path / "sp")
    tok = tiny_tokenizer()
    wider = tiny_qwen(tok, hidden=64)
    with pytest.raises(RetriktError, match="hidden size 64"):
        SoftPromptGenerator.load(tmp_path / "sp", wider, tok)
    with open(tmp_path / "sp" / "adapter_model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(IntegrityError):
        SoftPromptGenerator.load(tmp_path / "sp", make_model()[0], tok)


def test_micro_batches_give_the_whole_steps_gradient(gen):
    # PAIRS' targets differ in length, so each micro-batch must be weighted by the whole step's token count.
    grads = []
    for micro in (0, 1):
        opt = torch.optim.SGD([gen.prompt], lr=0.0)
        data = [gen._pair_tokens(c, t, SoftPromptConfig()) for c, t in PAIRS]
        loss, _ = gen._supervised_step(data, opt, SoftPromptConfig(micro_batch_size=micro, grad_clip=0))
        grads.append((loss, gen.prompt.grad.clone()))
    assert grads[0][1].abs().sum() > 0
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)
