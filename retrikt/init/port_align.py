"""LoRA modules ported to a *smaller* host (``align="blocks"`` of :mod:`retrikt.init.portability`).

Source-host layers are picked by the module's own update norm (:func:`retrikt.init.sensitivity.select_layers`) and
from each ``ΔW = s·B A`` the block of the small host's shape with the largest ``|ΔW|`` mass is cut
(:func:`retrikt.init.sensitivity.best_block`). Cutting rows of B and columns of A gives that block of ΔW exactly,
so no SVD is needed. Kept apart from :mod:`retrikt.init.portability` because it is the one part that reads LoRA key
names and layer structure; the rest of porting treats a module's tensors as opaque.
"""
from __future__ import annotations

import re

import torch

from retrikt.io import RetriktError

_LAYER_KEY = re.compile(r"^.*?\.(?:layers|layer|h|blocks)\.(?P<i>\d+)\.(?P<mod>.+)\.lora_(?P<ab>[AB])\.weight$")


def _by_layer(state: dict[str, torch.Tensor]) -> tuple[dict[int, dict[str, dict[str, str]]], list[str]]:
    """{layer: {module path: {"A": key, "B": key}}} of LoRA keys, and the keys that are not per-layer LoRA."""
    layers: dict[int, dict[str, dict[str, str]]] = {}
    rest = []
    for key in state:
        m = _LAYER_KEY.match(key)
        if m is None:
            rest.append(key)
            continue
        layers.setdefault(int(m["i"]), {}).setdefault(m["mod"], {})[m["ab"]] = key
    return layers, rest


def align_lora(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], scaling: float = 1.0,
               layer_selection: str = "sensitivity", seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA module of a bigger host cut down to a smaller host's shapes: (state, provenance).

    ``scaling`` is the module's ``s`` in ``ΔW = s·B A`` (:func:`retrikt.init.adapters.lora_scaling`); it ranks
    layers by update norm only, the cut tensors are not rescaled.

    Student layer j takes source layer ``keep[j]`` (the source layers with the largest ``Σ‖ΔW‖²``, in depth
    order); each target matrix takes the block of ``ΔW`` of its shape with the largest ``|ΔW|`` sum.
    """
    from retrikt.init.sensitivity import best_block, select_layers
    src, src_rest = _by_layer(state)
    tgt, tgt_rest = _by_layer(expected)
    if src_rest or tgt_rest:
        raise RetriktError(f"align='blocks' ports per-layer LoRA tensors only; also found {(src_rest or tgt_rest)[:3]}")
    n_src = max(src) + 1 if src else 0
    scores = [sum(float((scaling * state[k["B"]].double() @ state[k["A"]].double()).square().sum())
                  for k in src.get(i, {}).values()) for i in range(n_src)]
    keep = select_layers(scores, max(tgt) + 1, mode=layer_selection, seed=seed)
    out, provenance = {}, {"layers": keep, "blocks": {}}
    for j, i in enumerate(keep):
        for mod, keys in tgt.get(j, {}).items():
            if mod not in src.get(i, {}):
                raise RetriktError(f"source layer {i} has no LoRA on {mod}, which the target's layer {j} needs")
            a, b = state[src[i][mod]["A"]], state[src[i][mod]["B"]]
            a_shape, b_shape = tuple(expected[keys["A"]].shape), tuple(expected[keys["B"]].shape)
            if a.shape[0] != a_shape[0] or b.shape[0] < b_shape[0] or a.shape[1] < a_shape[1]:
                raise RetriktError(f"{src[i][mod]['A']}: source LoRA A {tuple(a.shape)} / B {tuple(b.shape)} cannot "
                                   f"be cut to A {a_shape} / B {b_shape} (same rank, smaller host only)")
            delta = (b.float() @ a.float()).abs()
            row, col = best_block(delta, (b_shape[0], a_shape[1]))
            out[keys["A"]] = a[:, col:col + a_shape[1]].clone().contiguous()
            out[keys["B"]] = b[row:row + b_shape[0]].clone().contiguous()
            provenance["blocks"][keys["A"]] = [i, row, col]
    return out, provenance
