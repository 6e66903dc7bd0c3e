"""What every training method shares: its declaration (``Method``), the small base of its options, and helpers.

A method is one file in ``retrikt/methods/`` with a ``Config`` dataclass and a function
``train(cfg: Config, task, examples, seed) -> (student, extra facts)``; ``retrikt/methods/__init__.py`` lists it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from retrikt import models
from retrikt.config import arg
from retrikt.init import InitConfig
from retrikt.student.trainer import FitConfig


@dataclass(frozen=True)
class Method:
    """A training method as ``retrikt.train`` and ``retrikt.compare`` see it: its options, its training function and
    its needs, declared once so that neither entry point branches on method names."""
    name: str
    config_cls: type
    train: Callable[[Any, Any, list[dict], int], tuple[Any, dict]]
    students: tuple[str, ...]             # what it trains: "encoder" and / or "lm" (causal LM), or ("teacher",)
    inits: tuple[str, ...] = ("none",)    # the --init values it accepts (shapes permitting)
    needs_store: bool = False             # reads a knowledge store (--store); compare builds one per (task, seed)
    needs_lora_modules: bool = False      # starts from the other tasks' lora modules (compare trains them first)
    # the result does not depend on the seed (a bool, or a function of the method's config): compare runs it once
    deterministic: bool | Callable[[Any], bool] = False
    default_lr: float = 5e-5              # when --lr is not given
    help: str = ""

    def runs_once(self, cfg: Any) -> bool:
        """Whether ``cfg``'s result is the same for every seed (then one run stands for all of them)."""
        return self.deterministic(cfg) if callable(self.deterministic) else self.deterministic


@dataclass
class MethodConfig:
    """The options every method reads."""
    student: str = arg("minilm-l6", help="student model: a short name (python -m retrikt.models list), hub id or path")
    teacher: str = arg("qwen-0.5b", help="teacher LLM (for teacher / parametric methods)")
    device: str = arg("auto", help="auto | cpu | cuda")


@dataclass
class StudentConfig(MethodConfig, FitConfig, InitConfig):
    """The options of every method that trains a student: the shared loop's, the initialiser's, and these."""
    max_length: int = arg(256, help="encoder max tokens per input")
    micro_batch_size: int = arg(-1, help="examples per forward/backward, gradients accumulated over the batch; "
                                         "-1 = auto: 2 for causal-LM students (activation memory), else the batch")
    lr: float | None = arg(None, help="learning rate (default depends on the method: finetune 5e-5, lora 5e-4, "
                                      "parametric 3e-4)")


def narrow(cfg: Any, cls: type, **changes: Any) -> Any:
    """``cls`` filled from the same-named fields of ``cfg`` (the flat command-line config), plus ``changes``."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.name not in changes}, **changes)


def resolve_device(name: str) -> str:
    """auto | cpu | cuda -> a device; in a launched process group, this rank's own GPU."""
    from retrikt.dist import rank_device
    return rank_device(name)


def student_kind(name: str) -> str:
    """"lm" for a causal-LM student, else "encoder" (the words ``Method.students`` and ``Init.students`` use)."""
    return "lm" if models.model_kind(name) == "causal-lm" else "encoder"


def fit_config(cfg: StudentConfig, default_lr: float = 5e-5) -> FitConfig:
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FitConfig)}
    if cfg.lr is None:
        base["lr"] = default_lr
    if cfg.micro_batch_size < 0:  # auto: bounded activation memory for causal-LM students
        base["micro_batch_size"] = 2 if student_kind(cfg.student) == "lm" else 0
    return FitConfig(**base)


def final_loss(losses: list[float]) -> dict:
    return {"final_loss": losses[-1] if losses else None}
