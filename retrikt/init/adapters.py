"""PEFT adapter folders on disk: the one place that reads and writes them, and the PEFT facts both arithmetic
(:mod:`retrikt.init.arithmetic`) and porting (:mod:`retrikt.init.portability`) rely on.

An adapter folder holds PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, a ``retrikt_adapter.json``
sidecar (init seed and checksum, base model, PEFT type, task) and a manifest written last. A/B-space arithmetic
needs modules trained from one shared initialisation; the sidecar's init checksum is how that is verified.

A *module* (what porting moves between hosts) is an adapter folder plus the ``head.safetensors`` of the student it
was trained in, under one manifest; the ``encoder/`` + ``head.safetensors`` layout of ``EncoderClassifier.save``
is read too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from retrikt.io import (MANIFEST, RetriktError, atomic_path, atomic_write_json, folder_lock, read_manifest,
                        sha256_file, write_manifest)

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR = "retrikt_adapter.json"
HEAD_FILE = "head.safetensors"
SCHEMA_VERSION = 1
# Short name (CLI / peft_config_for) -> PEFT's peft_type: every type a module folder may hold.
PEFT_TYPES = {"lora": "LORA", "ia3": "IA3", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}
# Arithmetic needs weight deltas; prompt-learning modules have none.
ARITHMETIC_PEFT_TYPES = ("LORA", "IA3")
# Filled by PEFT from the host's config: cleared so that a different host re-derives them (and the shape check
# then names the tensor that no longer fits instead of PEFT failing deep inside a forward pass).
_HOST_FIELDS = ("num_layers", "token_dim", "num_attention_heads", "num_transformer_submodules")
# PEFT's LoraConfig field defaults, which PEFT applies when adapter_config.json omits the field.
_LORA_DEFAULTS = {"r": 8, "lora_alpha": 8}


def lora_scaling(config: Mapping[str, Any], where: Any = "LoRA config") -> float:
    """The scale ``s`` in PEFT's ``ΔW = s·B A`` for an ``adapter_config.json`` dict: ``lora_alpha / r``, or
    ``lora_alpha / √r`` when ``use_rslora`` is set.

    Only a field *absent* from the dict takes PEFT's LoraConfig default (``r=8``, ``lora_alpha=8``), as PEFT does
    when it loads such a file; a field present with a value PEFT could not use (``r`` not a positive integer,
    ``lora_alpha`` not a finite number, ``null`` included) raises :class:`RetriktError` naming ``where``.
    ``rank_pattern`` / ``alpha_pattern`` are not applied: this is the config-wide scale.
    """
    r, alpha = (config[k] if k in config else default for k, default in _LORA_DEFAULTS.items())
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise RetriktError(f"{where}: LoRA rank r={r!r} is not a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise RetriktError(f"{where}: lora_alpha={alpha!r} is not a finite number")
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


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


# ---- reading -----------------------------------------------------------------------------------------------

@dataclass
class Adapter:
    path: Path
    config: dict
    state: dict[str, torch.Tensor]
    sidecar: dict | None
    sha256: str


@dataclass
class Module:
    """A module read from disk: PEFT config (dict), adapter tensors, head tensors (or None), sidecar."""
    path: Path
    config: dict
    state: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None
    sidecar: dict

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type"))

    @property
    def causal(self) -> bool:
        return self.config.get("task_type") == "CAUSAL_LM"


def _read_folder(folder: Path, manifest_dir: Path) -> tuple[dict, Path, dict | None]:
    """(config, weights file, sidecar or None) of a PEFT adapter folder; ``manifest_dir``'s manifest is verified
    first when it has one (a module's manifest sits above its ``encoder/`` adapter)."""
    if not (folder / CONFIG_FILE).exists():
        raise RetriktError(f"{folder}: no {CONFIG_FILE} (not a PEFT adapter folder)")
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise RetriktError(f"{folder}: no {WEIGHTS_FILE} (pickled adapter_model.bin is not supported)")
    if (manifest_dir / MANIFEST).exists():
        read_manifest(manifest_dir, verify=True)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        side = folder / SIDECAR
        sidecar = json.loads(side.read_text(encoding="utf-8")) if side.exists() else None
    except json.JSONDecodeError as e:
        raise RetriktError(f"{folder}: invalid JSON ({e})") from None
    return config, weights, sidecar


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read a PEFT adapter folder for arithmetic (verifying its manifest when it has one) and its sidecar."""
    path = Path(path)
    config, weights, sidecar = _read_folder(path, path)
    cfg_path = path / CONFIG_FILE
    if config.get("peft_type") not in ARITHMETIC_PEFT_TYPES:
        raise RetriktError(f"{cfg_path}: peft_type {config.get('peft_type')!r} not supported; "
                           f"only {ARITHMETIC_PEFT_TYPES}")
    bad = [o for o in ("use_dora", "lora_bias", "trainable_token_indices") if config.get(o)]
    bad += ["bias=" + config["bias"]] if config.get("bias", "none") != "none" else []
    if bad:
        raise RetriktError(f"{cfg_path}: arithmetic is not defined for adapters with {', '.join(bad)}")
    return Adapter(path, config, load_file(str(weights)), sidecar, sha256_file(weights))


def _module_folder(path: Path) -> tuple[Path, Path | None]:
    """(folder holding adapter_config.json, head file or None) for both module layouts."""
    head = path / HEAD_FILE if (path / HEAD_FILE).exists() else None
    if (path / CONFIG_FILE).exists():
        return path, head
    if (path / "encoder" / CONFIG_FILE).exists():
        return path / "encoder", head
    raise RetriktError(f"{path}: no {CONFIG_FILE} (neither a PEFT adapter folder nor a saved PEFT student)")


def load_module(path: str | os.PathLike) -> Module:
    """Read a module folder for porting, verifying its manifest when it has one."""
    path = Path(path)
    folder, head_file = _module_folder(path)
    config, weights, sidecar = _read_folder(folder, path)
    _check_portable(config, folder / CONFIG_FILE)
    return Module(path, config, load_file(str(weights)), load_file(str(head_file)) if head_file else None,
                  sidecar or {})


def _check_portable(config: dict, where: Any) -> None:
    ptype = config.get("peft_type")
    if ptype not in PEFT_TYPES.values():
        why = " (P-tuning: PEFT saves only its prompt encoder's output)" if ptype == "P_TUNING" else ""
        raise RetriktError(f"{where}: peft_type {ptype!r} cannot be ported{why}; supported: "
                           f"{', '.join(PEFT_TYPES.values())}")
    if ptype == "PREFIX_TUNING" and config.get("prefix_projection"):
        raise RetriktError(f"{where}: prefix tuning with prefix_projection=True cannot be ported: PEFT saves only "
                           "the projection's output, not the projection")


def peft_config_of(module: Module) -> Any:
    """The module's PEFT config object, ready for ``get_peft_model`` on a (possibly different) host."""
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    data = {k: v for k, v in module.config.items() if k not in _HOST_FIELDS}
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[module.peft_type]
    known = {f.name for f in dataclasses.fields(cls)}
    config: PeftConfig = cls(**{k: v for k, v in data.items() if k in known})
    config.inference_mode = False
    config.base_model_name_or_path = None   # the new host's own name is filled in; the source is in the sidecar
    return config


# ---- creating and writing ----------------------------------------------------------------------------------

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


def save_module(student: nn.Module, folder: str | os.PathLike, init_seed: int | None = None,
                task: str | None = None, extra: dict | None = None) -> Path:
    """Save a PEFT-wrapped student's module: PEFT adapter (+ sidecar) and its head, under one manifest."""
    folder = Path(folder)
    from peft import PeftModel
    peft_model = student if isinstance(student, PeftModel) else (getattr(student, "encoder", None)
                                                                 or getattr(student, "model", None))
    if peft_model is None or not hasattr(peft_model, "peft_config"):
        raise RetriktError(f"{folder}: the student carries no PEFT module to save")
    save_adapter(peft_model, folder, init_seed=init_seed, extra=extra, task=task)
    files = [CONFIG_FILE, WEIGHTS_FILE, SIDECAR]
    with folder_lock(folder):
        head = getattr(student, "head", None)
        if isinstance(head, nn.Linear):
            with atomic_path(folder / HEAD_FILE) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(tmp))
            files.append(HEAD_FILE)
        write_manifest(folder, {"schema_version": SCHEMA_VERSION, "kind": "peft_module"}, files)
    return folder
