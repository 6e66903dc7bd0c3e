"""A causal LM used as a classifier: score each label's verbaliser (or each choice) by log-likelihood.

This is how the teacher is scored (zero-shot, or few-shot with in-context demonstrations), how generated store
samples are labelled, and how causal-LM students (e.g. qwen-0.5b with a LoRA) are trained and scored. ``forward``
returns per-label log-likelihood scores with gradients, so the shared trainer's cross-entropy over them trains the
adapter on the answer tokens only.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retrikt.io import RetriktError

logger = logging.getLogger(__name__)


# Content-free inputs of "Calibrate Before Use" (Zhao et al., ICML 2021): every text field set to each filler.
CONTENT_FREE = ("N/A", "", "[MASK]")
CALIBRATIONS = ("none", "content-free")


def calibration_applies(task) -> bool:
    """Multiple-choice tasks score each example's own choices: no fixed label to be biased towards."""
    return task.kind != "multiple_choice"


class LMClassifier(nn.Module):
    def __init__(self, model, tokenizer, task, demos: list[dict] | None = None, max_length: int = 1024,
                 length_norm: bool | None = None, calibrate: str = "none"):
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
        if calibrate not in CALIBRATIONS:
            raise RetriktError(f"unknown calibration {calibrate!r}; choose one of {', '.join(CALIBRATIONS)}")
        self.calibrate = calibrate
        self._prior: np.ndarray | None = None

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
        tok = self.tokenizer
        prompts, conts = [], []
        for e in examples:
            ids = tok(self._prefix + self.task.prompt(e), add_special_tokens=False)["input_ids"]
            c = [tok(s, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for s in self._continuations(e)]
            keep = self.max_length - max(len(x) for x in c)
            prompts.append(ids[-keep:])  # keep the end: it holds the question and the answer cue
            conts.append(c)
        return prompts, conts

    def tokenize(self, examples: list[dict]) -> dict:
        prompts, conts = self._encode(examples)
        return {"prompts": prompts, "conts": conts}

    def forward(self, batch: dict) -> torch.Tensor:
        """Per-label log-likelihood scores [b, num_labels] (differentiable)."""
        prompts, conts = batch["prompts"], batch["conts"]
        if all(len(c) == 1 for cs in conts for c in cs):
            return self._single_token_scores(prompts, conts)
        return self._sequence_scores(prompts, conts)

    def _pad(self, seqs: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # Right padding (default): positions stay 0..len-1 without passing position_ids.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            span = slice(n - len(s), n) if left else slice(0, len(s))
            ids[i, span] = torch.tensor(s)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _single_token_scores(self, prompts, conts) -> torch.Tensor:
        # Left padding puts every row's last token at -1, so the LM head runs on that position only
        # (logits_to_keep=1): full logits are batch x length x vocab (150k for Qwen), about 1 GB a batch kept
        # for backward. Explicit position ids keep padded rows exact for absolute-position models too.
        ids, mask = self._pad(prompts, left=True)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
        except TypeError:  # a model without logits_to_keep
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        logp = logits[:, -1].float().log_softmax(-1)
        idx = torch.tensor([[c[0] for c in cs] for cs in conts], device=ids.device)
        return logp.gather(1, idx)

    def _sequence_scores(self, prompts, conts) -> torch.Tensor:
        seqs, spans = [], []
        for p, cs in zip(prompts, conts):
            for c in cs:
                seqs.append(p + c)
                spans.append((len(p), len(c)))
        ids, mask = self._pad(seqs)
        logp = self.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        scores = []
        for i, (start, n) in enumerate(spans):
            tgt = ids[i, start:start + n]
            s = logp[i, start - 1:start - 1 + n].gather(1, tgt[:, None]).sum()
            scores.append(s / n if self.length_norm else s)
        return torch.stack(scores).view(len(prompts), -1)

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
            else:
                fillers = [dict({f: x for f in self.task.text_fields}, label=0) for x in CONTENT_FREE]
                self._prior = self._raw_proba(fillers, len(fillers)).mean(0)
                logger.info("%s label prior on content-free inputs: %s", self.task.name, self._prior.round(3))
        return self._prior

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
        # Batch examples of similar length: padding to the longest in a batch otherwise costs up to 2x on CPU.
        prompts, conts = self._encode(examples)
        order = sorted(range(len(examples)), key=lambda i: len(prompts[i]) + max(map(len, conts[i])))
        out = torch.empty((len(examples), self.task.num_labels))
        for s in tqdm(range(0, len(order), batch_size), desc=f"score {self.task.name}", leave=False, disable=None):
            idx = order[s:s + batch_size]
            out[idx] = self({"prompts": [prompts[i] for i in idx], "conts": [conts[i] for i in idx]}).softmax(-1).cpu()
        return out.numpy()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
