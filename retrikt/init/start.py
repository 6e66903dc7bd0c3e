"""A started student for any training method: the model ``--init`` says, wrapped as a scorable classifier.

``start_student`` returns an ``EncoderClassifier`` (a ``PortStudent`` for ported modules) or an ``LMClassifier``
whose model carries the initialiser's PEFT module (none for ``--init none``), plus facts for the results record.
A method that trains the module (``lora``) trains it as it is; one that trains every weight (``finetune``, ``kd``,
``retrikt``) first folds it into the weights with ``merge_into_weights``: the initialiser decides where the weights
start, the method how they train. The calls, their order and the RNG draws are those of the ``arithmetic``,
``parametric`` and ``port`` methods before ``--init`` existed, so their results do not move.
"""
from __future__ import annotations

import logging
from typing import Any

from retrikt.init import INITS
from retrikt.io import RetriktError

logger = logging.getLogger(__name__)

KIND_WORDS = {"encoder": "encoder", "lm": "causal-LM"}


def check_init(init: str, kind: str, student: str) -> None:
    """Refuse an initialiser that cannot start a student of ``kind`` ("encoder" | "lm"), saying why."""
    if init not in INITS:
        raise RetriktError(f"unknown --init {init!r}; known: {', '.join(INITS)}")
    if kind not in INITS[init].students:
        can = " / ".join(KIND_WORDS[k] for k in INITS[init].students)
        raise RetriktError(f"--init {init} cannot start {student}, a{'n' if kind == 'encoder' else ''} "
                           f"{KIND_WORDS[kind]} student: it starts {can} students only ({INITS[init].help})")


def start_student(cfg, task, examples: list[dict], seed: int, device: str) -> tuple[Any, dict]:
    """(classifier, facts) for ``cfg.init``; ``cfg`` carries ``StudentConfig``'s fields."""
    from retrikt import models
    kind = "lm" if models.model_kind(cfg.student) == "causal-lm" else "encoder"
    check_init(cfg.init, kind, cfg.student)
    return STARTS[cfg.init](cfg, task, examples, seed, device, kind == "lm")


def classifier(model, tokenizer, task, cfg, device: str, lm: bool):
    from retrikt.student.encoder import EncoderClassifier
    from retrikt.teacher.lm import LMClassifier
    if lm:
        return LMClassifier(model, tokenizer, task)
    return EncoderClassifier(model, tokenizer, task, max_length=cfg.max_length).to(device)


def load_student_model(cfg, device: str, lm: bool):
    from retrikt import models
    return (models.load_causal_lm if lm else models.load_encoder)(cfg.student, device=device)


def _none(cfg, task, examples, seed, device, lm):
    return classifier(*load_student_model(cfg, device, lm), task, cfg, device, lm), {}


def _arithmetic(cfg, task, examples, seed, device, lm):
    from retrikt.init.arithmetic import ArithmeticConfig, init_arithmetic
    if not cfg.adapters:
        raise RetriktError("arithmetic needs --adapters A [B ...] (PEFT adapter folders) and --op")
    acfg = ArithmeticConfig(op=cfg.op, adapters=list(cfg.adapters), weights=list(cfg.weights or []),
                            lam=cfg.lam, force=cfg.force)
    model, tok = load_student_model(cfg, device, lm)
    student = classifier(init_arithmetic(model, acfg), tok, task, cfg, device, lm)
    return student, {"arithmetic": {"op": cfg.op, "adapters": cfg.adapters, "weights": cfg.weights,
                                    "lam": cfg.lam}}


def _parametric(cfg, task, examples, seed, device, lm):
    """Seeking Neural Nuggets: sensitivity-selected teacher blocks, SVD-factored into the student's LoRA."""
    from retrikt import models
    from retrikt.init.parametric import ParametricConfig, init_parametric
    from retrikt.teacher.lm import LMClassifier
    if models.model_kind(cfg.teacher) != "causal-lm":
        raise RetriktError("parametric transfers between causal LMs: pass e.g. --teacher qwen-1.5b "
                           "--student qwen-0.5b")
    models.check_ram(cfg.teacher)
    student, tok = models.load_causal_lm(cfg.student, device=device)
    teacher_tok = models.load_tokenizer(cfg.teacher)
    if tok.get_vocab() != teacher_tok.get_vocab():
        raise RetriktError(f"{cfg.teacher} and {cfg.student} have different vocabularies; parametric transfer "
                           "needs a shared tokenizer")
    pairs = [(task.prompt(e), task.continuations(e)[int(e["label"])]) for e in examples]
    pcfg = ParametricConfig(rank=cfg.parametric_rank, alpha=cfg.parametric_rank, seed=seed, n_seed=cfg.parametric_seeds,
                            layer_selection=cfg.parametric_layers, block_selection=cfg.parametric_blocks)
    peft_model = init_parametric(student, lambda: models.load_causal_lm(cfg.teacher, device=device)[0],
                                 teacher_tok, pairs, pcfg)
    ablation = [f"random-{k}" for k, v in (("layers", pcfg.layer_selection), ("blocks", pcfg.block_selection))
                if v == "random"]
    return LMClassifier(peft_model, tok, task), {
        "tag": "-".join(ablation), "teacher": cfg.teacher,
        "parametric": {"rank": pcfg.rank, "n_seed": pcfg.n_seed, "layers": pcfg.layer_selection,
                       "blocks": pcfg.block_selection}}


def _port(cfg, task, examples, seed, device, lm):
    """A PEFT module trained on another host, ported onto the student (ported / scratch / sampled)."""
    from retrikt.init.portability import port_student
    if not cfg.adapters:
        raise RetriktError("port needs --adapters DIR: a module saved by python -m retrikt.port (or retrikt.compose), "
                           "and --condition ported|scratch|sampled")
    student = port_student(cfg.adapters[0], cfg.student, task, condition=cfg.condition, seed=seed,
                           max_length=cfg.max_length, device=device)
    # the default condition is the plain port; the others are variants worth a tag of their own
    tag = {"tag": cfg.condition} if cfg.condition != "ported" else {}
    return student, {**tag, "port": {"adapter": cfg.adapters[0], "condition": cfg.condition}}


STARTS = {"none": _none, "arithmetic": _arithmetic, "parametric": _parametric, "port": _port}


def merge_into_weights(student) -> None:
    """Fold the initialiser's PEFT module into the student's own weights, all of them trainable again (PEFT froze
    them): for methods that train every weight, the module is only where the weights start."""
    from retrikt.init.portability import is_prompt_learning
    model = student.encoder
    if not hasattr(model, "peft_config"):
        return
    if is_prompt_learning(model):
        raise RetriktError("a prompt-learning module (prefix / prompt tuning) adds inputs, not weights: it cannot be "
                           "folded into the weights of a fully trained student; use --method lora to train it")
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    student.encoder = merged
