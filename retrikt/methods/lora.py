"""--method lora: a PEFT module on a frozen student (encoder or causal LM), trained on the k-shot set.

With ``--init none`` the module is a fresh LoRA whose initialisation depends on the seed only (recorded in the
saved adapter), so modules of different tasks trained with one seed can be composed by module arithmetic. With
another ``--init`` the initialiser's module is the one trained.
"""
from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import arg
from retrikt.init import INITS
from retrikt.init.start import classifier, load_student_model, start_student
from retrikt.methods.base import Method, StudentConfig, final_loss, fit_config, resolve_device, student_kind
from retrikt.student.trainer import fit, seed_everything


@dataclass
class Config(StudentConfig):
    lora_r: int = arg(8, help="LoRA rank for the lora method")
    lora_alpha: int = arg(16, help="LoRA alpha for the lora method")


def fresh_module(cfg: Config, task, seed: int, device: str):
    from retrikt.init.adapters import lora_config_for, seeded_peft_model
    lm = student_kind(cfg.student) == "lm"
    model, tok = load_student_model(cfg, device, lm)
    peft_model = seeded_peft_model(model, lora_config_for(model, cfg.lora_r, cfg.lora_alpha, lm), seed)
    return classifier(peft_model, tok, task, cfg, device, lm)


def train(cfg: Config, task, examples: list[dict], seed: int):
    seed_everything(seed)
    device = resolve_device(cfg.device)
    if cfg.init == "none":
        student, facts = fresh_module(cfg, task, seed, device), {}
    else:
        student, facts = start_student(cfg, task, examples, seed, device)
    name = "lora" if cfg.init == "none" else f"lora+{cfg.init}"
    # no epochs: score the initialiser's module as it is (a composition or a port, zero-shot)
    losses = fit(student, examples, fit_config(cfg), seed, desc=f"{name} {task.name} s{seed}") if cfg.epochs else []
    return student, {**facts, **final_loss(losses)}


METHOD = Method("lora", Config, train, students=("encoder", "lm"), inits=tuple(INITS), default_lr=5e-4,
                help="a LoRA (or the --init module) trained on a frozen student")
