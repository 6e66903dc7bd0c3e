"""PEFT module arithmetic on tiny random BERTs: algebraic identities, exactness in weight space, init checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

from retrikt.init.arithmetic import (SIDECAR, ArithmeticConfig, analogy, compose_adapters, init_arithmetic,
                                     init_checksum, merge, negate, save_adapter, seeded_peft_model)
from retrikt.io import RetriktError, read_manifest

VOCAB = 50


def base_model(seq_cls: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return (BertForSequenceClassification if seq_cls else BertModel)(cfg).eval()


def lora_config(seq_cls: bool = False, r: int = 4, alpha: int = 8) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"],
                      task_type="SEQ_CLS" if seq_cls else None)


def ia3_config() -> IA3Config:
    return IA3Config(target_modules=["key", "value", "intermediate.dense"], feedforward_modules=["intermediate.dense"])


def make_adapter(folder: Path, peft_config, init_seed: int = 0, train_seed: int = 1, seq_cls: bool = False,
                 scale: float = 0.2) -> Path:
    """An adapter 'trained' by a random step on every trainable tensor (B, A, (IA)^3 vectors, head)."""
    model = seeded_peft_model(base_model(seq_cls), peft_config, init_seed)
    g = torch.Generator().manual_seed(train_seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return save_adapter(model, folder, init_seed=init_seed, task="toy")


def state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def delta_ws(st: dict, scaling: float) -> dict[str, torch.Tensor]:
    return {k: scaling * st[k.replace("lora_A", "lora_B")].double() @ st[k].double() for k in st if "lora_A" in k}


def input_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(5))


def hidden(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids()).last_hidden_state


def assert_states_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_save_adapter_sidecar_and_manifest(tmp_path):
    folder = make_adapter(tmp_path / "a", lora_config())
    side = json.loads((folder / SIDECAR).read_text())
    fresh = seeded_peft_model(base_model(), lora_config(), 0)
    assert side["init_seed"] == 0 and side["peft_type"] == "LORA" and side["task"] == "toy"
    assert side["init_sha256"] == init_checksum(fresh)
    assert side["init_sha256"] != init_checksum(seeded_peft_model(base_model(), lora_config(), 1))
    assert set(read_manifest(folder)["files"]) == {"adapter_config.json", "adapter_model.safetensors", SIDECAR}


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_merge_with_itself_is_the_module(tmp_path, kind):
    a = make_adapter(tmp_path / "a", lora_config(seq_cls=True) if kind == "lora" else ia3_config(),
                     seq_cls=kind == "lora")
    out = compose_adapters(ArithmeticConfig(adapters=[str(a), str(a)], weights=[0.5, 0.5]), tmp_path / "m")
    assert_states_close(state(out), state(a))
    assert any("classifier" in k for k in state(out)) == (kind == "lora")


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_double_negation_is_identity(tmp_path, kind):
    a = make_adapter(tmp_path / "a", lora_config() if kind == "lora" else ia3_config())
    once = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(a)]), tmp_path / "n1")
    twice = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(once)]), tmp_path / "n2")
    assert not torch.allclose(next(v for k, v in state(once).items() if "lora_B" in k or "ia3" in k),
                              next(v for k, v in state(a).items() if "lora_B" in k or "ia3" in k))
    assert_states_close(state(twice), state(a))


def test_lora_negation_negates_delta_w_exactly(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config())
    neg = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(a)]), tmp_path / "neg")
    w = base_model().state_dict()
    plus = PeftModel.from_pretrained(base_model(), str(a)).merge_and_unload().state_dict()   # W + ΔW
    minus_model = PeftModel.from_pretrained(base_model(), str(neg))
    # the reference W − ΔW built from the positive adapter's merged weights, run through a plain forward
    manual = base_model()
    manual.load_state_dict({k: 2 * w[k] - plus[k] for k in w})
    assert not torch.allclose(hidden(manual), hidden(base_model()), atol=1e-3)
    torch.testing.assert_close(hidden(minus_model), hidden(manual), atol=1e-5, rtol=0)
    minus = minus_model.merge_and_unload().state_dict()
    for k in w:
        torch.testing.assert_close(minus[k] - w[k], -(plus[k] - w[k]), atol=1e-6, rtol=0, msg=k)


def test_ia3_negation_of_identity_is_identity(tmp_path):
    ones = {"m.ia3_l": torch.ones(4, 1)}
    for lam in (1.0, 0.3):
        assert torch.equal(negate(ones, "IA3", lam)["m.ia3_l"], ones["m.ia3_l"])
    l = {"m.ia3_l": torch.tensor([[1.5], [0.5]])}
    assert torch.allclose(negate(l, "IA3")["m.ia3_l"], torch.tensor([[0.5], [1.5]]))
    assert torch.allclose(negate(l, "IA3", 0.5)["m.ia3_l"], torch.tensor([[0.75], [1.25]]))   # (1+λ) − λl
    # an untrained (IA)^3 module is all ones: its negation loads and leaves the base model's output unchanged
    model = seeded_peft_model(base_model(), ia3_config(), 0)
    a = save_adapter(model, tmp_path / "a", init_seed=0)
    neg = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(a)]), tmp_path / "neg")
    torch.testing.assert_close(hidden(PeftModel.from_pretrained(base_model(), str(neg))), hidden(base_model()))


def test_analogy_and_merge_on_hand_made_tensors():
    t = lambda *v: torch.tensor(v)  # noqa: E731
    cls = {"m.lora_A.weight": t(1., 2.), "m.lora_B.weight": t(3., 4.), "classifier.weight": t(9., 9.)}
    tgt = {"m.lora_A.weight": t(.5, .5), "m.lora_B.weight": t(1., 2.)}
    src = {"m.lora_A.weight": t(.1, .2), "m.lora_B.weight": t(.3, .4)}
    out = analogy(cls, tgt, src, "LORA", lam=0.5)
    assert torch.allclose(out["m.lora_A.weight"], t(1 + .25 + .05, 2 + .25 + .1))     # A_cls + λA_tgt + λA_src
    assert torch.allclose(out["m.lora_B.weight"], t(3 + .5 - .15, 4 + 1 - .2))       # B_cls + λB_tgt − λB_src
    assert torch.equal(out["classifier.weight"], cls["classifier.weight"])
    lc, lt, ls = {"m.ia3_l": t(1.2, .8)}, {"m.ia3_l": t(1.5, 1.)}, {"m.ia3_l": t(1.1, .6)}
    assert torch.allclose(analogy(lc, lt, ls, "IA3", lam=2.0)["m.ia3_l"], t(1.2 + 2 * .4, .8 + 2 * .4))
    # the reference code's normalised form: (1−c)·1 + c·l_cls + (1−c)·(l_tgt − l_src)
    c = 0.3
    assert torch.allclose(analogy(lc, lt, ls, "IA3", lam=1 - c, cls_weight=c)["m.ia3_l"],
                          (1 - c) + c * lc["m.ia3_l"] + (1 - c) * (lt["m.ia3_l"] - ls["m.ia3_l"]))
    ab = merge([cls, tgt | {"classifier.weight": t(1., 3.)}], [0.25, 0.75])
    assert torch.allclose(ab["m.lora_B.weight"], t(.25 * 3 + .75 * 1, .25 * 4 + .75 * 2))
    assert torch.allclose(ab["classifier.weight"], t(.25 * 9 + .75 * 1, .25 * 9 + .75 * 3))
    # heads are full parameters: averaged with the weights normalised to sum 1, even for plain addition
    added = merge([cls, tgt | {"classifier.weight": t(1., 3.)}], [1.0, 1.0])
    assert torch.allclose(added["m.lora_A.weight"], t(1.5, 2.5))
    assert torch.allclose(added["classifier.weight"], t(5., 6.))
    # (IA)^3 addition with weights 1, 1 adds the deviations from identity
    assert torch.allclose(merge([lc, lt], [1.0, 1.0], "IA3")["m.ia3_l"], t(1.7, .8))


def test_mismatched_init_refused_unless_forced(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config(), init_seed=0)
    b = make_adapter(tmp_path / "b", lora_config(), init_seed=1, train_seed=2)
    with pytest.raises(RetriktError, match="init seeds / init checksums differ"):
        compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)]), tmp_path / "m")
    out = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], force=True), tmp_path / "m")
    side = json.loads((out / SIDECAR).read_text())
    assert side["init_seed"] is None and side["composed"]["force"] is True
    same = make_adapter(tmp_path / "c", lora_config(), init_seed=0, train_seed=3)
    shared = compose_adapters(ArithmeticConfig(adapters=[str(a), str(same)]), tmp_path / "s")
    assert json.loads((shared / SIDECAR).read_text())["init_seed"] == 0
    # well-definedness cannot be forced: other PEFT type, other rank in A/B space
    ia3 = make_adapter(tmp_path / "i", ia3_config())
    r8 = make_adapter(tmp_path / "r8", lora_config(r=8), init_seed=0)
    for other, msg in ((ia3, "peft_type differs"), (r8, "r differs")):
        with pytest.raises(RetriktError, match=msg):
            compose_adapters(ArithmeticConfig(adapters=[str(a), str(other)], force=True), tmp_path / "x")
    (same / SIDECAR).unlink()
    (same / "manifest.json").unlink()
    with pytest.raises(RetriktError, match="cannot be verified"):
        compose_adapters(ArithmeticConfig(adapters=[str(a), str(same)]), tmp_path / "y")


def test_cat_and_svd_reproduce_weighted_delta_w(tmp_path):
    # different inits, ranks and alphas: ΔW-space combination needs none of them to match
    a = make_adapter(tmp_path / "a", lora_config(r=4, alpha=8), init_seed=0)
    b = make_adapter(tmp_path / "b", lora_config(r=2, alpha=6), init_seed=7, train_seed=2)
    w = [0.7, -0.4]
    da, db = delta_ws(state(a), 8 / 4), delta_ws(state(b), 6 / 2)
    want = {k: w[0] * da[k] + w[1] * db[k] for k in da}
    cat = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], weights=w, space="cat"), tmp_path / "cat")
    ccfg = json.loads((cat / "adapter_config.json").read_text())
    assert ccfg["r"] == 6 and ccfg["lora_alpha"] == 6
    got = delta_ws(state(cat), 1.0)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    # and through PEFT's own merge: W + Σ w_i ΔW_i
    merged = PeftModel.from_pretrained(base_model(), str(cat)).merge_and_unload().state_dict()
    base = base_model().state_dict()
    k = "encoder.layer.0.attention.self.query.weight"
    want_k = next(v for key, v in want.items() if "layer.0.attention.self.query" in key)
    torch.testing.assert_close(merged[k].double() - base[k].double(), want_k, atol=1e-5, rtol=0)
    full = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], weights=w, space="svd", svd_rank=6),
                            tmp_path / "svd6")
    for key, v in delta_ws(state(full), 1.0).items():
        torch.testing.assert_close(v, want[key], atol=1e-5, rtol=0)
    low = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], weights=w, space="svd", svd_rank=2),
                           tmp_path / "svd2")
    for key, v in delta_ws(state(low), 1.0).items():
        s = torch.linalg.svdvals(want[key])
        err = torch.linalg.matrix_norm(v - want[key])   # Eckart-Young: the best rank-2 error
        assert abs(err - s[2:].square().sum().sqrt()) < 1e-4


def test_seq_cls_heads_compose_and_load(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config(seq_cls=True), seq_cls=True)
    b = make_adapter(tmp_path / "b", lora_config(seq_cls=True), seq_cls=True, train_seed=2)
    ha, hb = state(a)["base_model.model.classifier.weight"], state(b)["base_model.model.classifier.weight"]
    want = {"merge": 0.5 * ha + 0.5 * hb, "first": ha, str(b): hb}
    for head, expected in want.items():
        out = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], head=head), tmp_path / "o")
        model = PeftModel.from_pretrained(base_model(seq_cls=True), str(out))
        loaded = get_peft_model_state_dict(model)
        torch.testing.assert_close(loaded["base_model.model.classifier.weight"], expected)
        with torch.no_grad():
            assert model(input_ids=input_ids()).logits.shape == (3, 3)
    out = compose_adapters(ArithmeticConfig(adapters=[str(a), str(b)], head="none"), tmp_path / "none")
    assert not any("classifier" in k for k in state(out))
    PeftModel.from_pretrained(base_model(seq_cls=True), str(out))
    neg = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(a)]), tmp_path / "neg")
    assert torch.equal(state(neg)["base_model.model.classifier.weight"], ha)
    neg = compose_adapters(ArithmeticConfig(op="negate", adapters=[str(a)], head="negate"), tmp_path / "neg")
    assert torch.equal(state(neg)["base_model.model.classifier.weight"], -ha)


def test_init_arithmetic_loads_a_trainable_student(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config(seq_cls=True), seq_cls=True)
    b = make_adapter(tmp_path / "b", lora_config(seq_cls=True), seq_cls=True, train_seed=2)
    cfg = ArithmeticConfig(adapters=[str(a), str(b)], weights=[0.3, 0.7])
    model = init_arithmetic(base_model(seq_cls=True), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    want = merge([state(a), state(b)], [0.3, 0.7])
    assert_states_close(get_peft_model_state_dict(model), want)


def test_init_arithmetic_without_head_trains_the_students_own(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config(seq_cls=True), seq_cls=True)
    student = base_model(seq_cls=True)
    own = student.classifier.weight.detach().clone()
    model = init_arithmetic(student, ArithmeticConfig(op="negate", adapters=[str(a)], head="none"))
    loaded = get_peft_model_state_dict(model)
    torch.testing.assert_close(loaded["base_model.model.classifier.weight"], own)
    torch.testing.assert_close(loaded["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"],
                               -state(a)["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"])
    assert any(p.requires_grad for n, p in model.named_parameters() if "classifier" in n)
