"""The LoRA side of parametric transfer (:mod:`retrikt.init.parametric`): the truncated-SVD factors of a cut
teacher block, the base-weight change ``scaling * B @ A`` that keeps the student's step-0 output, and saving /
re-loading an injected LoRA together with that change.

Everything here works on tensors and single modules; choosing the teacher layers and blocks, and the
architecture map that pairs teacher and student modules, stay in :mod:`retrikt.init.parametric`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from retrikt.io import MANIFEST, RetriktError, atomic_path, folder_lock, read_manifest, write_manifest

DELTA = "base_delta.safetensors"


def _transposed(module: nn.Module, name: str) -> bool:
    from transformers.pytorch_utils import Conv1D
    if isinstance(module, (nn.Embedding, Conv1D)):
        return True   # PEFT's [out, in] view of these is weight.T
    if isinstance(module, nn.Linear):
        return False
    raise RetriktError(f"{name}: a {type(module).__name__} cannot carry a transferred LoRA "
                       "(Linear, Conv1D or Embedding only)")


def factorise(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``block [out, in]``: ``B = U_r S_r [out, r]``, ``A = V_r^T [r, in]`` (fp32).

    The rank is capped at ``min(out, in)``; :func:`retrikt.init.parametric.inject_lora` leaves PEFT's own init
    in the spare ranks.
    """
    U, S, Vh = torch.linalg.svd(block.detach().float(), full_matrices=False)
    k = min(rank, S.numel())
    return Vh[:k].contiguous(), (U[:, :k] * S[:k]).contiguous()


def weight_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, transposed: bool,
                 like: torch.Tensor) -> torch.Tensor:
    """``scaling * B @ A`` in ``like``'s storage layout, dtype and device.

    Always computed in fp32 on the CPU, so that injecting and re-loading subtract bit-identical deltas.
    """
    d = (lora_B.detach().float().cpu() @ lora_A.detach().float().cpu()) * scaling
    return (d.T if transposed else d).to(like)


def save_parametric(peft_model, folder) -> Path:
    """Save the adapter (PEFT format, ``folder/adapter``) and the base-weight change made at injection.

    The change is ``-scaling * B0 @ A0`` per module; it is stored factored (``B0``, ``A0``: the initial
    factors) in ``base_delta.safetensors``, which is ``2r(in+out)`` numbers per module instead of ``in*out``.
    """
    info = getattr(peft_model, "retrikt_parametric", None)
    if info is None:
        raise RetriktError("save_parametric: the model carries no initial factors (it was not made by "
                           "inject_lora / init_parametric / load_parametric)")
    from safetensors.torch import save_file
    folder = Path(folder)
    with folder_lock(folder):
        (folder / MANIFEST).unlink(missing_ok=True)   # a crash below must not leave a stale valid manifest
        shutil.rmtree(folder / "adapter", ignore_errors=True)
        peft_model.save_pretrained(folder / "adapter")
        tensors = {f"{n}.{k}": t.contiguous() for n, (A, B) in info["init"].items()
                   for k, t in (("lora_A", A), ("lora_B", B))}
        with atomic_path(folder / DELTA) as tmp:
            save_file(tensors, str(tmp), metadata={"scaling": repr(info["scaling"])})
        files = sorted(p.relative_to(folder).as_posix() for p in (folder / "adapter").rglob("*") if p.is_file())
        write_manifest(folder, {"schema_version": 1, "kind": "parametric_lora", "scaling": info["scaling"],
                                "teacher_layers": info["teacher_layers"], "config": info["config"]},
                       files + [DELTA])
    return folder


def load_parametric(student: nn.Module, folder, is_trainable: bool = False):
    """Re-apply a saved base-weight change to a fresh ``student`` and load the adapter on top of it."""
    from peft import PeftModel
    from safetensors.torch import load_file
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("kind") != "parametric_lora":
        raise RetriktError(f"{folder}: not a parametric-transfer adapter (kind {manifest.get('kind')!r})")
    tensors = load_file(str(folder / DELTA))
    scaling = float(manifest["scaling"])
    init = {}
    with torch.no_grad():
        for key in sorted(k for k in tensors if k.endswith(".lora_A")):
            name = key[:-len(".lora_A")]
            try:
                module = student.get_submodule(name)
            except AttributeError:
                raise RetriktError(f"{folder / DELTA}: module {name} is not in the student "
                                   f"({type(student).__name__})") from None
            A, B = tensors[key], tensors[f"{name}.lora_B"]
            module.weight.sub_(weight_delta(A, B, scaling, _transposed(module, name), module.weight))
            init[name] = (A, B)
    model = PeftModel.from_pretrained(student, str(folder / "adapter"), is_trainable=is_trainable)
    model.retrikt_parametric = {"init": init, "scaling": scaling, "teacher_layers": manifest.get("teacher_layers"),
                                "config": manifest.get("config")}
    return model
