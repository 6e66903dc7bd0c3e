"""PEFT adapters on disk for module arithmetic: seeded creation, save / load with a retrikt sidecar, init checksums.

An adapter folder holds PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, a ``retrikt_adapter.json``
sidecar (init seed and checksum, base model, PEFT type, task) and a manifest written last. A/B-space arithmetic
needs modules trained from one shared initialisation; the sidecar's init checksum is how that is verified.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from retrikt.io import (MANIFEST, RetriktError, atomic_path, atomic_write_json, folder_lock, read_manifest,
                        sha256_file, write_manifest)

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR = "retrikt_adapter.json"
SCHEMA_VERSION = 1
PEFT_TYPES = ("LORA", "IA3")


def _kind(key: str) -> str:
    if ".lora_A." in key or key.endswith("lora_embedding_A"):
        return "A"
    if ".lora_B." in key or key.endswith("lora_embedding_B"):
        return "B"
    return "ia3" if key.endswith("ia3_l") else "full"


def init_checksum(state_or_model: Any) -> str:
    """sha256 of the LoRA A matrices / (IA)^3 vectors of a PEFT state dict or PeftModel (its active adapter)."""
    state = state_or_model
    if not isinstance(state, dict):
        from peft import get_peft_model_state_dict
        state = get_peft_model_state_dict(state_or_model, adapter_name=state_or_model.active_adapter)
    h = hashlib.sha256()
    for k in sorted(k for k in state if _kind(k) in ("A", "ia3")):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Adapter:
    path: Path
    config: dict
    state: dict[str, torch.Tensor]
    sidecar: dict | None
    sha256: str


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read a PEFT adapter folder (verifying its manifest when it has one) and its retrikt sidecar."""
    path = Path(path)
    cfg_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_path.exists():
        raise RetriktError(f"{path}: no {CONFIG_FILE} (not a PEFT adapter folder)")
    if not weights.exists():
        raise RetriktError(f"{path}: no {WEIGHTS_FILE} (pickled adapter_model.bin is not supported)")
    if (path / MANIFEST).exists():
        read_manifest(path, verify=True)
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        sidecar = json.loads((path / SIDECAR).read_text(encoding="utf-8")) if (path / SIDECAR).exists() else None
    except json.JSONDecodeError as e:
        raise RetriktError(f"{path}: invalid JSON ({e})") from None
    if config.get("peft_type") not in PEFT_TYPES:
        raise RetriktError(f"{cfg_path}: peft_type {config.get('peft_type')!r} not supported; only {PEFT_TYPES}")
    bad = [o for o in ("use_dora", "lora_bias", "trainable_token_indices") if config.get(o)]
    bad += ["bias=" + config["bias"]] if config.get("bias", "none") != "none" else []
    if bad:
        raise RetriktError(f"{cfg_path}: arithmetic is not defined for adapters with {', '.join(bad)}")
    return Adapter(path, config, load_file(str(weights)), sidecar, sha256_file(weights))


def _write_adapter(out: Path, config: dict, state: dict[str, torch.Tensor], sidecar: dict) -> None:
    """PEFT files first, manifest last: a crash leaves a folder that fails read_manifest, never a mixed one."""
    with folder_lock(out):
        (out / MANIFEST).unlink(missing_ok=True)
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
        atomic_write_json(out / CONFIG_FILE, config)
        atomic_write_json(out / SIDECAR, sidecar)
        write_manifest(out, {"schema_version": SCHEMA_VERSION, "kind": "peft_adapter",
                             "peft_type": config["peft_type"]}, [CONFIG_FILE, WEIGHTS_FILE, SIDECAR])


def lora_config_for(model, r: int, alpha: int, causal: bool):
    """LoRA on a causal LM's seven projections (what the parametric method transfers into, so the two differ only in
    the init), or on an encoder's query / value."""
    from peft import LoraConfig
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    wanted = (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] if causal
              else ["query", "value"])
    targets = [t for t in wanted if t in names] or ["query", "value", "q_proj", "v_proj"]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules=targets)


def seeded_peft_model(model: torch.nn.Module, peft_config: Any, init_seed: int) -> Any:
    """``get_peft_model`` under a fixed seed, recording the init checksum that :func:`save_adapter` writes.

    Modules meant for arithmetic must come from the same seed (and base model) so their A matrices start equal.
    """
    from peft import get_peft_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        peft_model = get_peft_model(model, peft_config)
    peft_model.retrikt_init = {"init_seed": init_seed, "init_sha256": init_checksum(peft_model)}
    return peft_model


def save_adapter(peft_model: Any, folder: str | os.PathLike, init_seed: int | None = None,
                 extra: dict | None = None, task: str | None = None) -> Path:
    """Save the active adapter in PEFT format plus ``retrikt_adapter.json`` (init seed and checksum, base model,
    PEFT type, task) and a manifest. The init checksum is known only for models built by :func:`seeded_peft_model`.
    """
    folder, name = Path(folder), peft_model.active_adapter
    record = getattr(peft_model, "retrikt_init", None) or {}
    if init_seed is not None and record and record["init_seed"] != init_seed:
        raise RetriktError(f"{folder}: init_seed={init_seed} but the model was initialised with seed "
                           f"{record['init_seed']}")
    if not record:
        logger.warning("%s: initial adapter checksum unknown (build the model with seeded_peft_model); "
                       "A/B-space arithmetic with this adapter will need force=True", folder)
    pcfg = peft_model.peft_config[name]
    with folder_lock(folder):
        (folder / MANIFEST).unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as tmp:
            peft_model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
            src = Path(tmp) if name == "default" else Path(tmp) / name
            for f in (CONFIG_FILE, WEIGHTS_FILE):
                os.replace(src / f, folder / f)
        atomic_write_json(folder / SIDECAR, {
            "schema_version": SCHEMA_VERSION, "peft_type": str(getattr(pcfg.peft_type, "value", pcfg.peft_type)),
            "base_model": pcfg.base_model_name_or_path, "task": task,
            "task_type": str(getattr(pcfg.task_type, "value", pcfg.task_type)) if pcfg.task_type else None,
            "init_seed": record.get("init_seed", init_seed), "init_sha256": record.get("init_sha256"),
            "extra": extra or {}})
        write_manifest(folder, {"schema_version": SCHEMA_VERSION, "kind": "peft_adapter"},
                       [CONFIG_FILE, WEIGHTS_FILE, SIDECAR])
    return folder
