"""Parametric knowledge transfer on tiny random models: block search, sensitivity, layer mapping, injection."""
from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from retrikt.init import sensitivity as sens_mod
from retrikt.init.parametric import (ParametricConfig, best_block, best_block_loop, compute_block_scores,
                                     compute_sensitivity, extract_from_teacher, extract_lora, init_parametric,
                                     inject_lora, load_parametric, save_parametric, select_layers, window_sums)
from retrikt.io import IntegrityError, RetriktError, read_manifest
from tests.tiny import tiny_qwen, tiny_tokenizer

ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")
WORDS = "the a is not yes no maybe good bad movie film man woman dog cat ran sat".split()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(6):
        n = 3 + i % 4
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (n,), generator=g)]
        out.append((" ".join(words), ["yes", "no", "maybe good"][i % 3]))
    return out


def teacher_of(tok, seed=0):
    return tiny_qwen(tok, hidden=64, layers=4, heads=4, kv_heads=2, seed=seed)


def student_of(tok, kv_heads=1, seed=1):
    return tiny_qwen(tok, hidden=32, layers=2, heads=4, kv_heads=kv_heads, seed=seed)


def logits(model, tok):
    ids = tok(["the dog sat on a cat", "a good movie is not bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


# ----------------------------------------------------------------------------------------------- block search

def brute_force(S, h, w):
    H, W = S.shape
    sums = torch.tensor([[float(S[r:r + h, c:c + w].double().sum()) for c in range(W - w + 1)]
                         for r in range(H - h + 1)], dtype=torch.float64)
    r, c = divmod(int(sums.argmax()), sums.shape[1])
    return sums, (r, c)


@pytest.mark.parametrize("shape,block", [((7, 5), (3, 2)), ((5, 9), (5, 9)), ((6, 4), (1, 1)), ((10, 3), (4, 3)),
                                         ((1, 8), (1, 3)), ((12, 20), (5, 11)), ((20, 12), (11, 5)),
                                         ((9, 9), (9, 1))])
def test_best_block_equals_brute_force(shape, block, monkeypatch):
    monkeypatch.setattr(sens_mod, "_SCRATCH", 16)   # several column chunks in window_sums
    S = torch.rand(shape, generator=torch.Generator().manual_seed(shape[0] * 31 + block[1]))
    sums, where = brute_force(S, *block)
    assert torch.allclose(window_sums(S, block), sums, rtol=1e-12, atol=1e-12)
    assert best_block(S, block) == where
    assert best_block_loop(S, block) == where


def test_best_block_finds_planted_hot_spot():
    S = torch.rand(40, 70) * 0.01
    S[13:13 + 9, 41:41 + 20] += 1.0
    assert best_block(S, (9, 20)) == (13, 41)


def test_block_larger_than_matrix_is_refused():
    with pytest.raises(RetriktError, match="does not fit"):
        best_block(torch.rand(4, 4), (5, 2))


# -------------------------------------------------------------------------------------------- layer selection

def test_select_layers_keeps_top_in_depth_order():
    assert select_layers([0.1, 5.0, 0.3, 4.0, 9.0], 3) == [1, 3, 4]
    assert select_layers(torch.tensor([3.0, 1.0, 2.0]), 1) == [0]
    assert select_layers([1.0, 1.0, 1.0], 2) == [0, 1]            # ties: shallower first


def test_select_layers_random_ablation():
    picks = select_layers([0.0] * 20, 5, "random", seed=3)
    assert picks == sorted(set(picks)) and len(picks) == 5 and all(0 <= p < 20 for p in picks)
    assert select_layers([0.0] * 20, 5, "random", seed=3) == picks
    assert select_layers([0.0] * 20, 5, "random", seed=4) != picks
    with pytest.raises(RetriktError, match="deeper"):
        select_layers([1.0, 2.0], 3)


# ------------------------------------------------------------------------------------------------ sensitivity

class OneParam(nn.Module):
    """logits[b, t, v] = w * e[x_bt] * u[v]: one parameter, gradient known in closed form."""

    def __init__(self, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = nn.Parameter(torch.tensor(0.7))
        self.register_buffer("e", torch.randn(vocab, generator=g))
        self.register_buffer("u", torch.randn(vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.w * self.e[input_ids][..., None] * self.u)


def hand_grad(model, tok, prompt, answer):
    """dL/dw with L the mean cross-entropy over the answer tokens, written out by hand (float64)."""
    ids = tok(prompt)["input_ids"]
    n_prompt = len(ids)
    ids = ids + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    w, e, u = float(model.w.detach()), model.e.double(), model.u.double()
    grads = []
    for t in range(n_prompt, len(ids)):
        p = torch.softmax(w * e[ids[t - 1]] * u, dim=0)
        onehot = torch.zeros_like(p)
        onehot[ids[t]] = 1
        grads.append(float(((p - onehot) * e[ids[t - 1]] * u).sum()))
    return sum(grads) / len(grads)


def test_sensitivity_of_one_parameter_by_hand(tok, pairs):
    model = OneParam(len(tok))
    w = float(model.w.detach())
    per_sample = compute_sensitivity(model, tok, pairs[:4], ["w"], batch_size=1)["w"]
    expected = sum(abs(w * hand_grad(model, tok, p, a)) for p, a in pairs[:4])
    assert float(per_sample) == pytest.approx(expected, rel=1e-5)
    # batches of two sequences of different lengths: |w * (g1 + g2)| per batch (padding must not leak in)
    batched = compute_sensitivity(model, tok, pairs[:4], ["w"], batch_size=2)["w"]
    g = [hand_grad(model, tok, p, a) for p, a in pairs[:4]]
    assert float(batched) == pytest.approx(abs(w * (g[0] + g[1])) + abs(w * (g[2] + g[3])), rel=1e-5)
    assert model.w.requires_grad and model.w.grad is None


def test_sensitivity_equals_autograd_on_qwen(tok, pairs):
    teacher = teacher_of(tok)
    names = ["model.layers.0.self_attn.k_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    got = compute_sensitivity(teacher, tok, pairs[:3], names)
    params = dict(teacher.named_parameters())
    expected = {n: torch.zeros_like(params[n]) for n in names}
    for prompt, answer in pairs[:3]:
        p_ids = tok(prompt)["input_ids"]
        ids = torch.tensor([p_ids + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        lp = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1], dim=-1)
        targets = ids[0, 1:]
        loss = -lp[torch.arange(len(targets)), targets][len(p_ids) - 1:].mean()
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for n, g in zip(names, grads):
            expected[n] += (params[n].detach() * g).abs()
    for n in names:
        assert torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-9), n
    assert all(p.grad is None for p in teacher.parameters())


def test_block_scores_are_window_sums_of_sensitivity(tok, pairs):
    teacher = teacher_of(tok)
    names = ["model.layers.1.self_attn.q_proj.weight", "model.layers.2.mlp.gate_proj.weight"]
    windows = {names[0]: (32, 32), names[1]: (64, 32)}
    full = compute_sensitivity(teacher, tok, pairs, names, batch_size=2)
    scores = compute_block_scores(teacher, tok, pairs, names, windows, batch_size=2)
    for n in names:
        assert scores.totals[n] == pytest.approx(float(full[n].sum()), rel=1e-5)
        assert torch.allclose(scores.maps[n], window_sums(full[n], windows[n]).float(), rtol=1e-5)
        assert scores.best(n, windows[n]) == best_block(full[n], windows[n])


# ----------------------------------------------------------------------------------- extraction and injection

def planted_sensitivity(teacher, student, hot_layers, spot=(3, 5)):
    """S that is faint everywhere except a student-shaped bright patch at ``spot`` in the ``hot_layers``."""
    out = {}
    for name, p in teacher.named_parameters():
        if ".layers." in name and name.endswith("proj.weight"):
            S = torch.rand(p.shape, generator=torch.Generator().manual_seed(len(out))) * 1e-3
            layer, role = int(name.split(".")[2]), ".".join(name.split(".")[3:-1])
            if layer in hot_layers:
                h, w = student.get_submodule(f"model.layers.0.{role}").weight.shape
                S[spot[0]:spot[0] + h, spot[1]:spot[1] + w] += 1.0
            out[name] = S
    return out


def test_layers_and_blocks_follow_sensitivity(tok):
    teacher, student = teacher_of(tok), student_of(tok)
    factors = extract_lora(teacher, student, planted_sensitivity(teacher, student, {1, 3}), ParametricConfig(rank=32))
    assert factors.teacher_layers == [1, 3]
    weights = dict(teacher.named_parameters())
    for i, t_layer in enumerate([1, 3]):
        for role in ROLES:
            name = f"model.layers.{i}.{role}"
            param, r, c = factors.blocks[name]
            assert param == f"model.layers.{t_layer}.{role}.weight"
            assert (r, c) == (3, 5)        # exactly the bright patch
            A, B = factors[name]
            h, w = student.get_submodule(name).weight.shape
            assert A.shape == (min(32, h, w), w) and B.shape == (h, min(32, h, w))
            assert torch.allclose(B @ A, weights[param][r:r + h, c:c + w], atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_step0_logits_unchanged(tok, pairs, kv_heads):
    student = student_of(tok, kv_heads=kv_heads)
    before = logits(student, tok)
    original = {n: p.detach().clone() for n, p in student.named_parameters()}
    model = init_parametric(student, teacher_of(tok), tok, pairs, ParametricConfig(n_seed=4, batch_size=2))
    model.eval()
    assert torch.allclose(logits(model, tok), before, atol=1e-5)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.lora_B["default"].weight.abs().sum() > 0          # the LoRA starts from the teacher ...
    moved = (layer.base_layer.weight - original["model.layers.0.mlp.down_proj.weight"]).abs().max()
    assert moved > 1e-3                                             # ... and the base weight paid for it


def test_scaling_and_rank_padding(tok, pairs):
    teacher, student = teacher_of(tok), student_of(tok)
    cfg = ParametricConfig(rank=16, alpha=32, n_seed=3)
    factors = extract_from_teacher(teacher, student, tok, pairs, cfg)
    before = logits(student, tok)
    model = inject_lora(student, factors, cfg)
    model.eval()
    assert torch.allclose(logits(model, tok), before, atol=1e-5)
    weights = dict(teacher.named_parameters())
    for name in ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj"]:
        layer = model.base_model.model.get_submodule(name)
        assert layer.scaling["default"] == 2.0
        param, r, c = factors.blocks[name]
        h, w = layer.base_layer.weight.shape
        block = weights[param][r:r + h, c:c + w].detach()
        U, S, Vh = torch.linalg.svd(block, full_matrices=False)
        k = min(16, h, w)
        expected = (U[:, :k] * S[:k]) @ Vh[:k]                   # the rank-r teacher block, whatever alpha is
        assert torch.allclose(layer.get_delta_weight("default"), expected, atol=1e-5)
        assert torch.count_nonzero(layer.lora_B["default"].weight[:, k:]) == 0


def test_random_ablation_is_reproducible(tok):
    cfg = ParametricConfig(layer_selection="random", block_selection="random", seed=7)
    a = extract_from_teacher(teacher_of(tok), student_of(tok), tok, [], cfg)   # no seed samples needed
    b = extract_from_teacher(teacher_of(tok), student_of(tok), tok, [], cfg)
    c = extract_from_teacher(teacher_of(tok), student_of(tok), tok, [], ParametricConfig(
        layer_selection="random", block_selection="random", seed=8))
    assert a.teacher_layers == select_layers([0] * 4, 2, "random", seed=7)
    assert a.blocks == b.blocks and a.blocks != c.blocks
    assert all(torch.equal(a[n][0], b[n][0]) for n in a)


def test_lazy_teacher_is_freed(tok, pairs):
    refs = []

    def load():
        teacher = teacher_of(tok)
        refs.append(weakref.ref(teacher))
        return teacher

    model = init_parametric(student_of(tok), load, tok, pairs, ParametricConfig(n_seed=2))
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None
    assert model.retrikt_parametric["teacher_layers"] and len(model.retrikt_parametric["init"]) == 14


def test_embeddings_and_other_architectures(tok, pairs):
    student = student_of(tok)
    before = logits(student, tok)
    model = init_parametric(student, teacher_of(tok), tok, pairs, ParametricConfig(n_seed=2, include_embeddings=True))
    model.eval()
    assert torch.allclose(logits(model, tok), before, atol=1e-5)
    assert {"model.embed_tokens", "lm_head"} <= set(model.retrikt_parametric["init"])
    # GPT-2 (Conv1D, fused qkv) into GPT-2, and a causal teacher into an encoder classifier
    gpt = dict(vocab_size=len(tok), n_positions=64, n_head=4, bos_token_id=4, eos_token_id=4)
    torch.manual_seed(0)
    g_teacher, g_student = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=3, **gpt)), GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, **gpt)).eval()
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64)).eval()
    for teacher, st, n_modules in [(g_teacher, g_student, 8), (teacher_of(tok), bert, 12)]:
        before = logits(st, tok)
        model = init_parametric(st, teacher, tok, pairs, ParametricConfig(n_seed=2)).eval()
        assert len(model.retrikt_parametric["init"]) == n_modules
        assert torch.allclose(logits(model, tok), before, atol=1e-5)


def test_unknown_architecture_fails_clearly(tok):
    odd = nn.Linear(2, 2)
    odd.config = SimpleNamespace(model_type="mystery")
    with pytest.raises(RetriktError, match="no module-name map for architecture 'mystery'"):
        extract_lora(odd, student_of(tok), None, ParametricConfig(layer_selection="random",
                                                                  block_selection="random"))
    with pytest.raises(RetriktError, match="layer_selection"):
        ParametricConfig(layer_selection="best")


# --------------------------------------------------------------------------------------------------- save/load

def test_save_load_round_trip(tok, pairs, tmp_path):
    model = init_parametric(student_of(tok), teacher_of(tok), tok, pairs, ParametricConfig(n_seed=2))
    with torch.no_grad():                                  # stand-in for fine-tuning: the adapter moves on
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.01 * torch.randn_like(p))
    model.eval()
    expected = logits(model, tok)
    save_parametric(model, tmp_path / "pk")
    assert read_manifest(tmp_path / "pk")["kind"] == "parametric_lora"
    loaded = load_parametric(student_of(tok), tmp_path / "pk").eval()
    assert torch.allclose(logits(loaded, tok), expected, atol=1e-6)
    base = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    for n, p in loaded.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n                  # base weights re-derived bit for bit
    save_parametric(loaded, tmp_path / "again")                # a loaded model can be saved again
    (tmp_path / "pk" / "base_delta.safetensors").write_bytes(b"x")
    with pytest.raises(IntegrityError):
        load_parametric(student_of(tok), tmp_path / "pk")
