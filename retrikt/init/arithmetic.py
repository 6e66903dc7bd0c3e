"""Arithmetic on PEFT modules (Zhang et al., "Composing Parameter-Efficient Modules with Arithmetic Operations",
NeurIPS 2023): add, negate and analogise LoRA and (IA)^3 adapters saved in PEFT format, with no training.

Operators (the paper's definitions; reference code hkust-nlp/PEM_composition, merge.py / negation.py / analogy.py):

* merge, ``space="ab"`` (the paper's addition): ``θ = Σ w_i·θ_i`` applied to LoRA A and B *separately*. The
  result is ``ΔW = (Σ w_i B_i)(Σ w_j A_j) = Σ_i w_i² B_i A_i + Σ_{i≠j} w_i w_j B_i A_j``: not ``Σ w_i ΔW_i``. The
  cross terms are why the paper needs modules trained from one shared initialisation: if A barely moves from the
  shared A_0 the product is ``≈ (Σ w)·(Σ w_i B_i) A_0 = Σ w_i ΔW_i`` for weights summing to 1. So compose refuses
  "ab" merges of LoRA modules whose init seed / init checksum (sidecar ``retrikt_adapter.json``) differ.
* merge, ``space="cat"`` (PEFT's ``cat``): ``A = [w_1 s_1 A_1; …]``, ``B = [B_1 … B_n]``, rank ``Σ r_i``, scaling 1,
  so ``ΔW = Σ w_i ΔW_i`` *exactly* (``s_i`` = each module's ``lora_alpha/r``). Needs no shared init.
* merge, ``space="svd"`` (PEFT's ``svd``): the same exact sum, truncated to rank ``svd_rank`` (default: the largest
  input rank) by SVD; singular values are split as ``√S`` into both factors so the result trains well as an init.
* (IA)^3 vectors are merged in deviation-from-identity space, ``l = 1 + Σ w_i (l_i − 1)``, which equals the paper's
  ``Σ w_i l_i`` when the weights sum to 1 and keeps "add two modules" (weights 1, 1) meaningful. Because
  ``W·diag(l)`` is linear in ``l``, this is already exact in weight space: ``space`` must be "ab".
* negate: LoRA ``B → −λB`` (A untouched), so ``ΔW → −λΔW`` exactly; (IA)^3 ``l → (1+λ) − λl`` (``2 − l`` at λ=1).
* analogy (domain transfer): ``θ_cls(src) ⊕ λ·(θ_lm(tgt) ⊖ θ_lm(src))`` where ⊖ is addition of the negated
  module, exactly as the reference code does it. For LoRA that is ``A = A_cls + λA_tgt + λA_src`` and
  ``B = B_cls + λB_tgt − λB_src``; for (IA)^3 ``l = l_cls + λ(l_tgt − l_src)``. The paper's normalised form
  ``c·θ_cls + (1−c)·(…)`` is ``weights=[c, 1−c]``.

Heads and other ``modules_to_save`` are full parameters, not deltas (PEFT's ``add_weighted_adapter`` refuses
SEQ_CLS adapters for that reason). ``head="merge"`` averages them with the merge weights normalised to sum 1 (the
reference code's ``merge_head``); ``"first"`` or an adapter's index / path takes that adapter's head; ``"none"``
drops it (the student keeps its own). Negation keeps the head unless ``head="negate"`` (flips every logit). Analogy
always takes the head of θ_cls(src) (LM modules carry no task head) unless ``head="none"``.

``force`` overrides the checks that guard *meaning* (shared init, base model name); checks that guard
*well-definedness* (PEFT type, target modules, tensor names and shapes) cannot be forced.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from retrikt.config import arg
from retrikt.init.adapters import (ARITHMETIC_PEFT_TYPES, CONFIG_FILE, SCHEMA_VERSION, SIDECAR, WEIGHTS_FILE, Adapter,
                                   _kind, _write_adapter, init_checksum, load_adapter, lora_scaling, save_adapter,
                                   seeded_peft_model)
from retrikt.io import RetriktError, sha256_file

# Adapter I/O lives in retrikt.init.adapters; its names are re-exported because callers and tests import them here.
__all__ = ["ARITHMETIC_PEFT_TYPES", "CONFIG_FILE", "SCHEMA_VERSION", "SIDECAR", "WEIGHTS_FILE", "Adapter",
           "ArithmeticConfig", "analogy", "compose_adapters", "init_arithmetic", "init_checksum", "load_adapter",
           "lora_scaling", "merge", "negate", "save_adapter", "seeded_peft_model"]

logger = logging.getLogger(__name__)


@dataclass
class ArithmeticConfig:
    op: str = arg("merge", choices=["merge", "negate", "analogy"],
                  help="merge: Σ w_i·θ_i of the adapters; negate: ⊖θ of one adapter; analogy: three adapters "
                       "cls_src lm_tgt lm_src -> θ_cls(src) ⊕ λ(θ_lm(tgt) ⊖ θ_lm(src)) (paper §3, domain transfer)")
    adapters: list[str] = arg([], help="adapter folders in PEFT format (adapter_config.json + "
                                       "adapter_model.safetensors); analogy takes exactly cls_src lm_tgt lm_src")
    weights: list[float] = arg([], help="merge: one weight per adapter (default 1/n each, the paper's mean; "
                                        "λ, 1−λ for two); analogy: optional [w_cls, w_lm] replacing [1, lam]")
    lam: float = arg(1.0, help="negate: strength λ (LoRA B -> −λB, (IA)^3 l -> (1+λ)−λl; the paper uses 1); "
                               "analogy: weight of θ_lm(tgt) ⊖ θ_lm(src)")
    space: str = arg("ab", choices=["ab", "cat", "svd"],
                     help="ab: add LoRA A and B separately (the paper; needs shared init); cat: exact Σ w_i ΔW_i "
                          "at rank Σ r_i (PEFT's cat); svd: exact sum truncated to svd_rank (PEFT's svd)")
    svd_rank: int | None = arg(None, help="rank of the svd result (default: the largest input rank, as PEFT)")
    head: str = arg("merge", help="classifier heads / modules_to_save: merge (weighted mean) | first | none | "
                                  "negate (negate op only) | an adapter's index or path")
    force: bool = arg(False, help="compose even if init seeds / init checksums / base models differ")
    out: str = arg("", help="output adapter folder")


# ---- state dicts -------------------------------------------------------------------------------------------

def _b_key(a_key: str) -> str:
    return "lora_B".join(a_key.rsplit("lora_A", 1))


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(adapter deltas, full parameters such as heads) of a PEFT state dict."""
    delta = {k: v for k, v in state.items() if _kind(k) != "full"}
    return delta, {k: v for k, v in state.items() if _kind(k) == "full"}


# ---- operators on state dicts ------------------------------------------------------------------------------

def _merge_heads(fulls: list[dict], weights: list[float], head: str | int) -> dict:
    if head == "none":
        return {}
    if isinstance(head, int):
        return {k: v.clone() for k, v in fulls[head].items()}
    keys = [sorted(f) for f in fulls]
    if any(k != keys[0] for k in keys):
        raise RetriktError(f"head='merge' needs the same modules_to_save tensors in every adapter, got {keys}; "
                           "use head='first', an adapter index, or 'none'")
    total = sum(weights)
    if keys[0] and abs(total) < 1e-12:
        raise RetriktError(f"head='merge' normalises by the sum of the weights {weights}, which is 0; "
                           "pick head='first', an adapter index, or 'none'")
    return {k: sum((w / total) * f[k].float() for f, w in zip(fulls, weights)).to(fulls[0][k].dtype)
            for k in keys[0]}


def _factor_svd(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of ``B @ A`` without forming it: QR both sides, SVD the small core."""
    if A.dim() != 2:
        raise RetriktError(f"space='svd' supports 2-D LoRA factors only, got A of shape {tuple(A.shape)}")
    qb, rb = torch.linalg.qr(B.double())
    qa, ra = torch.linalg.qr(A.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    B_new, A_new = torch.zeros(B.shape[0], rank, dtype=B.dtype), torch.zeros(rank, A.shape[1], dtype=A.dtype)
    B_new[:, :k] = ((qb @ u[:, :k]) * root).to(B.dtype)
    A_new[:k] = (root[:, None] * (vh[:k] @ qa.T)).to(A.dtype)
    return B_new, A_new


def _merge_delta_w(deltas: list[dict], weights: list[float], scalings: list[float], space: str,
                   svd_rank: int | None) -> dict:
    rank = svd_rank or max(next(v.shape[0] for k, v in d.items() if _kind(k) == "A") for d in deltas)
    out = {}
    for a_key in sorted(k for k in deltas[0] if _kind(k) == "A"):
        b_key, dtype = _b_key(a_key), deltas[0][a_key].dtype
        A = torch.cat([w * s * d[a_key].float() for d, w, s in zip(deltas, weights, scalings)], 0)
        B = torch.cat([d[b_key].float() for d in deltas], 1)
        if space == "svd":
            B, A = _factor_svd(B, A, rank)
        out[a_key], out[b_key] = A.to(dtype).contiguous(), B.to(dtype).contiguous()
    return out


def merge(states: list[dict[str, torch.Tensor]], weights: list[float], peft_type: str = "LORA",
          space: str = "ab", svd_rank: int | None = None, scalings: list[float] | None = None,
          head: str | int = "merge") -> dict[str, torch.Tensor]:
    """Σ w_i·θ_i of PEFT state dicts (see the module docstring for each ``space``); heads per ``head``.

    ``scalings`` (LoRA ``lora_alpha/r`` per module, default 1) matter only for "cat" / "svd", whose result has
    scaling 1.
    """
    if len(states) != len(weights) or not states:
        raise RetriktError(f"merge needs one weight per adapter: {len(states)} adapters, {len(weights)} weights")
    deltas, fulls = zip(*(_split(s) for s in states))
    if peft_type == "IA3":
        if space != "ab":
            raise RetriktError(f"(IA)^3 merges are exact in 'ab' space already; space={space!r} is for LoRA")
        out = {k: (1 + sum(w * (d[k].float() - 1) for d, w in zip(deltas, weights))).to(v.dtype)
               for k, v in deltas[0].items()}
    elif space == "ab":
        out = {k: sum(w * d[k].float() for d, w in zip(deltas, weights)).to(v.dtype) for k, v in deltas[0].items()}
    else:
        out = _merge_delta_w(list(deltas), weights, scalings or [1.0] * len(states), space, svd_rank)
    out.update(_merge_heads(list(fulls), weights, head))
    return out


def negate(state: dict[str, torch.Tensor], peft_type: str, lam: float = 1.0,
           head: str = "keep") -> dict[str, torch.Tensor]:
    """⊖θ: LoRA B -> −λB (ΔW -> −λΔW exactly); (IA)^3 l -> (1+λ) − λl. ``head``: keep | negate | none."""
    out = {}
    for k, v in state.items():
        kind = _kind(k)
        if (kind == "ia3") != (peft_type == "IA3") and kind != "full":
            raise RetriktError(f"tensor {k} does not belong to a {peft_type} adapter")
        if kind == "B":
            out[k] = -lam * v
        elif kind == "ia3":
            out[k] = (1 - lam * (v.float() - 1)).to(v.dtype)   # = (1+λ) − λl, exact at the identity
        elif kind == "A" or head == "keep":
            out[k] = v.clone()
        elif head == "negate":
            out[k] = -v
    return out


def analogy(cls_src: dict, lm_tgt: dict, lm_src: dict, peft_type: str, lam: float = 1.0, cls_weight: float = 1.0,
            space: str = "ab", svd_rank: int | None = None, scalings: list[float] | None = None,
            head: str = "first") -> dict[str, torch.Tensor]:
    """``cls_weight·θ_cls(src) ⊕ lam·(θ_lm(tgt) ⊖ θ_lm(src))``; the head comes from ``cls_src``."""
    neg = negate(lm_src, peft_type, 1.0, head="none")
    return merge([cls_src, lm_tgt, neg], [cls_weight, lam, lam], peft_type, space, svd_rank, scalings,
                 head="none" if head == "none" else 0)


# ---- checks on loaded adapters -----------------------------------------------------------------------------

def _field(cfg: dict, name: str) -> Any:
    v = cfg.get(name)
    return sorted(v) if isinstance(v, list) else v   # PEFT saves module-name sets as lists in any order


def _check_compatible(adapters: list[Adapter], space: str, force: bool) -> None:
    """Checks of well-definedness, which ``force`` cannot override; then :func:`_check_soft`."""
    first = adapters[0]
    for a in adapters[1:]:
        where = f"{a.path} vs {first.path}"
        for f in ("peft_type", "target_modules", "feedforward_modules", "fan_in_fan_out", "layers_to_transform"):
            if _field(a.config, f) != _field(first.config, f):
                raise RetriktError(f"{where}: {f} differs ({_field(a.config, f)!r} vs {_field(first.config, f)!r})")
        keys = lambda ad: sorted(k for k in ad.state if _kind(k) != "full")  # noqa: E731
        if keys(a) != keys(first):
            raise RetriktError(f"{where}: the adapters adapt different tensors")
        if space == "ab":
            for field in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern"):
                if a.config.get(field) != first.config.get(field):
                    raise RetriktError(f"{where}: {field} differs ({a.config.get(field)!r} vs "
                                       f"{first.config.get(field)!r}); space='ab' adds A and B of equal shape, "
                                       "use space='cat' or 'svd'")
    if space != "ab" and any(a.config.get("alpha_pattern") or a.config.get("rank_pattern") for a in adapters):
        raise RetriktError(f"space={space!r} does not support adapters with rank_pattern / alpha_pattern")
    _check_soft(adapters, space, force)


def _check_soft(adapters: list[Adapter], space: str, force: bool) -> None:
    """Checks of meaning (shared init, base model), which ``force`` overrides (with a warning)."""
    problems = []
    bases = {a.config.get("base_model_name_or_path") for a in adapters}
    if len(bases) > 1:
        problems.append(f"base models differ: {sorted(map(str, bases))}")
    needs_init = (space == "ab" and adapters[0].config["peft_type"] == "LORA"
                  and len({a.sha256 for a in adapters}) > 1)
    if needs_init:
        for a in adapters:
            if not a.sidecar or a.sidecar.get("init_sha256") is None:
                problems.append(f"{a.path}: no init checksum in {SIDECAR}, so a shared initialisation cannot be "
                                "verified (save adapters with retrikt.init.adapters.save_adapter)")
        inits = {(a.sidecar.get("init_seed"), a.sidecar.get("init_sha256")) for a in adapters if a.sidecar}
        if len(inits) > 1:
            problems.append("init seeds / init checksums differ: " + "; ".join(
                f"{a.path}: seed {a.sidecar.get('init_seed')}, sha256 {str(a.sidecar.get('init_sha256'))[:12]}"
                for a in adapters if a.sidecar) + " (the paper's A/B-space arithmetic needs one shared init)")
    if problems and not force:
        raise RetriktError("; ".join(problems) + ". Pass force=True (--force) to compose anyway, or use "
                                                 "space='cat' for an exact ΔW-space sum")
    for p in problems:
        logger.warning("composing despite: %s", p)


def _head_choice(cfg: ArithmeticConfig) -> str | int:
    h = cfg.head
    if h in ("merge", "none", "negate"):
        return h
    if h == "first":
        return 0
    if h.lstrip("-").isdigit() and -len(cfg.adapters) <= int(h) < len(cfg.adapters):
        return int(h) % len(cfg.adapters)
    resolved = [str(Path(a).resolve()) for a in cfg.adapters]
    if str(Path(h).resolve()) in resolved:
        return resolved.index(str(Path(h).resolve()))
    raise RetriktError(f"head={h!r}: expected merge, first, none, negate, or an index / path of {cfg.adapters}")


def _validate(cfg: ArithmeticConfig) -> None:
    n = len(cfg.adapters)
    need = {"merge": n >= 1, "negate": n == 1, "analogy": n == 3}
    if cfg.op not in need:
        raise RetriktError(f"op={cfg.op!r}: expected merge, negate or analogy")
    if not need[cfg.op]:
        raise RetriktError(f"op={cfg.op} got {n} adapter(s): merge takes 1 or more, negate 1, "
                           "analogy 3 (cls_src lm_tgt lm_src)")
    if cfg.weights and len(cfg.weights) != {"merge": n, "analogy": 2, "negate": 0}[cfg.op]:
        raise RetriktError(f"op={cfg.op}: {len(cfg.weights)} weights given for {n} adapter(s); merge takes one "
                           "per adapter, analogy [w_cls, w_lm], negate none (use lam)")
    if cfg.space not in ("ab", "cat", "svd"):
        raise RetriktError(f"space={cfg.space!r}: expected ab, cat or svd")
    if cfg.head == "negate" and cfg.op != "negate":
        raise RetriktError("head='negate' applies to op=negate only")


def _apply(cfg: ArithmeticConfig, adapters: list[Adapter], head: str | int) -> dict[str, torch.Tensor]:
    ptype = adapters[0].config["peft_type"]
    scalings = [lora_scaling(a.config, a.path) for a in adapters] if ptype == "LORA" else None
    states = [a.state for a in adapters]
    if cfg.op == "negate":
        return negate(states[0], ptype, cfg.lam, head="keep" if head in ("merge", 0) else head)
    if cfg.op == "analogy":
        w_cls, w_lm = cfg.weights or [1.0, cfg.lam]
        return analogy(*states, ptype, w_lm, w_cls, cfg.space, cfg.svd_rank, scalings, head=str(head))
    weights = cfg.weights or [1.0 / len(states)] * len(states)
    return merge(states, weights, ptype, cfg.space, cfg.svd_rank, scalings, head)


# ---- writing -----------------------------------------------------------------------------------------------

def _output_config(cfg: ArithmeticConfig, adapters: list[Adapter], head: str | int,
                   state: dict[str, torch.Tensor]) -> dict:
    config = dict(adapters[0].config)
    if cfg.space != "ab" and cfg.op != "negate" and config["peft_type"] == "LORA":
        # cat / svd fold each module's scaling into A, so the result must load with scaling exactly 1
        rank = next(v.shape[0] for k, v in state.items() if _kind(k) == "A")
        config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    if head == "none":
        # PEFT's SEQ_CLS loader insists on finding the head it wraps, so a head-less result is a plain adapter
        config.update(modules_to_save=None, task_type=None)
    elif isinstance(head, int):
        config["modules_to_save"] = adapters[head].config.get("modules_to_save")
    return config


def _common_init(adapters: list[Adapter], space: str) -> tuple[Any, Any]:
    """The init (seed, checksum) the result shares with its inputs: only A/B-space results keep it."""
    inits = {(a.sidecar or {}).get("init_seed") for a in adapters}, \
        {(a.sidecar or {}).get("init_sha256") for a in adapters}
    if space != "ab" or len(inits[0]) != 1 or len(inits[1]) != 1:
        return None, None
    return next(iter(inits[0])), next(iter(inits[1]))


def compose_adapters(cfg: ArithmeticConfig, out: str | os.PathLike | None = None) -> Path:
    """Apply ``cfg.op`` to ``cfg.adapters`` and save the result as a PEFT adapter in ``out`` (default ``cfg.out``)."""
    _validate(cfg)
    if not (out or cfg.out):
        raise RetriktError("no output folder: pass out= or --out DIR")
    out = Path(out or cfg.out)
    if out.resolve() in {Path(a).resolve() for a in cfg.adapters}:
        raise RetriktError(f"{out}: the output folder is one of the input adapters; pick another --out")
    adapters = [load_adapter(p) for p in cfg.adapters]
    space = "ab" if cfg.op == "negate" else cfg.space   # negation is exact in every space
    _check_compatible(adapters, space, cfg.force)
    head = _head_choice(cfg)
    state = _apply(cfg, adapters, head)
    head = 0 if cfg.op != "merge" and head != "none" else head
    seed, checksum = _common_init(adapters, space)
    sidecar = {
        "schema_version": SCHEMA_VERSION, "peft_type": adapters[0].config["peft_type"],
        "base_model": adapters[0].config.get("base_model_name_or_path"),
        "task": (adapters[0].sidecar or {}).get("task"), "task_type": adapters[0].config.get("task_type"),
        "init_seed": seed, "init_sha256": checksum,
        "composed": dict(dataclasses.asdict(cfg), inputs=[
            {"path": str(a.path), "sha256": a.sha256, "config_sha256": sha256_file(a.path / CONFIG_FILE)}
            for a in adapters]),
    }
    _write_adapter(out, _output_config(cfg, adapters, head, state), state, sidecar)
    logger.info("%s of %d adapter(s) (space=%s) -> %s", cfg.op, len(adapters), cfg.space, out)
    return out


def init_arithmetic(student_model: torch.nn.Module, cfg: ArithmeticConfig) -> Any:
    """Compose ``cfg`` and load the result onto ``student_model`` as a trainable PEFT adapter (its initialisation).

    The composed folder is ``cfg.out`` when set, else a temporary folder removed once the weights are loaded.
    With ``head="none"`` the student's own head is wrapped as the trainable head (task type of the inputs).
    """
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    with tempfile.TemporaryDirectory(prefix="retrikt-arith-") as tmp:
        folder = compose_adapters(cfg, cfg.out or Path(tmp) / "composed")
        config = PeftConfig.from_pretrained(str(folder))
        side = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
        composed = load_file(str(folder / WEIGHTS_FILE))
    own = getattr(student_model, "name_or_path", None)
    if config.base_model_name_or_path and own and config.base_model_name_or_path != own:
        logger.warning("adapter was trained on %s, loading it onto %s", config.base_model_name_or_path, own)
    config.task_type = config.task_type or side.get("task_type")
    config.inference_mode = False
    try:
        model = get_peft_model(student_model, config)
    except (ValueError, KeyError, RuntimeError) as e:
        raise RetriktError(f"{folder}: cannot put the composed adapter on {type(student_model).__name__} ({e})") from e
    state = get_peft_model_state_dict(model)
    unknown = sorted(set(composed) - set(state))
    if unknown:
        raise RetriktError(f"{folder}: tensors with no place in {type(student_model).__name__}: {unknown[:5]}")
    state.update(composed)
    set_peft_model_state_dict(model, state)
    return model
