"""--method teacher | teacher-icl | teacher-lora: the teacher LLM itself scored as a verbaliser classifier.

Zero-shot, with in-context demonstrations from the k-shot set, or with a LoRA trained on the k-shot set (the adapted
teacher, cached: see retrikt.teacher.adapted). The results' "student" is the teacher model.
"""
from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import arg
from retrikt.methods.base import Method, MethodConfig, resolve_device
from retrikt.teacher.adapted import AdaptConfig


@dataclass
class Config(MethodConfig, AdaptConfig):
    icl_demos: int = arg(4, help="in-context demonstrations for teacher-icl, drawn from the k-shot set")
    teacher_calibration: str = arg("content-free", help="teacher / teacher-icl: none | content-free (divide the "
                                                        "label probabilities by those of content-free inputs, Zhao "
                                                        "et al. 2021; the raw 0.5B teacher answers one label) | "
                                                        "batch (by their mean over the seed's k-shot inputs, aimed "
                                                        "at its label mix; Zhou et al. 2024)",
                                   choices=["none", "content-free", "batch"])


def _teacher(cfg: Config, task, examples: list[dict], seed: int, demos: int):
    from retrikt.teacher.labeller import make_labeller
    clf, info = make_labeller("icl" if demos else "zero-shot", cfg.teacher, task, examples, seed, demos=demos,
                              calibration=cfg.teacher_calibration, device=resolve_device(cfg.device))
    return clf, {"student": cfg.teacher, "demos": info["demos"], "calibration": cfg.teacher_calibration}


def train_zero_shot(cfg: Config, task, examples: list[dict], seed: int):
    return _teacher(cfg, task, examples, seed, 0)


def train_icl(cfg: Config, task, examples: list[dict], seed: int):
    return _teacher(cfg, task, examples, seed, cfg.icl_demos)


def train_adapted(cfg: Config, task, examples: list[dict], seed: int):
    """The adapted teacher: a LoRA on the teacher, trained on this seed's k-shot set (cached, see teacher.adapted)."""
    from retrikt.teacher.adapted import adapt_config
    from retrikt.teacher.labeller import make_labeller
    clf, info = make_labeller("adapted", cfg.teacher, task, examples, seed, adapt=adapt_config(cfg),
                              device=resolve_device(cfg.device))
    return clf, {"student": cfg.teacher, **{k: v for k, v in info.items() if k not in ("kind", "model")}}


def _seed_free(cfg: Config) -> bool:
    """Zero-shot scoring does not depend on the seed unless batch calibration reads the seed's k-shot inputs."""
    return cfg.teacher_calibration != "batch"


TEACHER = Method("teacher", Config, train_zero_shot, students=("teacher",), deterministic=_seed_free,
                 help="the teacher LLM zero-shot")
TEACHER_ICL = Method("teacher-icl", Config, train_icl, students=("teacher",),
                     help="the teacher LLM with --icl-demos k-shot demonstrations")
TEACHER_LORA = Method("teacher-lora", Config, train_adapted, students=("teacher",),
                      help="the teacher LLM with a LoRA trained on the k-shot set")
