"""Training methods behind ``python -m retrikt.train --method NAME [--init INIT]``: one file each, one dict of them.

A method file holds a ``Config`` dataclass (its options, on top of ``base.StudentConfig`` or ``base.MethodConfig``),
``train(cfg: Config, task, examples, seed) -> (student, extra facts)``, and a ``Method`` declaring its needs.
``TrainConfig`` is the one flat namespace of the command line and YAML files: the run's options plus every method's
``Config``; ``run_method`` hands each method its own typed ``Config``, built from it. Like mergekit's merge methods:
a plain dict, no plugin discovery. How to add a method: docs/DESIGN.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from retrikt.config import arg
from retrikt.init import INITS
from retrikt.io import RetriktError
from retrikt.methods import arithmetic, finetune, kd, lora, parametric, port, teacher
from retrikt.methods import retrikt as retrikt_method
from retrikt.methods.base import Method, narrow, student_kind

METHODS: dict[str, Method] = {
    "finetune": finetune.METHOD,
    "lora": lora.METHOD,
    "kd": kd.METHOD,
    "retrikt": retrikt_method.METHOD,
    "teacher": teacher.TEACHER,
    "teacher-icl": teacher.TEACHER_ICL,
    "teacher-lora": teacher.TEACHER_LORA,
    "parametric": parametric.METHOD,
    "arithmetic": arithmetic.METHOD,
    "port": port.METHOD,
}


@dataclass
class RunConfig:
    """What a run trains on, how often, and where its results go."""
    task: str = arg("cb", help="task name (python -m retrikt.tasks lists them)")
    method: str = arg("finetune", help=" | ".join(METHODS))
    shots: int = arg(32, help="k-shot training set: this many examples in total, stratified over labels "
                              "(FewGLUE convention); 0 = the whole training split")
    shots_per_label: int = arg(0, help="if > 0, sample this many examples per label instead of --shots in total")
    seeds: list[int] = arg([1, 2, 3], help="seeds: each one samples its own k-shot set and trains its own student")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ files (default: ../shared/data if present)")
    out: str = arg("train/runs", help="folder for results JSON (one file per task/method/student/seed)")
    save_student: bool = arg(False, help="also save each trained student next to its results")
    eval_split: str = arg("validation", help="split to score on (the official validation split)")
    eval_limit: int = arg(0, help="score only the first N validation examples (0 = all; for smoke runs)")


# Every Config with options of its own is a base here, so its options are flags (check_combination refuses a
# registered method whose options are missing). retrikt before lora and teacher: its Config extends kd's.
@dataclass
class TrainConfig(RunConfig, retrikt_method.Config, lora.Config, teacher.Config):
    pass


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise RetriktError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def run_label(cfg: TrainConfig) -> str:
    """The name a run's results go under: the method, or method+init (``retrikt+arithmetic``) for a combination."""
    return cfg.method if cfg.init == "none" else f"{cfg.method}+{cfg.init}"


def check_combination(cfg: TrainConfig) -> Method:
    """The method of ``cfg``, or a RetriktError saying why it cannot train ``cfg.student`` from ``cfg.init``."""
    from retrikt.init.start import check_init
    m = get_method(cfg.method)
    missing = sorted({f.name for f in dataclasses.fields(m.config_cls)} - {f.name for f in dataclasses.fields(cfg)})
    if missing:
        raise RetriktError(f"method {m.name}: options {', '.join(missing)} are not in TrainConfig; add "
                           f"{m.config_cls.__module__}.Config to its bases (retrikt/methods/__init__.py)")
    if cfg.init not in m.inits:
        why = ("it scores the teacher LLM, there is no student to start" if m.students == ("teacher",) else
               f"it accepts --init {' | '.join(m.inits)}; use --method lora --init {cfg.init} to combine")
        raise RetriktError(f"--method {m.name} cannot take --init {cfg.init}: {why}")
    if m.students != ("teacher",):
        kind = student_kind(cfg.student)
        if kind not in m.students:
            raise RetriktError(f"--method {m.name} trains {' / '.join(m.students)} students; {cfg.student} is "
                               f"{'a causal LM (use --method lora)' if kind == 'lm' else 'an encoder'}")
        check_init(cfg.init, kind, cfg.student)
    return m


def method_config(cfg: TrainConfig, m: Method):
    """The method's own typed Config from the flat one; ``lr`` (when it has one) defaults per method."""
    names = {f.name for f in dataclasses.fields(m.config_cls)}
    changes = {"lr": m.default_lr} if "lr" in names and cfg.lr is None else {}
    return narrow(cfg, m.config_cls, **changes)


def run_method(cfg: TrainConfig, task, examples: list[dict], seed: int):
    """Train one student of ``cfg.method`` (from ``cfg.init``) on ``examples``: (student, extra facts)."""
    m = check_combination(cfg)
    return m.train(method_config(cfg, m), task, examples, seed)


__all__ = ["INITS", "METHODS", "Method", "RunConfig", "TrainConfig", "check_combination", "get_method",
           "method_config", "run_label", "run_method"]
