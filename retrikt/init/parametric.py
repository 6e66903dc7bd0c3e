"""Parametric knowledge transfer: initialise a small LM's LoRA from sensitivity-selected blocks of a teacher.

Zhong et al., "Seeking Neural Nuggets: Knowledge Transfer in LLMs from a Parametric Perspective" (ICLR 2024),
following the authors' extraction script (maszhongming/ParaKnowTransfer): sensitivity on k seed samples, top-L
teacher layers kept in depth order, the highest-sensitivity block of the student's shape cut from every target
matrix, factorised by truncated SVD into a rank-r LoRA. The student's base weights are reduced by the same
product so that its output is unchanged at step 0 while the LoRA starts from the teacher's knowledge.

Memory (Qwen2.5 1.5B teacher -> 0.5B student on CPU): gradients are consumed one parameter at a time and only
block-sum maps are kept (see :mod:`retrikt.init.sensitivity`), so extraction costs about 1.9 GiB on top of the
weights; measured peak RSS 11.2 GiB with an fp32 1.5B-shaped teacher (7.0 GiB) and an fp32 0.5B-shaped student
(2.3 GiB) in one process. Transferring the embeddings too (``include_embeddings``) adds a transient ~2 GB per
vocabulary matrix (its dense gradient and S); then load the teacher in bf16 (``dtype=torch.bfloat16``): S, block
sums and SVDs stay fp32, only θ and ∂L/∂θ are bf16, which perturbs the block ranking far less than the q4
quantisation the shipped teacher already carries.

The SVD factorisation, the base-weight change and saving / loading live in :mod:`retrikt.init.parametric_lora`
(re-exported here).
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from retrikt.config import arg
# Unused names below are re-exported: callers import them from here.
from retrikt.init.parametric_lora import (DELTA, _transposed, factorise, load_parametric,  # noqa: F401
                                          save_parametric, weight_delta)
from retrikt.init.sensitivity import (BlockScores, best_block, best_block_loop, compute_block_scores,  # noqa: F401
                                      compute_sensitivity, random_block, select_layers, window_sums)
from retrikt.io import RetriktError
from retrikt.models.ram import log_rss

logger = logging.getLogger(__name__)

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}   # a fused module is targeted when any part is asked for

_LLAMA = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
          "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
          "down_proj": "mlp.down_proj"}
_GPT2 = {"qkv_proj": "attn.c_attn", "o_proj": "attn.c_proj", "up_proj": "mlp.c_fc", "down_proj": "mlp.c_proj"}
_BERT = {"q_proj": "attention.self.query", "k_proj": "attention.self.key", "v_proj": "attention.self.value",
         "o_proj": "attention.output.dense", "up_proj": "intermediate.dense", "down_proj": "output.dense"}
_MPNET = {"q_proj": "attention.attn.q", "k_proj": "attention.attn.k", "v_proj": "attention.attn.v",
          "o_proj": "attention.attn.o", "up_proj": "intermediate.dense", "down_proj": "output.dense"}
# config.model_type -> (name of the ModuleList of blocks, role -> module path inside one block)
ARCHITECTURES: dict[str, tuple[str, dict[str, str]]] = {
    **{t: ("layers", _LLAMA) for t in ("qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "olmo",
                                       "olmo2", "granite", "smollm3")},
    "gpt2": ("h", _GPT2),
    **{t: ("encoder.layer", _BERT) for t in ("bert", "roberta", "xlm-roberta", "electra")},
    "mpnet": ("encoder.layer", _MPNET),
}


@dataclass
class ParametricConfig:
    """Parametric knowledge transfer (Zhong et al., ICLR 2024); defaults from the paper / reference code."""
    rank: int = arg(16, help="LoRA rank r of the SVD factors (paper: 16)")
    alpha: int = arg(16, help="LoRA alpha; PEFT scales the update by alpha/r, the factors are divided by it "
                              "(paper: alpha = r, scaling 1)")
    lora_dropout: float = arg(0.05, help="LoRA dropout during the fine-tuning that follows (reference: 0.05)")
    n_seed: int = arg(32, help="seed samples for the sensitivity (paper: 32)")
    layer_selection: str = arg("sensitivity", help="teacher layers to keep: highest summed sensitivity, or "
                               "'random' (ablation)", choices=["sensitivity", "random"])
    block_selection: str = arg("sensitivity", help="block cut from each matrix: highest summed sensitivity, "
                               "or 'random' (ablation)", choices=["sensitivity", "random"])
    target_modules: list[str] = arg(list(ROLES), help="projections to transfer (Llama names; mapped per "
                                    "architecture, q/k/v also select a fused qkv)")
    include_embeddings: bool = arg(False, help="also transfer input embeddings and LM head (reference: yes; "
                                   "needs vocabularies that line up)")
    batch_size: int = arg(1, help="seed samples per backward; 1 takes |θ·grad| per sample as the paper does")
    max_length: int = arg(512, help="token cap per seed sample; the prompt is cut from the left "
                          "(reference: 2048)")
    add_eos: bool = arg(True, help="append EOS to each answer, as the reference chat format does")
    seed: int = arg(0, help="seed of the seed-sample draw, the random ablations and PEFT's initial padding")
    lr: float = arg(3e-4, help="fine-tuning learning rate after initialisation (paper: 3e-4); for the trainer")
    epochs: int = arg(3, help="fine-tuning epochs after initialisation (paper: 3); for the trainer")

    def __post_init__(self) -> None:
        for name in ("rank", "alpha", "n_seed", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise RetriktError(f"parametric config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("layer_selection", "block_selection"):
            if getattr(self, name) not in ("sensitivity", "random"):
                raise RetriktError(f"parametric config: {name} must be 'sensitivity' or 'random', "
                                   f"got {getattr(self, name)!r}")
        unknown = [m for m in self.target_modules if m not in ROLES and m not in _FUSED]
        if unknown:
            raise RetriktError(f"parametric config: unknown target module(s) {', '.join(unknown)}; "
                               f"known: {', '.join(ROLES)}")


class ExtractedLora(dict):
    """``student module name -> (A [r, in], B [out, r])`` with ``B @ A`` the rank-r teacher block.

    ``teacher_layers[i]`` is the teacher layer that initialises student layer i; ``blocks[name]`` is the
    teacher weight and the top-left corner (in that weight's storage layout) of the block that was cut.
    """
    teacher_layers: list[int]
    blocks: dict[str, tuple[str, int, int]]


@dataclass(frozen=True)
class _Entry:
    role: str
    layer: int | None            # teacher layer; None for embeddings / LM head
    param: str                   # teacher weight name
    window: tuple[int, int]      # student block shape in the teacher weight's storage layout
    transposed: bool             # teacher weight stored [in, out] (Conv1D, Embedding)


def _logical_shape(module: nn.Module, name: str) -> tuple[int, int]:
    h, w = module.weight.shape
    return (w, h) if _transposed(module, name) else (h, w)


def _roles_of(model: nn.Module, wanted: Sequence[str]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Per block: role -> module name, for the ``wanted`` roles this architecture has; plus embed / head."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in ARCHITECTURES:
        raise RetriktError(f"parametric transfer has no module-name map for architecture {mt!r} "
                           f"({type(model).__name__}); known: {', '.join(sorted(ARCHITECTURES))}")
    attr, paths = ARCHITECTURES[mt]
    lists = [n for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and (n == attr or n.endswith("." + attr))]
    if not lists:
        raise RetriktError(f"{type(model).__name__}: no '{attr}' list of blocks found")
    prefix = min(lists, key=len)
    roles = {r: p for r, p in paths.items() if r in wanted or any(x in wanted for x in _FUSED.get(r, ()))}
    blocks = [{r: f"{prefix}.{i}.{p}" for r, p in roles.items()} for i in range(len(model.get_submodule(prefix)))]
    names = {id(m): n for n, m in model.named_modules()}
    extra = {"embed": names[id(model.get_input_embeddings())]}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        extra["head"] = names[id(head)]
    return blocks, extra


def _plan(teacher: nn.Module, student: nn.Module, cfg: ParametricConfig):
    """Teacher weights to score and cut, paired with student modules by role."""
    t_blocks, t_extra = _roles_of(teacher, cfg.target_modules)
    s_blocks, s_extra = _roles_of(student, cfg.target_modules)
    if cfg.include_embeddings:
        s_head = s_extra.get("head")
        if s_head and student.get_submodule(s_head).weight is student.get_input_embeddings().weight:
            logger.warning("student ties its LM head to its embeddings: transferring the embeddings only")
            s_extra.pop("head")
    else:
        s_extra = {}
    entries: list[_Entry] = []
    shared = [r for r in s_blocks[0] if r in t_blocks[0]]
    extras = [(r, None, t_extra[r]) for r in s_extra if r in t_extra]
    for role, layer, t_name in [(r, i, b[r]) for i, b in enumerate(t_blocks) for r in shared] + extras:
        s_name = s_blocks[0][role] if layer is not None else s_extra[role]
        shape = _logical_shape(student.get_submodule(s_name), s_name)
        if layer is not None and any(_logical_shape(student.get_submodule(b[role]), b[role]) != shape
                                     for b in s_blocks):
            raise RetriktError(f"student {role} shapes differ between layers; only uniform stacks are supported")
        t_mod = teacher.get_submodule(t_name)
        tr = _transposed(t_mod, t_name)
        window = (shape[1], shape[0]) if tr else shape
        if window[0] > t_mod.weight.shape[0] or window[1] > t_mod.weight.shape[1]:
            if layer in (0, None):
                logger.warning("skipping %s: student block %s does not fit teacher %s", role, shape,
                               _logical_shape(t_mod, t_name))
            continue
        entries.append(_Entry(role, layer, f"{t_name}.weight", window, tr))
    if not entries:
        raise RetriktError("no teacher matrix can initialise any student module (no shared roles that fit)")
    return entries, s_blocks, s_extra, len(t_blocks)


def extract_lora(teacher: nn.Module, student: nn.Module, sensitivity: dict[str, torch.Tensor] | BlockScores | None,
                 cfg: ParametricConfig | None = None) -> ExtractedLora:
    """LoRA factors for every student target module, cut from the teacher as ``cfg`` says.

    ``sensitivity``: full S per teacher weight (from :func:`compute_sensitivity`) or reduced
    :class:`BlockScores`; may be None when both selections are random.
    """
    cfg = cfg or ParametricConfig()
    entries, s_blocks, s_extra, n_teacher = _plan(teacher, student, cfg)
    scores = BlockScores.from_sensitivity(sensitivity) if isinstance(sensitivity, dict) else sensitivity
    if scores is None and "sensitivity" in (cfg.layer_selection, cfg.block_selection):
        raise RetriktError("sensitivity-based selection needs the teacher's sensitivity (got None)")
    layer_scores = [0.0] * n_teacher
    if cfg.layer_selection == "sensitivity":
        for e in entries:
            if e.layer is not None:
                layer_scores[e.layer] += scores.totals[e.param]
    kept = select_layers(layer_scores, len(s_blocks), cfg.layer_selection, cfg.seed)
    logger.info("teacher layers -> student layers: %s", kept)
    to_student = {t: i for i, t in enumerate(kept)}
    weights = dict(teacher.named_parameters(remove_duplicate=False))
    gen = torch.Generator().manual_seed(cfg.seed)
    out = ExtractedLora()
    out.teacher_layers, out.blocks = kept, {}
    for e in entries:
        if e.layer is not None and e.layer not in to_student:
            continue
        target = s_blocks[to_student[e.layer]][e.role] if e.layer is not None else s_extra[e.role]
        W = weights[e.param].detach()
        if cfg.block_selection == "sensitivity":
            r, c = scores.best(e.param, e.window)
        else:
            r, c = random_block(W.shape, e.window, gen)
        block = W[r:r + e.window[0], c:c + e.window[1]]
        out[target] = factorise(block.T if e.transposed else block, cfg.rank)
        out.blocks[target] = (e.param, r, c)
    return out


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    return "SEQ_CLS" if name.endswith("ForSequenceClassification") else None


def _lora_tensors(layer: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's (A [r, in], B [out, r]) parameters of a PEFT LoRA layer, Linear or Embedding."""
    if adapter in getattr(layer, "lora_embedding_A", {}):
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


def student_targets(student: nn.Module, cfg: ParametricConfig) -> list[str]:
    """Full names of the student modules the LoRA wraps (every layer, plus embeddings if asked)."""
    blocks, extra = _roles_of(student, cfg.target_modules)
    names = [n for b in blocks for n in b.values()]
    if cfg.include_embeddings:
        names += [n for r, n in extra.items()
                  if r == "embed" or student.get_submodule(n).weight is not student.get_input_embeddings().weight]
    return names


def inject_lora(student: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                cfg: ParametricConfig | None = None):
    """Wrap ``student`` in a PEFT LoRA whose factors are ``factors`` and whose output is unchanged at step 0.

    For each module, ``lora_A <- A`` and ``lora_B <- B / scaling`` (so the update is exactly ``B @ A``), and the
    base weight loses the same update. Spare ranks keep PEFT's init, whose product is zero.
    """
    from peft import LoraConfig, get_peft_model
    cfg = cfg or ParametricConfig()
    names = student_targets(student, cfg)
    stray = sorted(set(factors) - set(names))
    if stray:
        raise RetriktError(f"factors for modules the LoRA does not target: {', '.join(stray[:5])}")
    from transformers.pytorch_utils import Conv1D
    lora_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout, target_modules=names,
                          task_type=_task_type(student),
                          fan_in_fan_out=any(isinstance(student.get_submodule(n), Conv1D) for n in names))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = get_peft_model(student, lora_cfg)
    adapter = model.active_adapter
    init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scalings = set()
    with torch.no_grad():
        for name, (A, B) in factors.items():
            layer = model.base_model.model.get_submodule(name)
            scaling = float(layer.scaling[adapter])
            scalings.add(scaling)
            lora_A, lora_B = _lora_tensors(layer, adapter)
            if A.shape[0] > lora_A.shape[0] or A.shape[1] != lora_A.shape[1] or B.shape[0] != lora_B.shape[0]:
                raise RetriktError(f"{name}: factors {tuple(B.shape)} x {tuple(A.shape)} do not fit the LoRA "
                                   f"{tuple(lora_B.shape)} x {tuple(lora_A.shape)}")
            lora_A[:A.shape[0]] = A.to(lora_A)
            lora_B[:, :A.shape[0]] = (B / scaling).to(lora_B)
            base = layer.get_base_layer()
            base.weight.sub_(weight_delta(lora_A, lora_B, scaling, _transposed(base, name), base.weight))
            init[name] = (lora_A.detach().cpu().clone(), lora_B.detach().cpu().clone())
    if len(scalings) > 1:
        raise RetriktError(f"LoRA scaling differs between modules ({sorted(scalings)}); not supported")
    model.retrikt_parametric = {"init": init, "scaling": scalings.pop() if scalings else cfg.alpha / cfg.rank,
                                "teacher_layers": list(getattr(factors, "teacher_layers", [])),
                                "config": dataclasses.asdict(cfg)}
    return model


TeacherSource = nn.Module | Callable[[], nn.Module]


def extract_from_teacher(teacher: TeacherSource, student: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]],
                         cfg: ParametricConfig | None = None) -> ExtractedLora:
    """Sensitivity + extraction. ``teacher`` may be a zero-argument loader: the model it returns is dropped
    (and its memory freed, if the caller kept no reference) before this returns."""
    cfg = cfg or ParametricConfig()
    model = teacher() if callable(teacher) and not isinstance(teacher, nn.Module) else teacher
    log_rss("loading the teacher")
    try:
        entries, s_blocks, _, n_teacher = _plan(model, student, cfg)
        if cfg.layer_selection == "random":   # layers known up front: score only those
            keep = set(select_layers([0.0] * n_teacher, len(s_blocks), "random", cfg.seed))
            entries = [e for e in entries if e.layer is None or e.layer in keep]
        scores = None
        if "sensitivity" in (cfg.layer_selection, cfg.block_selection):
            seeds = list(pairs)
            if not seeds:
                raise RetriktError("sensitivity-based selection needs seed (prompt, answer) pairs; got none")
            if len(seeds) > cfg.n_seed:
                seeds = random.Random(cfg.seed).sample(seeds, cfg.n_seed)
            windows = {e.param: e.window for e in entries} if cfg.block_selection == "sensitivity" else {}
            scores = compute_block_scores(model, tokenizer, seeds, [e.param for e in entries], windows,
                                          batch_size=cfg.batch_size, max_length=cfg.max_length,
                                          add_eos=cfg.add_eos)
            log_rss("the sensitivity pass")
        return extract_lora(model, student, scores, cfg)
    finally:
        del model
        gc.collect()
        log_rss("extraction (teacher freed)")


def init_parametric(student: nn.Module, teacher: TeacherSource, tokenizer, pairs: Sequence[tuple[str, str]],
                    cfg: ParametricConfig | None = None):
    """One call: seed-sample sensitivity on ``teacher``, extraction, SVD, and injection into ``student``.

    ``pairs`` are ``(prompt, answer)`` training examples (``cfg.n_seed`` are drawn); ``tokenizer`` is the
    teacher's. Returns the student as a ``peft.PeftModel`` whose step-0 output equals the untouched student's.
    """
    cfg = cfg or ParametricConfig()
    factors = extract_from_teacher(teacher, student, tokenizer, pairs, cfg)
    model = inject_lora(student, factors, cfg)
    log_rss("injection into the student")
    return model
