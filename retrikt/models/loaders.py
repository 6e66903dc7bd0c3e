"""Loading models and tokenizers by short name, local folder or hub id, on CUDA when present, else CPU."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from retrikt.io import RetriktError
from retrikt.models.cache import _cache_dir, is_cached, missing_packages, model_path, pip_args
from retrikt.models.ram import check_ram, ram_estimate_gib
from retrikt.models.specs import MODELS, get_spec


def _device(device: Any) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _resolve(name: str | os.PathLike, kind: str | None, dtype: Any = None) -> tuple[str, dict]:
    """(folder or hub id, from_pretrained kwargs); short names and local folders never touch the network."""
    if str(name) in MODELS and kind and MODELS[str(name)].kind != kind:
        raise RetriktError(f"{name} is a {MODELS[str(name)].kind} model, not a {kind}")
    path = model_path(name, dtype)
    return str(path), ({"local_files_only": True} if path.exists() else {})


def load_tokenizer(name: str | os.PathLike, padding_side: str | None = None):
    """The tokenizer of ``name``, always with a pad token; causal short names pad on the left."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    path, kw = _resolve(name, None)
    config = Path(path) / "tokenizer_config.json"
    generic = config.exists() and json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") in (
        "TokenizersBackend", "PreTrainedTokenizerFast")
    # AutoTokenizer forces Qwen2Tokenizer on any qwen2 folder, which misreads tiny-causal's WordPiece vocab
    tok = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if padding_side is None and str(name) in MODELS and MODELS[str(name)].kind == "causal-lm":
        padding_side = "left"
    if padding_side:
        tok.padding_side = padding_side
    return tok


def _cache_variant(name: str, dtype: torch.dtype) -> str | None:
    """bf16 requests reuse an existing fp32 entry (cast on load is exact); otherwise the matching entry."""
    if str(name) not in MODELS:
        return None
    if dtype is torch.bfloat16 and "float32" in is_cached(name) and "bfloat16" not in is_cached(name):
        return "float32"
    return "bfloat16" if dtype is torch.bfloat16 else "float32"


def load_causal_lm(name: str | os.PathLike, dtype: torch.dtype = torch.float32, device: Any = None):
    """(model in eval mode, tokenizer with pad token and left padding) for a causal LM."""
    from transformers import AutoModelForCausalLM
    path, kw = _resolve(name, "causal-lm", _cache_variant(name, dtype))
    check_ram(str(name), "load", dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw).to(_device(device)).eval()
    tok = load_tokenizer(path, padding_side="left")
    if tok.model_max_length > 10**6:  # GGUF tokenizers come without a limit
        tok.model_max_length = getattr(model.config, "max_position_embeddings", 2048)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_encoder(name: str | os.PathLike, num_labels: int | None = None, device: Any = None):
    """(AutoModel, or AutoModelForSequenceClassification with a new head when ``num_labels``, tokenizer)."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    path, kw = _resolve(name, "encoder")
    check_ram(str(name), "load")
    if num_labels is None:
        model = AutoModel.from_pretrained(path, **kw)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kw)
    return model.to(_device(device)).eval(), load_tokenizer(path)


def load_sentence_transformer(name: str | os.PathLike, device: Any = None):
    from sentence_transformers import SentenceTransformer
    path, kw = _resolve(name, "encoder")
    check_ram(str(name), "load")
    return SentenceTransformer(path, device=str(_device(device)), **kw)


def num_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each, even when tied weights are separate Parameter objects sharing storage."""
    seen, total = set(), 0
    for p in model.parameters():
        key = (p.data_ptr(), p.numel()) if p.device.type != "meta" else id(p)
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def model_kind(name_or_path: str | os.PathLike) -> str:
    """'causal-lm' or 'encoder', from the short name's spec or the folder's / hub config's architectures."""
    if str(name_or_path) in MODELS:
        return MODELS[str(name_or_path)].kind
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise RetriktError(f"cannot read a model config from {name_or_path!r}: {e}") from None
    archs = getattr(cfg, "architectures", None) or []
    return "causal-lm" if any("CausalLM" in a or "LMHeadModel" in a for a in archs) else "encoder"


def model_info(name: str) -> dict:
    spec = get_spec(name)
    info = dataclasses.asdict(spec)
    info.update(installed=not missing_packages(spec), cached=is_cached(name) if spec.source != "folder" else [],
                pip_install="pip install " + " ".join(pip_args([name])),
                ram_gib={"convert": ram_estimate_gib(name, "convert"), "load": ram_estimate_gib(name, "load")})
    if spec.source != "folder":
        info["cache_dirs"] = {dt: str(_cache_dir(name, dt)) for dt in ("float32", "bfloat16")}
    return info
