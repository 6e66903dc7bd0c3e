"""Encoder students: a small encoder + mean pooling + a linear head (classification or regression).

Mean pooling rather than the [CLS] pooler because sentence-transformers encoders such as all-MiniLM-L6-v2 were
trained with mean pooling; the same pooled vector is what the retrieval student projects into the store's key space.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from retrikt.progress import progress

from retrikt.io import RetriktError, atomic_write_json

logger = logging.getLogger(__name__)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class EncoderClassifier(nn.Module):
    """``encoder`` (any HF encoder, possibly PEFT-wrapped) -> mean pool -> dropout -> linear head."""

    def __init__(self, encoder: nn.Module, tokenizer, task, max_length: int = 256, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.tokenizer, self.task = encoder, tokenizer, task
        self.max_length = max_length
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1 if task.is_regression else task.num_labels)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [self.task.text_pair(e) for e in examples]
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs] if all(p[1] is not None for p in pairs) else None
        enc = self.tokenizer(a, b, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(**batch)
        return mean_pool(out.last_hidden_state, batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [b, num_labels] (or [b] regression scores)."""
        logits = self.head(self.dropout(self.embed(batch)))
        return logits.squeeze(-1) if self.task.is_regression else logits

    @torch.no_grad()
    def predict_proba(self, examples: list[dict], batch_size: int = 32) -> np.ndarray:
        self.eval()
        outs = []
        for i in progress(range(0, len(examples), batch_size), desc="predict", leave=False):
            logits = self(self.tokenize(examples[i:i + batch_size]))
            outs.append(logits.float() if self.task.is_regression else logits.float().softmax(-1))
        return torch.cat(outs).cpu().numpy() if outs else np.zeros((0, self.task.num_labels))

    @torch.no_grad()
    def encode(self, examples: list[dict], batch_size: int = 32) -> np.ndarray:
        """Mean-pooled sentence embeddings of the examples' text pairs (L2-normalised)."""
        self.eval()
        outs = [nn.functional.normalize(self.embed(self.tokenize(examples[i:i + batch_size])), dim=-1)
                for i in range(0, len(examples), batch_size)]
        return torch.cat(outs).float().cpu().numpy()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        """Encoder via save_pretrained (a PEFT adapter folder when it is PEFT-wrapped), head as safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(self.encoder, "retrikt_init"):  # seeded PEFT module: PEFT format plus its init record
            from retrikt.init.adapters import save_adapter
            save_adapter(self.encoder, folder / "encoder", task=self.task.name)
        else:
            self.encoder.save_pretrained(folder / "encoder")
        self.tokenizer.save_pretrained(folder / "encoder")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / "head.safetensors"))
        atomic_write_json(folder / "student.json", {"task": self.task.name, "max_length": self.max_length,
                                                   "peft": hasattr(self.encoder, "peft_config"), **(meta or {})})

    def load_head(self, folder: str | Path) -> None:
        path = Path(folder) / "head.safetensors"
        if not path.exists():
            raise RetriktError(f"{path}: missing (not a saved retrikt encoder student)")
        self.head.load_state_dict(load_file(str(path)))


def load_student(folder: str | Path, task, base: str | None = None, device: str | None = None) -> EncoderClassifier:
    """Reload a student written by :meth:`EncoderClassifier.save`."""
    from retrikt import models
    folder = Path(folder)
    info_path = folder / "student.json"
    if not info_path.exists():
        raise RetriktError(f"{folder}: no student.json (not a saved retrikt student)")
    info = json.loads(info_path.read_text())
    if info.get("peft"):
        from peft import PeftModel
        encoder, tok = models.load_encoder(base or info["base"], device=device)
        encoder = PeftModel.from_pretrained(encoder, str(folder / "encoder"))
    else:
        encoder, tok = models.load_encoder(str(folder / "encoder"), device=device)
    student = EncoderClassifier(encoder, tok, task, max_length=info.get("max_length", 256))
    student.load_head(folder)
    return student.to(next(encoder.parameters()).device)
