"""Student initialisers: where a student's weights start, an axis of its own next to the training method.

    python -m retrikt.train --method retrikt --init arithmetic --adapters A B ...

``INITS[name]`` declares an initialiser: which students it can start (encoder / causal LM) and what
``retrikt.compare`` must provide for it. Their mechanics live one file each (``arithmetic.py``, ``parametric.py``,
``port.py``); ``start.py`` turns a config into a started student for any training method. This module stays free of
heavy imports: ``retrikt.train --help`` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import arg


@dataclass(frozen=True)
class Init:
    name: str
    students: tuple[str, ...]            # student kinds it can start: "encoder", "lm" (causal LM)
    help: str
    needs_lora_modules: bool = False     # compare: starts from the other tasks' lora modules (same seed)


INITS: dict[str, Init] = {
    "none": Init("none", ("encoder", "lm"), "the student's own pretrained weights"),
    "arithmetic": Init("arithmetic", ("encoder", "lm"), "a composition (merge / negate / analogy) of saved PEFT "
                       "modules, --adapters and --op", needs_lora_modules=True),
    # the SVD factors of a causal teacher's projections go into a causal student's matching projections
    "parametric": Init("parametric", ("lm",), "sensitivity-selected teacher blocks, SVD-factored into a LoRA "
                       "(a causal-LM student with the teacher's tokenizer)"),
    "port": Init("port", ("encoder", "lm"), "a PEFT module trained on another host, --adapters DIR and "
                 "--condition"),
}


@dataclass
class InitConfig:
    init: str = arg("none", help="where the student's weights start: " + "; ".join(
        f"{i.name}: {i.help}" for i in INITS.values()), choices=list(INITS))
    adapters: list[str] = arg([], help="arithmetic / port: PEFT adapter folder(s) to start from")
    op: str = arg("merge", help="arithmetic: merge | negate | analogy", choices=["merge", "negate", "analogy"])
    weights: list[float] = arg([], help="arithmetic: one weight per adapter (default: equal)")
    lam: float = arg(1.0, help="arithmetic: λ of negation / analogy")
    force: bool = arg(False, help="arithmetic: compose modules whose initialisations differ")
    condition: str = arg("ported", help="port: ported | scratch | sampled", choices=["ported", "scratch", "sampled"])
    parametric_rank: int = arg(16, help="parametric: LoRA rank of the SVD factors (paper: 16, alpha = r)")
    parametric_seeds: int = arg(32, help="parametric: seed samples for the sensitivity (paper: 32)")
    parametric_layers: str = arg("sensitivity", help="parametric: layer selection, sensitivity | random (ablation)",
                                 choices=["sensitivity", "random"])
    parametric_blocks: str = arg("sensitivity", help="parametric: block selection, sensitivity | random (ablation)",
                                 choices=["sensitivity", "random"])
