"""A causal LM used as a classifier: score each label's verbaliser (or each choice) by log-likelihood.

This is how the teacher is scored (zero-shot, in-context, or adapted with a LoRA), how generated store samples are
labelled, and how causal-LM students (e.g. qwen-0.5b with a LoRA) are trained and scored. ``forward`` returns
per-label log-likelihood scores with gradients, so the shared trainer's cross-entropy over them trains the adapter on
the answer tokens only.

Scoring is spent on tokens that carry information. When every verbaliser is one token (all GLUE / SuperGLUE label
tasks with the Qwen tokenizer) an example costs one forward pass and the LM head runs on its last position only; with
longer continuations (COPA's choices) only the continuation positions reach the head. In-context demonstrations are
encoded once per ``predict_proba`` call and their KV cache is shared by every batch, so a demonstration costs nothing
per example; batches are length-sorted so padding is small, and the content-free calibration prior is computed once.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrikt.io import RetriktError
from retrikt.progress import progress

logger = logging.getLogger(__name__)


# Content-free inputs of "Calibrate Before Use" (Zhao et al., ICML 2021): every text field set to each filler.
CONTENT_FREE = ("N/A", "", "[MASK]")
CALIBRATIONS = ("none", "content-free", "batch")
MIN_PROMPT_TOKENS = 16  # what an example keeps at least when the demonstrations fill the context


def calibration_applies(task) -> bool:
    """Multiple-choice tasks score each example's own choices: no fixed label to be biased towards."""
    return task.kind != "multiple_choice"


class LMClassifier(nn.Module):
    def __init__(self, model, tokenizer, task, demos: list[dict] | None = None, max_length: int = 1024,
                 length_norm: bool | None = None, calibrate: str = "none",
                 calibration_inputs: list[dict] | None = None, label_mix: list[float] | None = None):
        super().__init__()
        if task.is_regression:
            raise RetriktError(f"task {task.name} is a regression task; verbaliser scoring needs labels "
                               "(use an encoder student with a regression head)")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.demos = list(demos or [])
        self.max_length = max_length
        # Choices (COPA) differ in length, so compare mean per-token log-likelihoods; verbalisers are summed.
        self.length_norm = length_norm if length_norm is not None else task.kind == "multiple_choice"
        self._prefix = self._demo_prefix()
        self._prefix_ids = tokenizer(self._prefix, add_special_tokens=False)["input_ids"] if self._prefix else []
        if len(self._prefix_ids) + MIN_PROMPT_TOKENS > max_length:
            raise RetriktError(f"{len(self.demos)} demonstrations take {len(self._prefix_ids)} tokens, leaving less "
                               f"than {MIN_PROMPT_TOKENS} of max_length={max_length} for the example: use fewer "
                               "demonstrations or a larger max_length")
        if calibrate not in CALIBRATIONS:
            raise RetriktError(f"unknown calibration {calibrate!r}; choose one of {', '.join(CALIBRATIONS)}")
        if calibrate == "batch" and calibration_applies(task) and not calibration_inputs:
            raise RetriktError("calibration 'batch' estimates the LM's label bias on unlabelled task inputs: pass "
                               "calibration_inputs (e.g. the k-shot examples that are not demonstrations)")
        self.calibrate = calibrate
        self.calibration_inputs = list(calibration_inputs or [])
        self.label_mix = None if label_mix is None else np.asarray(label_mix, dtype=float)
        self._prior: np.ndarray | None = None
        self._states: dict[tuple, np.ndarray] | None = None  # answer states kept while scoring (keep_answer_states)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _continuations(self, example: dict) -> list[str]:
        return self.task.continuations(example)

    def _demo_prefix(self) -> str:
        parts = []
        for d in self.demos:
            parts.append(self.task.prompt(d) + self._continuations(d)[int(d["label"])])
        return "".join(p + "\n\n" for p in parts)

    def _encode(self, examples: list[dict]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Prompt ids (without the demonstrations, which are scored as one shared prefix) and continuation ids."""
        tok = self.tokenizer
        prompts, conts = [], []
        for e in examples:
            ids = tok(self.task.prompt(e), add_special_tokens=False)["input_ids"]
            c = [tok(s, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for s in self._continuations(e)]
            keep = self.max_length - len(self._prefix_ids) - max(len(x) for x in c)
            if keep < 1:
                raise RetriktError(f"max_length={self.max_length} leaves no room for an example after "
                                   f"{len(self._prefix_ids)} demonstration tokens and a {max(map(len, c))}-token "
                                   "continuation: use fewer demonstrations or a larger max_length")
            prompts.append(ids[-keep:])  # keep the end: it holds the question and the answer cue
            conts.append(c)
        return prompts, conts

    def tokenize(self, examples: list[dict]) -> dict:
        prompts, conts = self._encode(examples)
        return {"prompts": prompts, "conts": conts}

    def forward(self, batch: dict) -> torch.Tensor:
        """Per-label log-likelihood scores [b, num_labels] (differentiable)."""
        return self._scores(batch["prompts"], batch["conts"], batch.get("past"))

    def _scores(self, prompts, conts, past=None) -> torch.Tensor:
        if all(len(c) == 1 for cs in conts for c in cs):
            return self._single_token_scores(prompts, conts, past)
        return self._sequence_scores(prompts, conts, past)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding: every row ends at the last position, so the head only needs the last few positions."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, n - len(s):] = torch.tensor(s)
            mask[i, n - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _last_logits(self, seqs: list[list[int]], keep: int, past) -> torch.Tensor:
        """Logits of the last ``keep`` positions [b, keep, vocab] of left-padded ``seqs``, after the demonstrations
        (their KV cache ``past``, or their ids prepended when there is none). Explicit position ids keep padded rows
        exact; full logits would be batch x length x vocab (150k for Qwen), about 1 GB a batch kept for backward."""
        offset = len(self._prefix_ids)
        if past is None and offset:
            seqs = [self._prefix_ids + s for s in seqs]
        ids, mask = self._pad(seqs)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        if past is not None:
            pos = pos + offset
            mask = torch.cat([torch.ones(len(seqs), offset, dtype=mask.dtype, device=mask.device), mask], 1)

        def kw():  # a fresh cache copy per call: a forward pass appends to it
            return {} if past is None else {_cache_kwarg(self.model): _expand_cache(past, len(seqs)), "use_cache": True}
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, **kw())
        except TypeError:  # a model without logits_to_keep
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw())
        return out.logits[:, -keep:]

    def _single_token_scores(self, prompts, conts, past=None) -> torch.Tensor:
        """One forward pass per example, the LM head on its last position only."""
        logp = self._last_logits(prompts, 1, past)[:, -1].float().log_softmax(-1)
        idx = torch.tensor([[c[0] for c in cs] for cs in conts], device=logp.device)
        return logp.gather(1, idx)

    def _sequence_scores(self, prompts, conts, past=None) -> torch.Tensor:
        """One sequence per (example, continuation); the head runs on the continuation positions only."""
        seqs = [p + c for p, cs in zip(prompts, conts) for c in cs]
        lens = [len(c) for cs in conts for c in cs]
        keep = max(lens) + 1
        logits = self._last_logits(seqs, keep, past).float()
        # row i's continuation fills its last n positions; position q predicts token q + 1
        scores = []
        for i, (s, n) in enumerate(zip(seqs, lens)):
            tgt = torch.tensor(s[-n:], device=logits.device)
            lp = logits[i, keep - n - 1:keep - 1].log_softmax(-1).gather(1, tgt[:, None]).sum()
            scores.append(lp / n if self.length_norm else lp)
        return torch.stack(scores).view(len(prompts), -1)

    @torch.no_grad()
    def demo_cache(self):
        """KV cache of the demonstrations (None without demonstrations): computed once, shared by every batch."""
        if not self._prefix_ids:
            return None
        ids = torch.tensor([self._prefix_ids], device=self.device)
        return _output_cache(self.model(input_ids=ids, use_cache=True))

    def label_prior(self) -> np.ndarray:
        """The label distribution the LM gives content-free inputs (with the same demonstrations): its bias.

        A raw zero-shot qwen-0.5b puts 0.89 on " negative" for "N/A" and answers negative for 871 of 872 SST-2
        validation sentences; dividing by this prior is Zhao et al.'s contextual calibration. Multiple-choice
        tasks score the example's own choices, so there is no fixed label to be biased towards: uniform prior.
        """
        if self._prior is None:
            n = self.task.num_labels
            if self.calibrate == "none" or not calibration_applies(self.task):
                self._prior = np.full(n, 1.0 / n)
            elif self.calibrate == "batch":
                self._prior = self._batch_prior()
            else:
                fillers = [dict({f: x for f in self.task.text_fields}, label=0) for x in CONTENT_FREE]
                self._prior = self._raw_proba(fillers, len(fillers)).mean(0)
                logger.info("%s label prior on content-free inputs: %s", self.task.name, self._prior.round(3))
        return self._prior

    def _batch_prior(self) -> np.ndarray:
        """Batch calibration (Zhou et al., ICLR 2024), aimed at the task's label mix: the LM's bias is the mean
        label distribution it gives real task inputs. Dividing by it alone would push predictions to uniform labels,
        wrong for CB (6% neutral) or CoLA (70% acceptable), so the bias is divided by ``label_mix`` first: the
        calibrated prediction of an average input is then that mix. Content-free inputs miss the bias of real
        ones: calibrated that way, qwen-1.5b called 2-6 of 300 CoLA sentences unacceptable (gold: 103)."""
        n = self.task.num_labels
        mix = self.label_mix if self.label_mix is not None else np.full(n, 1.0 / n)
        bias = self._raw_proba(self.calibration_inputs, 8).mean(0)
        prior = bias / np.clip(mix, 1e-3, None)
        logger.info("%s label bias on %d task inputs: %s (label mix %s)", self.task.name,
                    len(self.calibration_inputs), bias.round(3), mix.round(3))
        return prior / prior.sum()

    def reset_prior(self) -> None:
        """Forget the cached calibration prior and answer states (after the model's weights change, e.g. training)."""
        self._prior = None
        if self._states is not None:
            self._states = {}

    def keep_answer_states(self, on: bool = True) -> None:
        """From now on, keep each scored example's answer state, so :meth:`answer_states` on the same examples
        (a store's teacher keys, right after its labelling) costs no second pass. Single-token verbalisers only:
        there the scoring pass ends at the answer position; with longer continuations it does not."""
        self._states = {} if on else None

    @contextlib.contextmanager
    def _head_inputs(self):
        """The LM head's input at the last position of each forward pass, appended to the yielded list."""
        captured: list[torch.Tensor] = []
        hook = self.model.get_output_embeddings().register_forward_pre_hook(
            lambda _m, args: captured.append(args[0][:, -1].float().cpu()))
        try:
            yield captured
        finally:
            hook.remove()

    @torch.no_grad()
    def predict_proba(self, examples: list[dict], batch_size: int = 8) -> np.ndarray:
        """Label probabilities [n, num_labels]; with ``calibrate="content-free"`` divided by the label prior."""
        probs = self._raw_proba(examples, batch_size)
        if self.calibrate == "none" or not len(probs):
            return probs
        q = probs / np.clip(self.label_prior(), 1e-12, None)
        return q / q.sum(1, keepdims=True)

    @torch.no_grad()
    def _raw_proba(self, examples: list[dict], batch_size: int = 8) -> np.ndarray:
        self.eval()
        if not examples:
            return np.zeros((0, self.task.num_labels))
        prompts, conts = self._encode(examples)
        lengths = [len(p) + max(map(len, c)) for p, c in zip(prompts, conts)]
        past = self.demo_cache()
        out = torch.empty((len(examples), self.task.num_labels))
        keep = self._states is not None and all(len(c) == 1 for cs in conts for c in cs)
        with self._head_inputs() if keep else contextlib.nullcontext([]) as captured:
            for idx in progress(length_batches(lengths, batch_size), desc=f"score {self.task.name}", leave=False):
                captured.clear()
                scores = self._scores([prompts[i] for i in idx], [conts[i] for i in idx], past)
                out[idx] = scores.softmax(-1).cpu()
                for j, i in enumerate(idx if keep else ()):
                    self._states[tuple(prompts[i])] = captured[-1][j].numpy()
        return out.numpy()

    @torch.no_grad()
    def answer_states(self, examples: list[dict], batch_size: int = 8) -> np.ndarray:
        """The LM's final hidden state at each example's answer position (what its head turns into the label
        scores), float32 [n, hidden]: task-aware keys for a store. One forward pass per example, as scoring, except
        for examples whose state was kept while scoring them (:meth:`keep_answer_states`)."""
        self.eval()
        out = np.zeros((len(examples), self.model.config.hidden_size), np.float32)
        if not examples:
            return out
        prompts, _ = self._encode(examples)
        kept = self._states or {}
        todo = [i for i, p in enumerate(prompts) if tuple(p) not in kept]
        for i in set(range(len(prompts))) - set(todo):
            out[i] = kept[tuple(prompts[i])]
        if self._states is not None:
            logger.info("answer states: %d of %d kept from scoring, %d computed", len(prompts) - len(todo),
                        len(prompts), len(todo))
        past = self.demo_cache() if todo else None
        # the head's input is the hidden state (after the final norm) at the positions it is asked for
        with self._head_inputs() as captured:
            for b in progress(length_batches([len(prompts[i]) for i in todo], batch_size),
                              desc=f"keys {self.task.name}", leave=False):
                idx = [todo[j] for j in b]
                captured.clear()
                self._last_logits([prompts[i] for i in idx], 1, past)
                out[idx] = captured[-1].numpy()
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        """``student.json`` (kind lm, demonstrations, calibration) plus the LM's adapter in PEFT format: the model's
        own (a PEFT-wrapped student) or the folder of the adapter merged into it (``adapter_dir``, adapted teacher).
        A bare LM saves no weights: the base name in ``meta`` is all it needs."""
        import shutil

        from retrikt.io import atomic_write_json
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        adapter = None
        if hasattr(self.model, "peft_config"):
            from retrikt.init.adapters import save_adapter
            adapter = save_adapter(self.model, folder / "adapter", task=self.task.name)
        elif getattr(self, "adapter_dir", None):
            adapter = folder / "adapter"
            shutil.copytree(self.adapter_dir, adapter, dirs_exist_ok=True)
        atomic_write_json(folder / "student.json", {
            "kind": "lm", "task": self.task.name, "max_length": self.max_length, "length_norm": self.length_norm,
            "calibrate": self.calibrate, "demos": self.demos, "adapter": adapter is not None, **(meta or {})})


def load_lm_student(folder: str | Path, task, base: str | None = None, device=None) -> LMClassifier:
    """Reload an LM student written by :meth:`LMClassifier.save` (its adapter merged into the base model)."""
    import json

    from retrikt import models
    folder = Path(folder)
    info = json.loads((folder / "student.json").read_text(encoding="utf-8"))
    if info.get("task") not in (None, task.name):
        raise RetriktError(f"{folder}: a {info['task']} student cannot score {task.name}")
    model, tok = models.load_causal_lm(base or info["base"], device=device)
    if info.get("adapter"):
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(folder / "adapter")).merge_and_unload()
    return LMClassifier(model.eval(), tok, task, demos=info.get("demos"), max_length=info["max_length"],
                        length_norm=info.get("length_norm"), calibrate=info.get("calibrate", "none"))


def length_batches(lengths: list[int], batch_size: int, slack: float = 0.25) -> list[list[int]]:
    """Indices grouped into batches of similar length: sorted by length, a batch closes when full or when the next
    example is more than ``slack`` longer than its first, so padding wastes at most about that share of a batch's
    compute (12 CB examples of 30-250 tokens in one batch ran at 0.6x the speed of batches of 4)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[i] <= (1 + slack) * lengths[batches[-1][0]] + 2:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, then goes in 5.40)."""
    import inspect
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _output_cache(out):
    """The KV cache a forward pass returned, under the name this transformers version gives it (see _cache_kwarg)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _expand_cache(past, batch: int):
    """A fresh copy of the one-row demonstration cache repeated to ``batch`` rows (a forward pass appends to it)."""
    cache = copy.deepcopy(past)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    return cache
