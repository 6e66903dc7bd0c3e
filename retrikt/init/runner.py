"""``retrikt.train`` methods whose student starts from an initialiser: parametric, arithmetic, port.

Each builds the student's PEFT module with its initialiser, then trains it with the shared loop and budget, so the
only difference from the ``lora`` baseline is where the module starts.
"""
from __future__ import annotations

import logging

from retrikt import models
from retrikt.io import RetriktError
from retrikt.student.encoder import EncoderClassifier
from retrikt.teacher.lm import LMClassifier
from retrikt.student.methods import fit_config, resolve_device
from retrikt.student.trainer import fit, seed_everything

logger = logging.getLogger(__name__)


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def train_parametric(cfg, task, train: list[dict], seed: int):
    """Seeking Neural Nuggets: sensitivity-selected teacher blocks, SVD-factored into the student's LoRA."""
    from retrikt.init.parametric import ParametricConfig, init_parametric
    if models.model_kind(cfg.student) != "causal-lm" or models.model_kind(cfg.teacher) != "causal-lm":
        raise RetriktError("--method parametric transfers between causal LMs: pass e.g. --teacher qwen-1.5b "
                           "--student qwen-0.5b")
    seed_everything(seed)
    device = resolve_device(cfg.device)
    models.check_ram(cfg.teacher)
    student, tok = models.load_causal_lm(cfg.student, device=device)
    teacher_tok = models.load_tokenizer(cfg.teacher)
    if not _same_tokenizer(tok, teacher_tok):
        raise RetriktError(f"{cfg.teacher} and {cfg.student} have different vocabularies; parametric transfer "
                           "needs a shared tokenizer")
    pairs = [(task.prompt(e), task.continuations(e)[int(e["label"])]) for e in train]
    pcfg = ParametricConfig(rank=cfg.parametric_rank, alpha=cfg.parametric_rank, seed=seed, n_seed=cfg.parametric_seeds,
                            layer_selection=cfg.parametric_layers, block_selection=cfg.parametric_blocks)
    peft_model = init_parametric(student, lambda: models.load_causal_lm(cfg.teacher, device=device)[0],
                                 teacher_tok, pairs, pcfg)
    clf = LMClassifier(peft_model, tok, task)
    losses = fit(clf, train, fit_config(cfg), seed, desc=f"parametric {task.name} s{seed}")
    ablation = [f"random-{k}" for k, v in (("layers", pcfg.layer_selection), ("blocks", pcfg.block_selection))
                if v == "random"]
    return clf, {"tag": "-".join(ablation), "teacher": cfg.teacher, "parametric": {"rank": pcfg.rank, "n_seed": pcfg.n_seed,
                                                        "layers": pcfg.layer_selection,
                                                        "blocks": pcfg.block_selection},
                 "final_loss": losses[-1] if losses else None}


def train_arithmetic(cfg, task, train: list[dict], seed: int):
    """A composed module (merge / negate / analogy of saved adapters) as the student's starting point."""
    from retrikt.init.arithmetic import ArithmeticConfig, init_arithmetic
    if not cfg.adapters:
        raise RetriktError("--method arithmetic needs --adapters A [B ...] (PEFT adapter folders) and --op")
    seed_everything(seed)
    acfg = ArithmeticConfig(op=cfg.op, adapters=list(cfg.adapters), weights=list(cfg.weights or []),
                            lam=cfg.lam, force=cfg.force)
    device = resolve_device(cfg.device)
    if models.model_kind(cfg.student) == "causal-lm":
        model, tok = models.load_causal_lm(cfg.student, device=device)
        student = LMClassifier(init_arithmetic(model, acfg), tok, task)
    else:
        encoder, tok = models.load_encoder(cfg.student, device=device)
        student = EncoderClassifier(init_arithmetic(encoder, acfg), tok, task, max_length=cfg.max_length).to(device)
    losses = fit(student, train, fit_config(cfg), seed, desc=f"arithmetic {task.name} s{seed}") if cfg.epochs else []
    return student, {"arithmetic": {"op": cfg.op, "adapters": cfg.adapters, "weights": cfg.weights, "lam": cfg.lam},
                     "final_loss": losses[-1] if losses else None}


def train_port(cfg, task, train: list[dict], seed: int):
    """A PEFT module trained on another host, ported onto the student (ported / scratch / sampled), then trained."""
    from retrikt.init.port import port_student
    if not cfg.adapters:
        raise RetriktError("--method port needs --adapters DIR: a module saved by python -m retrikt.port "
                           "(or retrikt.compose), and --condition ported|scratch|sampled")
    seed_everything(seed)
    student = port_student(cfg.adapters[0], cfg.student, task, condition=cfg.condition, seed=seed,
                           max_length=cfg.max_length, device=resolve_device(cfg.device))
    losses = fit(student, train, fit_config(cfg), seed, desc=f"port {task.name} s{seed}") if cfg.epochs else []
    return student, {"tag": cfg.condition, "port": {"adapter": cfg.adapters[0], "condition": cfg.condition},
                     "final_loss": losses[-1] if losses else None}
