"""Training methods behind ``python -m retrikt.train --method NAME``: one function each, one dict of them.

A method takes the run config, the task, the k-shot training examples and a seed, and returns a trained student
(anything the harness can score) plus a dict of extra facts for the results JSON.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass


from retrikt import models
from retrikt.config import arg
from retrikt.io import RetriktError
from retrikt.student.encoder import EncoderClassifier
from retrikt.teacher.lm import LMClassifier
from retrikt.student.trainer import FitConfig, fit, seed_everything
from retrikt.teacher.adapted import AdaptConfig

logger = logging.getLogger(__name__)

# Learning rates when --lr is not given: full fine-tuning of a small encoder vs adapters (LoRA: Hu et al. 2021 use
# 1e-4..5e-4; the parametric paper fine-tunes its LoRA at 3e-4).
DEFAULT_LR = {"finetune": 5e-5, "kd": 5e-5, "retrikt": 5e-5, "lora": 5e-4, "parametric": 3e-4, "arithmetic": 5e-4, "port": 5e-4}


@dataclass
class TrainConfig(FitConfig, AdaptConfig):
    task: str = arg("cb", help="task name (python -m retrikt.tasks lists them)")
    method: str = arg("finetune", help="finetune | lora | teacher | teacher-icl | teacher-lora | kd | retrikt | "
                                       "parametric | arithmetic | port")
    student: str = arg("minilm-l6", help="student model: a short name (python -m retrikt.models list), hub id or path")
    teacher: str = arg("qwen-0.5b", help="teacher LLM (for teacher / parametric methods)")
    shots: int = arg(32, help="k-shot training set: this many examples in total, stratified over labels "
                              "(FewGLUE convention); 0 = the whole training split")
    shots_per_label: int = arg(0, help="if > 0, sample this many examples per label instead of --shots in total")
    seeds: list[int] = arg([1, 2, 3], help="seeds: each one samples its own k-shot set and trains its own student")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ files (default: ../shared/data if present)")
    out: str = arg("train/runs", help="folder for results JSON (one file per task/method/student/seed)")
    save_student: bool = arg(False, help="also save each trained student next to its results")
    retrieval_labels: str = arg("teacher", help="retrikt: neighbours vote with teacher soft labels | conditioned "
                                               "labels | auto (chosen on the held-out k-shot examples)",
                                choices=["teacher", "conditioned", "auto"])
    micro_batch_size: int = arg(-1, help="examples per forward/backward, gradients accumulated over the batch; "
                                         "-1 = auto: 2 for causal-LM students (activation memory), else the batch")
    max_length: int = arg(256, help="encoder max tokens per input")
    lora_r: int = arg(8, help="LoRA rank for the lora method")
    lora_alpha: int = arg(16, help="LoRA alpha for the lora method")
    icl_demos: int = arg(4, help="in-context demonstrations for teacher-icl, drawn from the k-shot set")
    teacher_calibration: str = arg("content-free", help="teacher / teacher-icl: none | content-free (divide the "
                                                        "label probabilities by those of content-free inputs, Zhao "
                                                        "et al. 2021; the raw 0.5B teacher answers one label)",
                                   choices=["none", "content-free"])
    eval_split: str = arg("validation", help="split to score on (the official validation split)")
    eval_limit: int = arg(0, help="score only the first N validation examples (0 = all; for smoke runs)")
    device: str = arg("auto", help="auto | cpu | cuda")
    store: str | None = arg(None, help="knowledge store folder (kd and retrikt methods)")
    allow_foreign_store: bool = arg(False, help="kd / retrikt: accept a store built from another k-shot set than "
                                               "the run's (another seed or --shots); the run then is not k-shot")
    retrieval_k: int = arg(8, help="retrikt: neighbours retrieved per input (re-chosen on held-out k-shot data)")
    retrieval_beta: float = arg(0.5, help="retrikt: weight of the student's own prediction in the mixture")
    retrieval_tau: float = arg(0.1, help="retrikt: softmax temperature over neighbour similarities")
    rel_weight: float = arg(1.0, help="retrikt: weight of the relational loss")
    rel_tau: float = arg(0.1, help="retrikt: temperature of the relational loss' similarity distributions")
    select_settings: bool = arg(True, help="retrikt: choose k, beta, tau on held-out k-shot examples")
    refit: bool = arg(True, help="retrikt: once k, beta, tau are chosen on the held-out examples, train the final "
                                 "student on the whole k-shot set (a second training run)")
    no_retrieval: bool = arg(False, help="retrikt ablation: no retrieval at inference (store as training data only)")
    no_relational: bool = arg(False, help="retrikt ablation: no relational loss")
    retrieve_from: str = arg("store", help="retrikt: what the student retrieves from: store | both (the store plus "
                                          "the labelled k-shot examples, gold labels) | kshot (ablation: k-shot only)",
                             choices=["store", "both", "kshot"])
    parametric_rank: int = arg(16, help="parametric: LoRA rank of the SVD factors (paper: 16, alpha = r)")
    parametric_seeds: int = arg(32, help="parametric: seed samples for the sensitivity (paper: 32)")
    parametric_layers: str = arg("sensitivity", help="parametric: layer selection, sensitivity | random (ablation)",
                                 choices=["sensitivity", "random"])
    parametric_blocks: str = arg("sensitivity", help="parametric: block selection, sensitivity | random (ablation)",
                                 choices=["sensitivity", "random"])
    adapters: list[str] = arg([], help="arithmetic / port: PEFT adapter folder(s) to start from")
    op: str = arg("merge", help="arithmetic: merge | negate | analogy", choices=["merge", "negate", "analogy"])
    weights: list[float] = arg([], help="arithmetic: one weight per adapter (default: equal)")
    lam: float = arg(1.0, help="arithmetic: λ of negation / analogy")
    force: bool = arg(False, help="arithmetic: compose modules whose initialisations differ")
    condition: str = arg("ported", help="port: ported | scratch | sampled", choices=["ported", "scratch", "sampled"])
    lr: float | None = arg(None, help="learning rate (default depends on the method: finetune 5e-5, lora 5e-4, "
                                      "parametric 3e-4)")


def resolve_device(name: str) -> str:
    """auto | cpu | cuda -> a device; in a launched process group, this rank's own GPU."""
    from retrikt.dist import rank_device
    return rank_device(name)


def fit_config(cfg: TrainConfig) -> FitConfig:
    base = {k: v for k, v in asdict(cfg).items() if k in FitConfig.__dataclass_fields__}
    if cfg.lr is None:
        base["lr"] = DEFAULT_LR.get(cfg.method, 5e-5)
    if cfg.micro_batch_size < 0:  # auto: bounded activation memory for causal-LM students
        base["micro_batch_size"] = 2 if _is_causal(cfg.student) else 0
    return FitConfig(**base)


def _is_causal(name: str) -> bool:
    return models.model_kind(name) == "causal-lm"


def train_finetune(cfg: TrainConfig, task, train: list[dict], seed: int):
    if _is_causal(cfg.student):
        raise RetriktError(f"--method finetune trains encoder students; {cfg.student} is a causal LM "
                           "(use --method lora for causal-LM students)")
    seed_everything(seed)
    encoder, tok = models.load_encoder(cfg.student, device=resolve_device(cfg.device))
    student = EncoderClassifier(encoder, tok, task, max_length=cfg.max_length).to(encoder.device)
    losses = fit(student, train, fit_config(cfg), seed, desc=f"finetune {task.name} s{seed}")
    return student, {"final_loss": losses[-1] if losses else None}


def train_lora(cfg: TrainConfig, task, train: list[dict], seed: int):
    from retrikt.init.adapters import lora_config_for, seeded_peft_model
    seed_everything(seed)
    device = resolve_device(cfg.device)
    causal = _is_causal(cfg.student)
    # The LoRA init depends on the seed only (not on the task), and is recorded in the saved adapter, so modules of
    # different tasks trained with one seed can be composed by module arithmetic.
    if causal:
        model, tok = models.load_causal_lm(cfg.student, device=device)
        peft_model = seeded_peft_model(model, lora_config_for(model, cfg.lora_r, cfg.lora_alpha, True), seed)
        student = LMClassifier(peft_model, tok, task)
    else:
        encoder, tok = models.load_encoder(cfg.student, device=device)
        peft_encoder = seeded_peft_model(encoder, lora_config_for(encoder, cfg.lora_r, cfg.lora_alpha, False), seed)
        student = EncoderClassifier(peft_encoder, tok, task, max_length=cfg.max_length).to(device)
    losses = fit(student, train, fit_config(cfg), seed, desc=f"lora {task.name} s{seed}")
    return student, {"final_loss": losses[-1] if losses else None}


def _teacher(cfg: TrainConfig, task, train: list[dict], seed: int, demos: int):
    from retrikt.teacher.labeller import make_labeller
    clf, info = make_labeller("icl" if demos else "zero-shot", cfg.teacher, task, train, seed, demos=demos,
                              calibration=cfg.teacher_calibration, device=resolve_device(cfg.device))
    return clf, {"student": cfg.teacher, "demos": info["demos"], "calibration": cfg.teacher_calibration}


def train_teacher(cfg, task, train, seed):
    return _teacher(cfg, task, train, seed, 0)


def train_teacher_icl(cfg, task, train, seed):
    return _teacher(cfg, task, train, seed, cfg.icl_demos)


def train_teacher_lora(cfg, task, train, seed):
    """The adapted teacher: a LoRA on the teacher, trained on this seed's k-shot set (cached, see teacher.adapted)."""
    from retrikt.teacher.adapted import adapt_config
    from retrikt.teacher.labeller import make_labeller
    clf, info = make_labeller("adapted", cfg.teacher, task, train, seed, adapt=adapt_config(cfg),
                              device=resolve_device(cfg.device))
    return clf, {"student": cfg.teacher, **{k: v for k, v in info.items() if k not in ("kind", "model")}}


# Methods implemented in their own modules, imported on first use: name -> (module, function).
LAZY = {
    "kd": ("retrikt.student.retrieval", "train_kd"),
    "retrikt": ("retrikt.student.retrieval", "train_retrikt"),
    "parametric": ("retrikt.init.runner", "train_parametric"),
    "arithmetic": ("retrikt.init.runner", "train_arithmetic"),
    "port": ("retrikt.init.runner", "train_port"),
}
METHODS = {"finetune": train_finetune, "lora": train_lora, "teacher": train_teacher, "teacher-icl": train_teacher_icl,
           "teacher-lora": train_teacher_lora}


def get_method(name: str):
    if name in METHODS:
        return METHODS[name]
    if name in LAZY:
        mod, fn = LAZY[name]
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise RetriktError(f"method {name!r} is not available in this version of retrikt ({e})") from None
    raise RetriktError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS) + sorted(LAZY))}")
