"""What ``benchmarks.arithmetic`` (driver and report) and its experiment modules ``arithmetic_classify`` /
``arithmetic_unlearning`` share: the settings, which settings each result depends on, and the helpers that train,
score and merge modules. Kept apart so that the driver can import the experiments and the experiments this, with no
import cycle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from retrikt import models
from retrikt.config import arg
from retrikt.eval import evaluate
from retrikt.init.adapters import seeded_peft_model
from retrikt.init.portability import peft_config_for
from retrikt.student.encoder import EncoderClassifier
from retrikt.student.trainer import FitConfig, fit
from retrikt.tasks import load_split

from benchmarks.common import RESULTS

EXPERIMENTS = ("distribution", "multitask", "unlearning")
PROMPTS = ["The movie was", "I thought the film", "This film is", "The acting in this movie",
           "Overall, the story", "The director's new film", "Watching this movie, I", "The ending of the film"]


@dataclass
class ArithmeticBench:
    experiments: list[str] = arg(list(EXPERIMENTS), choices=list(EXPERIMENTS), help="experiments to run")
    seeds: list[int] = arg([1, 2, 3], help="seeds: data draws, the shared init of the modules, training order")
    encoder: str = arg("minilm-l6", help="encoder host of the classification modules (and the sentiment classifier)")
    lm: str = arg("smollm2-135m", help="causal LM of the unlearning experiment (the issue names qwen-0.5b)")
    peft_types: list[str] = arg(["lora", "ia3"], choices=["lora", "ia3"], help="distribution: module types")
    subset_size: int = arg(400, help="distribution: training examples in each skewed subset (union: twice this)")
    skew: float = arg(0.8, help="distribution: share of the majority label in each subset (0.8 = 80/20, 20/80)")
    heldout: int = arg(200, help="held-out training examples (per task) on which λ is chosen")
    lam_grid: list[float] = arg([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                                help="merge: grid of λ in λ·θ1 + (1−λ)·θ2")
    epochs: int = arg(2, help="training epochs of each classification module")
    batch_size: int = arg(16, help="examples per step of the classification modules and the classifier")
    lora_lr: float = arg(1e-3, help="LoRA learning rate (classification modules)")
    ia3_lr: float = arg(1e-2, help="(IA)^3 learning rate")
    head_lr: float = arg(1e-2, help="head learning rate (MiniLM's pooled features have a small norm)")
    lora_r: int = arg(8, help="LoRA rank (PEFT's default targets: query/value; q_proj/v_proj on the LM)")
    lora_alpha: int = arg(16, help="LoRA alpha")
    max_length: int = arg(64, help="encoder max tokens per input")
    eval_limit: int = arg(0, help="score only the first N validation examples of each task (0 = all)")
    second_task: str = arg("cola", help="multitask: the task merged with SST-2 (binary, offline)")
    mt_size: int = arg(1000, help="multitask: training examples per task")
    lm_sentences: int = arg(320, help="unlearning: negative SST-2 training sentences the LM module is trained on")
    lm_min_words: int = arg(8, help="unlearning: only training sentences of at least this many words (no fragments)")
    lm_epochs: int = arg(1, help="unlearning: epochs of LM training")
    lm_lr: float = arg(2e-3, help="unlearning: LoRA learning rate")
    lm_batch_size: int = arg(8, help="unlearning: sentences per step (and per scoring batch)")
    neg_grid: list[float] = arg([0.1, 0.25, 0.5, 1.0, 1.5], help="unlearning: grid of the negation strength λ")
    ppl_budget: float = arg(2.0, help="unlearning: λ may at most multiply the base model's perplexity on held-out "
                                      "positive training sentences by this")
    lm_heldout: int = arg(64, help="unlearning: held-out negative and positive training sentences (each) for λ")
    ppl_sentences: int = arg(200, help="unlearning: SST-2 validation sentences whose perplexity is measured")
    generations: int = arg(64, help="unlearning: continuations per model, spread over the neutral prompts")
    max_new_tokens: int = arg(24, help="unlearning: tokens per continuation")
    top_p: float = arg(0.9, help="unlearning: nucleus sampling")
    clf_size: int = arg(1500, help="sentiment classifier: SST-2 training examples (full fine-tuning of --encoder)")
    clf_epochs: int = arg(1, help="sentiment classifier: epochs")
    clf_lr: float = arg(5e-5, help="sentiment classifier: encoder learning rate")
    data_dir: str | None = arg(None, help="folder with glue/ files (default: ../shared/data)")
    device: str = arg("auto", help="auto | cpu | cuda")
    out_dir: str = arg(str(RESULTS), help="folder of the results files")
    name: str = arg("arithmetic", help="results file stem: <name>.json, <name>.md, <name>.runs.jsonl")


# The settings each experiment's result depends on: a record is reused when these match, so e.g. another --lm
# reruns only the unlearning seeds. Settings in none of these (seeds, device, files) never invalidate a record.
_SHARED = ("encoder", "max_length", "eval_limit", "batch_size", "head_lr", "lora_r", "lora_alpha", "data_dir")
RESULT_FIELDS = {
    "distribution": _SHARED + ("peft_types", "subset_size", "skew", "heldout", "lam_grid", "epochs", "lora_lr",
                               "ia3_lr"),
    "multitask": _SHARED + ("second_task", "mt_size", "heldout", "lam_grid", "epochs", "lora_lr"),
    "unlearning": _SHARED + ("lm", "lm_sentences", "lm_min_words", "lm_epochs", "lm_lr", "lm_batch_size",
                             "neg_grid", "ppl_budget", "lm_heldout", "ppl_sentences", "generations", "max_new_tokens",
                             "top_p", "clf_size", "clf_epochs", "clf_lr"),
}


# ---- shared helpers ----------------------------------------------------------------------------------------

def fingerprint(cfg: ArithmeticBench, experiment: str) -> str:
    d = asdict(cfg)
    return hashlib.sha256(json.dumps({k: d[k] for k in RESULT_FIELDS[experiment]},
                                     sort_keys=True).encode()).hexdigest()[:16]


def validation(cfg: ArithmeticBench, task) -> list[dict]:
    examples = load_split(task, "validation", data_dir=cfg.data_dir)
    return examples[:cfg.eval_limit] if cfg.eval_limit else examples


def score(student, task, examples: list[dict]) -> dict:
    """Main metric plus accuracy and the share predicted as label 1 (positive / acceptable): the label bias."""
    r = evaluate(student, task, "validation", examples=sorted(examples, key=lambda e: len(task.text_pair(e)[0])))
    preds = [p["pred"] for p in r["predictions"]]
    return {**r["metrics"], "main": r["main"], "n": r["n"],
            "accuracy": sum(p["pred"] == p["label"] for p in r["predictions"]) / r["n"],
            "pred1_rate": sum(p == 1 for p in preds) / len(preds)}


def encoder_module(cfg: ArithmeticBench, task, train: list[dict], ptype: str, seed: int, device) -> EncoderClassifier:
    """A ``ptype`` module plus head on a fresh copy of the encoder, trained on ``train``. The init seed is the run's
    seed, so modules meant to be merged start from equal A matrices / (IA)^3 vectors and equal heads."""
    encoder, tok = models.load_encoder(cfg.encoder, device=device)
    peft = seeded_peft_model(encoder, peft_config_for(ptype, r=cfg.lora_r, alpha=cfg.lora_alpha), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = EncoderClassifier(peft, tok, task, max_length=cfg.max_length).to(device)
    fcfg = FitConfig(epochs=cfg.epochs, lr=cfg.lora_lr if ptype == "lora" else cfg.ia3_lr, head_lr=cfg.head_lr,
                     batch_size=cfg.batch_size)
    fit(student, train, fcfg, seed, desc=f"{ptype} {task.name} s{seed}")
    return student


def module_state(student: EncoderClassifier) -> dict[str, torch.Tensor]:
    """The module as a PEFT state dict, the head as ``head.*`` tensors: arithmetic treats those as full
    parameters (``modules_to_save``), so ``merge(..., head="merge")`` averages them."""
    from peft import get_peft_model_state_dict
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(student.encoder).items()}
    state.update({f"head.{k}": v.detach().clone() for k, v in student.head.state_dict().items()})
    return state


def load_state(student: EncoderClassifier, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` on ``student``; a state without head tensors leaves the student's own head."""
    from peft import set_peft_model_state_dict
    set_peft_model_state_dict(student.encoder, {k: v for k, v in state.items() if not k.startswith("head.")})
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    if head:
        student.head.load_state_dict(head)


def pick(grid: list[float], objective) -> tuple[float, dict[str, float]]:
    """The grid value maximising ``objective``; ties go to the value nearest 0.5 (the plain mean)."""
    curve = {lam: objective(lam) for lam in grid}
    best = max(grid, key=lambda lam: (round(curve[lam], 9), -abs(lam - 0.5)))
    return best, {str(k): v for k, v in curve.items()}
