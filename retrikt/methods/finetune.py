"""--method finetune: every weight of an encoder student trained on the k-shot set, the plain baseline."""
from __future__ import annotations

from retrikt.init import INITS
from retrikt.init.start import merge_into_weights, start_student
from retrikt.methods.base import Method, StudentConfig, final_loss, fit_config, resolve_device
from retrikt.student.trainer import fit, seed_everything

Config = StudentConfig  # finetune has no options of its own


def train(cfg: Config, task, examples: list[dict], seed: int):
    seed_everything(seed)
    student, facts = start_student(cfg, task, examples, seed, resolve_device(cfg.device))
    merge_into_weights(student)  # an --init module is where the weights start; all of them train
    losses = fit(student, examples, fit_config(cfg), seed, desc=f"finetune {task.name} s{seed}")
    return student, {**facts, **final_loss(losses)}


METHOD = Method("finetune", Config, train, students=("encoder",), inits=tuple(INITS), default_lr=5e-5,
                help="full fine-tuning of an encoder student (use lora for causal-LM students)")
