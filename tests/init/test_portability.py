"""Module portability: ported / scratch / sampled initialisations, shape checks, block alignment, MLM hosts, CLI."""
from __future__ import annotations

import json
import re

import pytest
import torch
from peft import get_peft_model, get_peft_model_state_dict
from torch import nn

from retrikt.init import hosts
from retrikt.init.portability import (load_module, new_student, peft_config_for, port_adapter, port_student,
                               save_module)
from retrikt.init.sensitivity import best_block_loop
from retrikt.io import RetriktError, read_manifest
from retrikt.tasks import get_task
from tests.tiny import tiny_bert, tiny_qwen, tiny_tokenizer

TYPES = ["lora", "ia3", "prefix", "prompt"]
TASK = get_task("sst2")
EXAMPLES = [{"sentence": s, "label": i % 2, "idx": i} for i, s in enumerate([
    "the movie is good", "a terrible film", "it was not bad", "great movie , the man ran",
    "the dog sat on the cat", "this film is good but the movie was bad"])]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _randomise(model: nn.Module, seed: int, scale: float = 0.5) -> None:
    """Move every trainable tensor away from its init, so that porting it is a real test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def _module(tmp_path, tok, peft_type, hidden=32):
    student = new_student(tiny_bert(tok, hidden=hidden), TASK, peft_type, seed=3, tokenizer=tok)
    _randomise(student, 11)
    folder = save_module(student, tmp_path / f"mod-{peft_type}", init_seed=3, task="sst2", extra={"host": "a"})
    return student.eval(), folder


@pytest.mark.parametrize("peft_type", TYPES)
def test_ported_module_reproduces_source_outputs_exactly(tmp_path, tok, peft_type):
    source, folder = _module(tmp_path, tok, peft_type)
    ported = port_student(folder, tiny_bert(tok), TASK, "ported", seed=5, tokenizer=tok).eval()
    with torch.no_grad():
        want, got = source(source.tokenize(EXAMPLES)), ported(ported.tokenize(EXAMPLES))
    assert torch.equal(got, want)
    fresh = port_student(folder, tiny_bert(tok), TASK, "scratch", seed=5, tokenizer=tok).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(fresh.tokenize(EXAMPLES)), want)   # the outputs depend on the module
    saved = read_manifest(folder)["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= set(saved)


@pytest.mark.parametrize("peft_type", TYPES)
def test_sampled_matches_per_matrix_mean_and_std(tmp_path, tok, peft_type):
    _, folder = _module(tmp_path, tok, peft_type)
    module = load_module(folder)
    draws = [port_adapter(folder, tiny_bert(tok), "sampled", seed=s) for s in (1, 1, 2)]
    state = get_peft_model_state_dict(draws[0])
    assert set(state) == set(module.state)
    pairs = [(k, module.state[k], state[k]) for k in module.state]
    pairs += [(f"head.{k}", module.head[k], draws[0].retrikt_head[k]) for k in module.head]
    for key, src, got in pairs:
        src, got, n = src.double(), got.double(), src.numel()
        se_mean, se_std = float(src.std()) / n ** 0.5, float(src.std()) / (2 * n) ** 0.5
        assert abs(float(got.mean()) - float(src.mean())) <= 5 * se_mean + 1e-9, key
        assert abs(float(got.std()) - float(src.std())) <= 5 * se_std + 1e-9, key
        if n > 4:
            assert not torch.allclose(got, src), key   # a draw, not a copy
    again, other = get_peft_model_state_dict(draws[1]), get_peft_model_state_dict(draws[2])
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not all(torch.equal(state[k], other[k]) for k in state)


@pytest.mark.parametrize("peft_type", TYPES)
def test_scratch_is_pefts_default_init_for_the_seed(tmp_path, tok, peft_type):
    _, folder = _module(tmp_path, tok, peft_type)
    scratch = port_adapter(folder, tiny_bert(tok), "scratch", seed=7)
    host = tiny_bert(tok)   # (tiny_bert seeds the global RNG itself)
    torch.manual_seed(7)
    reference = get_peft_model(host, peft_config_for(peft_type))
    got, want = get_peft_model_state_dict(scratch), get_peft_model_state_dict(reference)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    module = load_module(folder)
    assert not all(torch.equal(got[k], module.state[k]) for k in got)
    torch.manual_seed(7)
    head = nn.Linear(32, 2)
    assert torch.equal(scratch.retrikt_head["weight"], head.weight.detach())
    assert torch.equal(scratch.retrikt_head["bias"], head.bias.detach())


@pytest.mark.parametrize("peft_type", ["lora", "prompt"])
def test_shape_mismatch_is_refused_naming_tensor_and_shapes(tmp_path, tok, peft_type):
    _, folder = _module(tmp_path, tok, peft_type)
    with pytest.raises(RetriktError) as err:
        port_adapter(folder, tiny_bert(tok, hidden=64), "ported")
    msg = str(err.value)
    key = "lora_A.weight" if peft_type == "lora" else "prompt_embeddings"
    assert key in msg and "32)" in msg and "64)" in msg and "same-shape" in msg
    with pytest.raises(RetriktError, match="condition"):
        port_adapter(folder, tiny_bert(tok), "copied")


def test_lora_onto_a_smaller_host_by_layer_and_block_selection(tmp_path, tok):
    big = get_peft_model(tiny_qwen(tok, hidden=64, layers=4, heads=4, kv_heads=2),
                         peft_config_for("lora", causal=True, r=4, alpha=8))
    _randomise(big, 5, scale=0.3)
    with torch.no_grad():   # make layers 1 and 3 carry the largest updates
        for name, p in big.named_parameters():
            if "lora_B" in name and (".layers.1." in name or ".layers.3." in name):
                p.mul_(10)
    folder = save_module(big, tmp_path / "big", init_seed=0)
    small = tiny_qwen(tok, hidden=32, layers=2, heads=4, kv_heads=2)
    with pytest.raises(RetriktError, match="align='blocks'"):
        port_adapter(folder, small, "ported")
    ported = port_adapter(folder, tiny_qwen(tok, hidden=32, layers=2, heads=4, kv_heads=2), "ported",
                          align="blocks")
    record = ported.retrikt_port["alignment"]
    assert record["layers"] == [1, 3]
    src, got = load_module(folder).state, get_peft_model_state_dict(ported)
    for a_key, (layer, row, col) in record["blocks"].items():
        b_key = a_key.replace("lora_A", "lora_B")
        src_a, src_b = (src[re.sub(r"\.layers\.\d+\.", f".layers.{layer}.", k)] for k in (a_key, b_key))
        delta = src_b @ src_a
        h, w = got[b_key].shape[0], got[a_key].shape[1]
        assert (row, col) == best_block_loop(delta.abs(), (h, w))
        assert torch.allclose(got[b_key] @ got[a_key], delta[row:row + h, col:col + w], atol=1e-6)


def _save_host(folder, tok, seed):
    tiny_bert(tok, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_mlm_host_trains_caches_and_reloads_identically(tmp_path, tok, monkeypatch):
    from retrikt.models import load_encoder
    base = _save_host(tmp_path / "base", tok, 0)
    cfg = hosts.HostConfig(base=base, task="sst2", steps=3, batch_size=4, head_warmup_steps=1, lr=1e-3,
                           mask_prob=0.5, cache=str(tmp_path / "cache"))
    texts = [e["sentence"] for e in EXAMPLES] * 2
    trained, real_train = {}, hosts.mlm_train

    def recording(encoder, tokenizer, texts_, cfg_):
        losses = real_train(encoder, tokenizer, texts_, cfg_)
        trained.update({k: v.detach().clone() for k, v in encoder.state_dict().items()})
        return losses

    monkeypatch.setattr(hosts, "mlm_train", recording)
    path = hosts.build_mlm_host(cfg, texts)
    assert read_manifest(path)["kind"] == "mlm_host" and read_manifest(path)["texts"] == len(texts)
    reloaded, reloaded_tok = load_encoder(str(path))
    assert reloaded_tok.get_vocab() == tok.get_vocab()
    state = reloaded.state_dict()
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in trained)
    original = load_encoder(base)[0].state_dict()
    assert not torch.equal(state["encoder.layer.0.attention.self.query.weight"],
                           original["encoder.layer.0.attention.self.query.weight"])   # training moved it

    monkeypatch.setattr(hosts, "mlm_train", lambda *a: pytest.fail("a cached host must not be retrained"))
    assert hosts.build_mlm_host(cfg, texts) == path
    assert not list(path.parent.glob(".*.tmp-*"))
    other = hosts.host_key(hosts.HostConfig(base=base, steps=4), texts)
    assert other != path.name   # another budget is another entry


def test_mask_tokens_follows_bert_recipe(tok):
    ids = torch.randint(10, len(tok), (64, 64), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    masked, labels = hosts.mask_tokens(ids, special, tok, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert not chosen[:, 0].any() and abs(chosen.float().mean().item() - 0.15 * 63 / 64) < 0.02
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    share_unk = (masked[chosen] == tok.unk_token_id).float().mean().item()   # tiny vocab: [UNK] stands for [MASK]
    assert 0.75 < share_unk < 0.85


def _write_sst2(folder):
    words = ["good", "great", "bad", "terrible"]
    for name, n in (("train.tsv", 40), ("dev.tsv", 12)):
        rows = [f"the movie is {words[i % 4]} {'and' if i % 3 else 'but'} it ran\t{int(i % 4 < 2)}" for i in range(n)]
        (folder / "glue" / "SST-2").mkdir(parents=True, exist_ok=True)
        (folder / "glue" / "SST-2" / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")


def test_cli_smoke_end_to_end(tmp_path, tok):
    from retrikt.port import main
    _write_sst2(tmp_path / "data")
    host_a, host_b = _save_host(tmp_path / "a", tok, 0), _save_host(tmp_path / "b", tok, 1)
    out = tmp_path / "out"
    rc = main(["--from-host", host_a, "--to-host", host_b, "--adapter", str(tmp_path / "module"), "--peft-type",
               "ia3", "--condition", "ported", "scratch", "sampled", "--task", "sst2", "--seeds", "1", "2",
               "--finetune-epochs", "1", "--shots", "8", "--source-epochs", "2", "--data-dir",
               str(tmp_path / "data"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    result = json.loads((out / "port_results.json").read_text())
    assert [(r["condition"], r["seed"]) for r in result["rows"]] == [
        (c, s) for c in ("ported", "scratch", "sampled") for s in (1, 2)]
    assert all(r["zero_shot"]["n"] == 12 and 0 <= r["finetuned"]["main"] <= 1 for r in result["rows"])
    assert set(result["summary"]) == {"ported", "scratch", "sampled"}
    ported = [r["zero_shot"]["main"] for r in result["rows"] if r["condition"] == "ported"]
    assert ported[0] == ported[1]   # the ported module is deterministic: seeds differ only after fine-tuning
    assert result["config"]["peft_type"] == "ia3" and result["seeds"] == [1, 2] and "versions" in result
    assert (tmp_path / "module" / "head.safetensors").exists()
    assert main(["--from-host", host_a, "--to-host", host_b, "--adapter", str(tmp_path / "none"),
                 "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 1


def test_cli_trains_a_causal_lora_and_ports_it_onto_a_smaller_host(tmp_path, tok):
    """Beyond the paper: a LoRA trained on a larger causal LM, block-aligned onto a smaller one, three conditions."""
    from retrikt.port import main
    _write_sst2(tmp_path / "data")
    hosts_ = {}
    for name, (hidden, layers) in {"big": (64, 4), "small": (32, 2)}.items():
        tiny_qwen(tok, hidden=hidden, layers=layers, heads=4, kv_heads=2).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        hosts_[name] = str(tmp_path / name)
    out = tmp_path / "out"
    rc = main(["--from-host", hosts_["big"], "--to-host", hosts_["small"], "--adapter", str(tmp_path / "module"),
               "--peft-type", "lora", "--align", "blocks", "--task", "sst2", "--seeds", "1", "--finetune-epochs",
               "1", "--shots", "4", "--source-epochs", "1", "--eval-limit", "6", "--data-dir", str(tmp_path / "data"),
               "--out", str(out), "--device", "cpu"])
    assert rc == 0
    module = load_module(tmp_path / "module")
    assert module.causal and module.peft_type == "LORA" and not (tmp_path / "module" / "head.safetensors").exists()
    result = json.loads((out / "port_results.json").read_text())
    assert [r["condition"] for r in result["rows"]] == ["ported", "scratch", "sampled"]
    ported = result["rows"][0]
    assert len(ported["port"]["alignment"]["layers"]) == 2 and "finetuned" in ported
    table = (out / "port_results.md").read_text()
    assert "| ported |" in table and "| sampled |" in table and "align `blocks`" in table
