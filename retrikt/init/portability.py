"""Port a PEFT module trained on one host model to another (Sabry & Belz, "Assessing the Portability of Parameter
Matrices Trained by Parameter-Efficient Finetuning Methods", EACL 2024 Findings).

A *module* is a PEFT adapter (LoRA, (IA)^3, prefix tuning or prompt tuning) plus the classification head of the
student it was trained in. Three initialisations of the module on the new host are compared:

* ``ported``: the module's own tensors, loaded unchanged. Same-shape hosts are required (a tensor whose shape
  differs is refused, naming it); LoRA modules may also go to a *smaller* host with ``align="blocks"``: teacher
  layers are picked by the module's own update norm (:func:`retrikt.init.sensitivity.select_layers`) and from
  each ``ΔW = s·B A`` the block of the small host's shape with the largest ``|ΔW|`` mass is cut
  (:func:`retrikt.init.sensitivity.best_block`). Cutting rows of B and columns of A gives that block of ΔW
  exactly, so no SVD is needed (:mod:`retrikt.init.port_align`).
* ``scratch``: PEFT's default initialisation of the same config on the new host, drawn under ``seed``.
* ``sampled``: every ported tensor replaced by i.i.d. normal draws with that tensor's own mean and standard
  deviation (the paper's control: same per-matrix distribution, none of the learnt structure).

The classification head follows the condition, because a module without its head cannot be scored zero-shot:
it is carried over in ``ported``, freshly initialised (``nn.Linear`` default, seeded) in ``scratch`` and sampled
per tensor in ``sampled``. Heads inside the adapter (``modules_to_save``) follow the same rule automatically.

On disk a module is a PEFT adapter folder plus ``head.safetensors`` under one manifest; reading and writing it
(``load_module`` / ``save_module``) is :mod:`retrikt.init.adapters`' job.

P-tuning and prefix tuning with ``prefix_projection`` are refused: PEFT saves only the output of their prompt
encoder, so the module on disk cannot be trained further the way it was trained on its first host.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retrikt.config import arg
from retrikt.init.adapters import (PEFT_TYPES, Module, init_checksum, load_module, lora_scaling, peft_config_of,
                                   seeded_peft_model)
from retrikt.init.adapters import save_module  # noqa: F401  (re-exported: retrikt.port and tests import it here)
from retrikt.init.port_align import align_lora
from retrikt.io import RetriktError
from retrikt.student.encoder import EncoderClassifier, mean_pool

logger = logging.getLogger(__name__)

CONDITIONS = ("ported", "scratch", "sampled")


@dataclass
class PortConfig:
    """Porting a PEFT module to a new host (Sabry & Belz, EACL 2024 Findings)."""
    adapter: str = arg("", help="module folder: a PEFT adapter (+ head.safetensors), or a saved encoder student")
    condition: str = arg("ported", choices=list(CONDITIONS),
                         help="ported: the module's tensors; scratch: PEFT's default init (seeded); sampled: "
                              "i.i.d. normal per tensor with the ported tensor's mean and std (the paper's three)")
    seed: int = arg(0, help="seed of the scratch init / the sampled draws / the fresh head")
    align: str = arg("none", choices=["none", "blocks"],
                     help="none: the new host must have the module's shapes; blocks: LoRA onto a smaller host via "
                          "layer selection + largest-|ΔW| block (parametric-transfer alignment)")
    layer_selection: str = arg("sensitivity", choices=["sensitivity", "random"],
                               help="align=blocks: keep the source layers with the largest update norm, or random")


# ---- the three conditions ----------------------------------------------------------------------------------

def sampled_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each tensor replaced by i.i.d. N(mean, std) draws of its own mean and (unbiased) std."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        t = state[key].detach().to("cpu", torch.float64)
        std = float(t.std()) if t.numel() > 1 else 0.0
        draw = torch.randn(t.shape, generator=gen, dtype=torch.float64) * std + float(t.mean())
        out[key] = draw.to(state[key].dtype)
    return out


def fresh_head(like: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A new ``nn.Linear`` of the head's shape, PyTorch default init, drawn under ``seed``."""
    out_dim, in_dim = like["weight"].shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in nn.Linear(in_dim, out_dim).state_dict().items()}


def _check_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], host: str) -> None:
    hint = "; same-shape hosts only" + (" (or align='blocks' for LoRA onto a smaller host)"
                                         if any(".lora_" in k for k in state) else "")
    missing = sorted(set(state) - set(expected))
    if missing:
        raise RetriktError(f"module tensor {missing[0]} has no place in host {host} ({len(missing)} such tensors: "
                           f"fewer layers, other module names or another architecture){hint}")
    absent = sorted(set(expected) - set(state))
    if absent:
        raise RetriktError(f"host {host} expects tensor {absent[0]}, which the module lacks ({len(absent)} such)"
                           f"{hint}")
    for key in sorted(state):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise RetriktError(f"tensor {key}: the module has shape {tuple(state[key].shape)}, host {host} needs "
                               f"{tuple(expected[key].shape)}{hint}")


def _load_host(name: str, module: Module, device: Any = None) -> tuple[nn.Module, Any]:
    from retrikt import models
    from retrikt.init.hosts import resolve_host
    path = resolve_host(name)
    return models.load_causal_lm(path, device=device) if module.causal else models.load_encoder(path, device=device)


def ported_state(module: Module, peft_model: Any, host: str, align: str = "none",
                 layer_selection: str = "sensitivity", seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """The module's tensors shaped for ``peft_model`` (checked, or cut down with ``align='blocks'``)."""
    from peft import get_peft_model_state_dict
    expected = get_peft_model_state_dict(peft_model)
    if align == "blocks":
        if module.peft_type != "LORA":
            raise RetriktError(f"{module.path}: align='blocks' needs a LoRA module, this one is {module.peft_type}")
        state, provenance = align_lora(module.state, expected, lora_scaling(module.config, module.path),
                                       layer_selection, seed)
    else:
        state, provenance = module.state, {}
    _check_shapes(state, expected, host)
    return state, provenance


def port_adapter(adapter_dir: str | os.PathLike, to_host_model: str | nn.Module, condition: str = "ported",
                 seed: int = 0, align: str = "none", layer_selection: str = "sensitivity", device: Any = None) -> Any:
    """The module of ``adapter_dir`` on ``to_host_model`` (a loaded host, wrapped in place, or a host name /
    folder / ``BASE+mlm-TASK``), initialised per ``condition``. Returns the ``PeftModel``; its ``retrikt_head``
    holds the head tensors for the condition (None when the module has no head) and ``retrikt_port`` the record.
    """
    module = load_module(adapter_dir)
    if isinstance(to_host_model, (str, os.PathLike)):
        host, name = _load_host(str(to_host_model), module, device)[0], str(to_host_model)
    else:
        host, name = to_host_model, _name_of(to_host_model)
    return _port(module, host, name, condition, seed, align, layer_selection)


def _name_of(model: nn.Module) -> str:
    return getattr(model, "name_or_path", "") or type(model).__name__


def _port(module: Module, host: nn.Module, host_name: str, condition: str, seed: int, align: str,
          layer_selection: str) -> Any:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    if condition not in CONDITIONS:
        raise RetriktError(f"condition {condition!r} is unknown; use one of {', '.join(CONDITIONS)}")
    try:
        peft_model = seeded_peft_model(host, peft_config_of(module), seed)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise RetriktError(f"{module.path}: cannot put a {module.peft_type} module on {host_name} ({e})") from e
    record = {"condition": condition, "seed": seed, "source": str(module.path), "peft_type": module.peft_type,
              "source_host": (module.sidecar.get("extra") or {}).get("host")
              or module.config.get("base_model_name_or_path"), "to_host": host_name}
    head = module.head
    if condition != "scratch":
        state, record["alignment"] = ported_state(module, peft_model, host_name, align, layer_selection, seed)
        if condition == "sampled":
            state = sampled_like(state, seed)
            head = sampled_like(head, seed + 1) if head else None
        set_peft_model_state_dict(peft_model, state)
        placed = get_peft_model_state_dict(peft_model)
        wrong = [k for k in state if not torch.equal(placed[k].cpu(), state[k].to(placed[k].dtype))]
        if wrong:   # PEFT loads non-strictly; make sure every tensor arrived
            raise RetriktError(f"{module.path}: PEFT did not place tensor {wrong[0]} ({len(wrong)} such)")
    elif head:
        head = fresh_head(head, seed)
    peft_model.retrikt_init = {"init_seed": seed, "init_sha256": init_checksum(peft_model)}
    peft_model.retrikt_head, peft_model.retrikt_port = head, record
    return peft_model


# ---- students ----------------------------------------------------------------------------------------------

def is_prompt_learning(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


class PortStudent(EncoderClassifier):
    """An :class:`EncoderClassifier` that also takes prompt-learning modules.

    Prompt tuning prepends soft tokens to the encoder's output; they are dropped before mean pooling so that the
    pooled vector covers the sentence's tokens, as with every other module type. PEFT ignores token type ids
    under prompt learning, so they are not passed (which also silences its per-call warning).
    """

    def tokenize(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().tokenize(examples)
        if is_prompt_learning(self.encoder):
            batch.pop("token_type_ids", None)
        return batch

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(**batch).last_hidden_state
        n_virtual = hidden.shape[1] - batch["attention_mask"].shape[1]
        return mean_pool(hidden[:, n_virtual:], batch["attention_mask"])


def peft_config_for(peft_type: str, r: int = 8, alpha: int = 16, virtual_tokens: int = 10, causal: bool = False):
    """A default PEFT config of ``peft_type`` (lora | ia3 | prefix | prompt) for an encoder or causal host."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
    task_type = "CAUSAL_LM" if causal else "FEATURE_EXTRACTION"
    key = peft_type.lower()
    if key == "lora":
        return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=0.0)
    if key == "ia3":
        return IA3Config(task_type=task_type)
    if key == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=virtual_tokens)
    if key == "prompt":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual_tokens)
    raise RetriktError(f"PEFT type {peft_type!r} is not portable here; use one of {', '.join(PEFT_TYPES)}")


def _student(peft_model: Any, tokenizer, task, max_length: int, head: dict | None, causal: bool):
    if causal:
        from retrikt.teacher.lm import LMClassifier
        return LMClassifier(peft_model, tokenizer, task, max_length=max_length)
    student = PortStudent(peft_model, tokenizer, task, max_length=max_length)
    if head is not None:
        want = tuple(student.head.weight.shape)
        if tuple(head["weight"].shape) != want:
            raise RetriktError(f"the module's head has shape {tuple(head['weight'].shape)}, task {task.name} needs "
                               f"{want}")
        student.head.load_state_dict(head)
    return student.to(next(peft_model.parameters()).device)


def new_student(host: str | nn.Module, task, peft_type: str, seed: int, max_length: int = 128,
                tokenizer=None, device: Any = None, **peft_kw: Any) -> nn.Module:
    """A fresh module of ``peft_type`` on ``host`` inside a student (to train a source module): a head-less
    verbaliser student on a causal LM, an encoder + head otherwise."""
    from retrikt import models
    from retrikt.init.hosts import resolve_host
    if isinstance(host, (str, os.PathLike)):
        path = resolve_host(str(host))
        causal = models.model_kind(path) == "causal-lm"
        host, tokenizer = (models.load_causal_lm if causal else models.load_encoder)(path, device=device)
    else:
        causal = _is_causal_module(host)
    peft_model = seeded_peft_model(host, peft_config_for(peft_type, causal=causal, **peft_kw), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _student(peft_model, tokenizer, task, max_length, None, causal=causal)


def _is_causal_module(model: nn.Module) -> bool:
    return any("CausalLM" in a or "LMHeadModel" in a for a in getattr(model.config, "architectures", None) or []) \
        or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def port_student(adapter_dir: str | os.PathLike, to_host: str | nn.Module, task, condition: str = "ported",
                 seed: int = 0, max_length: int = 128, align: str = "none", layer_selection: str = "sensitivity",
                 device: Any = None, tokenizer=None) -> nn.Module:
    """:func:`port_adapter` wrapped as a scorable, trainable student (:class:`PortStudent`, or ``LMClassifier``
    for causal-LM modules). ``to_host``: a name / folder, or a loaded host together with its ``tokenizer``."""
    module = load_module(adapter_dir)
    if isinstance(to_host, (str, os.PathLike)):
        (host, tokenizer), name = _load_host(str(to_host), module, device), str(to_host)
    elif tokenizer is None:
        raise RetriktError("port_student: a loaded host needs its tokenizer")
    else:
        host, name = to_host, _name_of(to_host)
    peft_model = _port(module, host, name, condition, seed, align, layer_selection)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)   # the head of a headless module is drawn here
        student = _student(peft_model, tokenizer, task, max_length, peft_model.retrikt_head, module.causal)
    student.port_record = peft_model.retrikt_port
    return student


def init_port(student_model: nn.Module, task, train_examples: list[dict], cfg: PortConfig) -> Any:
    """The module of ``cfg.adapter`` on an already loaded ``student_model``, per ``cfg.condition`` (``--init port``
    goes through :func:`port_student`, which also loads the host). The head tensors for the student's head are on
    the result's ``retrikt_head``."""
    if not cfg.adapter:
        raise RetriktError("port: set the module folder (PortConfig.adapter / --adapter)")
    return port_adapter(cfg.adapter, student_model, cfg.condition, cfg.seed, cfg.align, cfg.layer_selection)
