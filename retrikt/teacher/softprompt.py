"""A frozen causal LM steered by a trainable soft prompt (Lester et al. 2021), the generator of RetriKT.

The prompt is our own ``nn.Parameter`` [n_virtual, hidden] rather than a ``peft.PeftModel`` because PEFT's prompt
tuning ignores ``position_ids``: with left padding its virtual tokens sit before the pads and every padded row is
shifted, so batched log-probs differ from unbatched ones; PPO also needs a frozen reference prompt and the last hidden
states beside the log-probs from one forward pass. On disk it is still PEFT's prompt-tuning format
(``adapter_config.json`` + ``adapter_model.safetensors`` holding ``prompt_embeddings``), loadable with
``PeftModel.from_pretrained``.

Layout of every sequence: ``[prompt][left pads][condition][response][right pads]`` with position ids counted over
real tokens only, so padding never changes a row's numbers. PEFT uses the same prompt-first order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from retrikt.config import arg
from retrikt.progress import progress
from retrikt.teacher.sampling import sample
from retrikt.io import (RetriktError, atomic_path, atomic_write_json, folder_lock, read_manifest, write_manifest)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PROMPTS = ("policy", "reference", "none")  # trained prompt, frozen KL reference, bare LM
DEFAULT_INIT_TEXT = "Write a new labelled example of the task, in the same format as the training examples."


@dataclass
class SoftPromptConfig:
    lr: float = arg(0.03, help="AdamW learning rate of the prompt. Lester et al. 2021 used 0.3 (Adafactor, T5); on "
                                "SmolLM2-135M 0.03 fitted best of 0.003/0.03/0.3 (0.3 blew the prompt up to 10x the "
                                "token scale). Scale it with the embedding RMS: Qwen2.5's is 8x smaller, so ~4e-3")
    epochs: int = arg(20, help="passes over the labelled few-shot pairs")
    batch_size: int = arg(8, help="pairs per optimiser step")
    micro_batch_size: int = arg(2, help="pairs per forward/backward, gradients accumulated over the step (the same "
                                        "gradient; activation memory of a 0.5B teacher at 8 pairs peaked near 11 GiB)")
    weight_decay: float = arg(1e-5, help="AdamW weight decay; 1e-5 as in Lester et al. 2021")
    grad_clip: float = arg(1.0, help="max L2 norm of the prompt gradient (0 disables)")
    max_length: int = arg(256, help="condition + target tokens kept per pair (the target is cut first)")
    append_eos: bool = arg(True, help="end each target with EOS so that generation learns to stop")
    seed: int = arg(0, help="seed of the pair shuffling")


@dataclass
class ResponseBatch:
    """Token ids of conditions (left-padded) and responses (right-padded); 0/1 masks of the same shapes."""
    cond_ids: torch.Tensor
    cond_mask: torch.Tensor
    resp_ids: torch.Tensor
    resp_mask: torch.Tensor

    def select(self, idx: torch.Tensor | list[int]) -> ResponseBatch:
        return ResponseBatch(*(t[idx] for t in dataclasses.astuple(self)))

    def __len__(self) -> int:
        return self.cond_ids.shape[0]


class SoftPromptGenerator(torch.nn.Module):
    """Frozen causal LM + trainable prompt embeddings prepended through ``inputs_embeds``."""

    def __init__(self, model, tokenizer, n_virtual: int = 20, init_text: str = DEFAULT_INIT_TEXT):
        super().__init__()
        if n_virtual < 1:
            raise RetriktError(f"n_virtual must be >= 1, got {n_virtual}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.init_text = init_text
        # "compact": retrikt.teacher.sampling (finished rows leave the batch, shared prefixes prefilled once);
        # "hf": model.generate, every row runs to the batch's longest
        self.sampler = "compact"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise RetriktError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RetriktError(f"init_text {init_text!r} gives no tokens")
        ids = (ids * math.ceil(n_virtual / len(ids)))[:n_virtual]
        with torch.no_grad():
            init = self.embed_tokens(torch.tensor(ids, device=self.device)).float().clone()
        # fp32 whatever the LM dtype: Adam updates of a bf16 prompt round away
        self.prompt = torch.nn.Parameter(init)
        self.register_buffer("reference_prompt", init.clone(), persistent=False)

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def n_virtual(self) -> int:
        return self.prompt.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.prompt.shape[1]

    def embedding_rms(self) -> float:
        """RMS of the LM's token embeddings: the scale a prompt learning rate should be judged against."""
        with torch.no_grad():
            return self.model.get_input_embeddings().weight.float().pow(2).mean().sqrt().item()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def snapshot_reference(self) -> None:
        """Freeze the current prompt as the reference of the KL penalty (PPO calls it on the supervised prompt)."""
        with torch.no_grad():
            self.reference_prompt.copy_(self.prompt)

    def _tokenize(self, text: str, is_condition: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if is_condition and bos is not None and getattr(self.tokenizer, "add_bos_token", False):
            ids = [bos] + ids
        return ids

    def encode(self, conditions: list[str], responses: list[list[int]] | list[str]) -> ResponseBatch:
        """Pad conditions on the left and responses (token ids, or text to tokenize) on the right."""
        if len(conditions) != len(responses):
            raise RetriktError(f"{len(conditions)} conditions but {len(responses)} responses")
        conds = [self._tokenize(c, True) for c in conditions]
        resps = [self._tokenize(r, False) if isinstance(r, str) else list(r) for r in responses]
        if any(len(r) == 0 for r in resps):
            raise RetriktError("a response has no tokens; every sample needs at least one")
        lc, lr = max(len(c) for c in conds), max(len(r) for r in resps)
        cond_ids = torch.full((len(conds), lc), self.pad_id, dtype=torch.long)
        cond_mask = torch.zeros((len(conds), lc), dtype=torch.long)
        resp_ids = torch.full((len(resps), lr), self.pad_id, dtype=torch.long)
        resp_mask = torch.zeros((len(resps), lr), dtype=torch.long)
        for i, (c, r) in enumerate(zip(conds, resps)):
            if c:
                cond_ids[i, lc - len(c):], cond_mask[i, lc - len(c):] = torch.tensor(c), 1
            resp_ids[i, :len(r)], resp_mask[i, :len(r)] = torch.tensor(r), 1
        return ResponseBatch(*(t.to(self.device) for t in (cond_ids, cond_mask, resp_ids, resp_mask)))

    def _prefix(self, ids: torch.Tensor, mask: torch.Tensor, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and mask of [prompt][ids]; ``prompt`` is 'policy', 'reference' or 'none'."""
        if prompt not in PROMPTS:
            raise RetriktError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        emb = self.embed_tokens(ids)
        if prompt == "none":
            return emb, mask
        p = {"policy": self.prompt, "reference": self.reference_prompt}[prompt]
        p = p.to(emb.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        ones = torch.ones(ids.shape[0], self.n_virtual, dtype=mask.dtype, device=mask.device)
        return torch.cat([p, emb], 1), torch.cat([ones, mask], 1)

    # ----------------------------------------------------------------- scoring
    def response_forward(self, batch: ResponseBatch, prompt: str = "policy",
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token log-probs [B, T] and entropies [B, T] of the responses, and the fp32 last hidden states
        [B, T, H] at the positions that predict them (for a value head). Zero where ``resp_mask`` is 0."""
        ids = torch.cat([batch.cond_ids, batch.resp_ids], 1)
        mask = torch.cat([batch.cond_mask, batch.resp_mask], 1)
        emb, full_mask = self._prefix(ids, mask, prompt)
        position_ids = (full_mask.cumsum(1) - 1).clamp(min=0)
        body = self.model.get_decoder()
        hidden = body(inputs_embeds=emb, attention_mask=full_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
        t = batch.resp_ids.shape[1]
        h = hidden[:, -t - 1:-1]  # position i predicts token i + 1
        logits = self.model.get_output_embeddings()(h).float() / max(temperature, 1e-6)
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, batch.resp_ids.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        m = batch.resp_mask.to(logp.dtype)
        return logp * m, entropy * m, h.float()

    def sequence_logprobs(self, conditions: list[str], generated_token_ids: list[list[int]],
                          prompt: str = "policy", temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs [B, T] (differentiable w.r.t. the prompt for 'policy') and the mask [B, T].

        ``prompt='reference'`` scores under the frozen reference prompt (KL penalty), ``'none'`` under the bare LM
        (fluency)."""
        batch = self.encode(conditions, generated_token_ids)
        ctx = torch.no_grad() if prompt != "policy" else contextlib.nullcontext()
        with ctx:
            logp, _, _ = self.response_forward(batch, prompt=prompt, temperature=temperature)
        return logp, batch.resp_mask

    # ----------------------------------------------------------------- supervised
    def _pair_tokens(self, condition: str, target: str, cfg: SoftPromptConfig) -> tuple[str, list[int]]:
        t = self._tokenize(target, False)
        if cfg.append_eos and self.tokenizer.eos_token_id is not None:
            t = t + [self.tokenizer.eos_token_id]
        room = cfg.max_length - len(self._tokenize(condition, True))
        if room < 1:
            raise RetriktError(f"condition {condition[:60]!r} alone exceeds max_length={cfg.max_length} tokens")
        return condition, t[:room]

    def train_supervised(self, pairs: list[tuple[str, str]], cfg: SoftPromptConfig | None = None) -> list[dict]:
        """Tune the prompt on (condition, target) pairs; the loss is the mean NLL of the target tokens only.

        Returns the loss curve, one record per optimiser step."""
        cfg = cfg or SoftPromptConfig()
        if not pairs:
            raise RetriktError("train_supervised got no (condition, target) pairs")
        data = [self._pair_tokens(c, t, cfg) for c, t in pairs]
        opt = torch.optim.AdamW([self.prompt], lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = random.Random(cfg.seed)
        steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
        log: list[dict] = []
        bar = progress(total=cfg.epochs * steps_per_epoch, desc="soft prompt")
        for epoch in range(cfg.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            for s in range(steps_per_epoch):
                chunk = [data[i] for i in order[s * cfg.batch_size:(s + 1) * cfg.batch_size]]
                loss, gnorm = self._supervised_step(chunk, opt, cfg)
                log.append({"epoch": epoch, "step": len(log), "loss": loss, "grad_norm": gnorm, "lr": cfg.lr})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        logger.info("soft prompt: loss %.4f -> %.4f over %d steps", log[0]["loss"], log[-1]["loss"], len(log))
        return log

    def _supervised_step(self, chunk, opt, cfg: SoftPromptConfig) -> tuple[float, float]:
        """One step on the mean target-token NLL of ``chunk``, accumulated over micro-batches."""
        size = cfg.micro_batch_size if 0 < cfg.micro_batch_size < len(chunk) else len(chunk)
        parts = [self.encode([c for c, _ in chunk[i:i + size]], [t for _, t in chunk[i:i + size]])
                 for i in range(0, len(chunk), size)]
        n_tokens = sum(float(b.resp_mask.sum()) for b in parts)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for batch in parts:
            logp, _, _ = self.response_forward(batch)
            loss = -logp.sum() / n_tokens
            loss.backward()
            total += loss.item()
        gnorm = torch.nn.utils.clip_grad_norm_([self.prompt], cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        return total, float(gnorm)

    # ----------------------------------------------------------------- generation
    def _generation_config(self, max_new_tokens: int, temperature: float, top_p: float,
                           max_time: float | None) -> GenerationConfig:
        # every sampling knob is set so the model's own generation_config (repetition penalty, top_k...) cannot
        # leak in: PPO assumes tokens were drawn from softmax(logits / temperature)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, typical_p=1.0) \
            if temperature > 0 else dict(do_sample=False)
        return GenerationConfig(
            max_new_tokens=max_new_tokens, repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1,
            max_time=max_time, pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id, use_cache=True,
            **sampling)

    @torch.no_grad()
    def generate(self, conditions: list[str], n_per_condition: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
                 max_time: float | None = None, prompt: str = "policy") -> list[dict]:
        """Sample ``n_per_condition`` continuations of each condition under the prompt.

        Batched with left padding and the KV cache; deterministic for a ``seed`` and ``batch_size``.
        ``max_time`` caps each batch's wall-clock seconds (samples cut by it have ``finished`` False).
        Returns dicts ``condition``, ``text`` (special tokens dropped), ``tokens`` (ids, with the EOS if emitted),
        ``finished`` (ended with EOS)."""
        rows = [c for c in conditions for _ in range(n_per_condition)]
        gcfg = self._generation_config(max_new_tokens, temperature, top_p, max_time)
        out: list[dict] = []
        batches = range(0, len(rows), batch_size)
        for b, start in enumerate(progress(batches, desc="generate", disable=len(batches) < 2)):
            conds = rows[start:start + batch_size]
            with _seeded(seed * 1_000_003 + b, self.device):
                new = self._generate_batch(conds, gcfg, prompt)
            out.extend(self._to_samples(conds, new))
        return out

    def _generate_batch(self, conds: list[str], gcfg: GenerationConfig, prompt: str) -> torch.Tensor:
        dummy = [[self.pad_id]] * len(conds)
        batch = self.encode(conds, dummy)
        emb, mask = self._prefix(batch.cond_ids, batch.cond_mask, prompt)
        if self.sampler == "compact" and not gcfg.min_new_tokens:
            groups = {c: i for i, c in enumerate(dict.fromkeys(conds))}
            return sample(self.model, emb, mask, max_new_tokens=gcfg.max_new_tokens, eos_id=gcfg.eos_token_id,
                          pad_id=self.pad_id, temperature=gcfg.temperature if gcfg.do_sample else 0.0,
                          top_p=gcfg.top_p if gcfg.do_sample else 1.0, max_time=gcfg.max_time,
                          groups=[groups[c] for c in conds])
        out = self.model.generate(inputs_embeds=emb, attention_mask=mask, generation_config=gcfg)
        # decoder-only generate(inputs_embeds=...) returns only the new tokens
        return out.cpu()

    def _to_samples(self, conds: list[str], new: torch.Tensor) -> list[dict]:
        eos = self.tokenizer.eos_token_id
        samples = []
        for c, row in zip(conds, new.tolist()):
            finished = eos is not None and eos in row
            toks = row[:row.index(eos) + 1] if finished else row
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            samples.append({"condition": c, "text": text, "tokens": toks, "finished": finished})
        return samples

    # ----------------------------------------------------------------- disk
    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        """Write a PEFT prompt-tuning adapter folder plus ``manifest.json``."""
        from peft import PromptTuningConfig
        folder = Path(folder)
        cfg = self.model.config
        tok_name = getattr(self.tokenizer, "name_or_path", "") or ""
        # PEFT re-tokenizes init_text when loading with is_trainable=True, so TEXT needs a loadable tokenizer
        init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": self.init_text,
                "tokenizer_name_or_path": tok_name} if tok_name else {"prompt_tuning_init": "RANDOM"}
        pcfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.n_virtual,
                                  token_dim=self.hidden_size, num_transformer_submodules=1,
                                  num_attention_heads=cfg.num_attention_heads, num_layers=cfg.num_hidden_layers,
                                  base_model_name_or_path=getattr(cfg, "_name_or_path", None) or None, **init)
        with folder_lock(folder):
            atomic_write_json(folder / CONFIG, pcfg.to_dict())
            with atomic_path(folder / WEIGHTS) as tmp:
                save_file({"prompt_embeddings": self.prompt.detach().float().cpu().contiguous()}, str(tmp))
            write_manifest(folder, {"schema_version": SCHEMA_VERSION, "kind": "soft_prompt",
                                    "init_text": self.init_text, "n_virtual": self.n_virtual, **(meta or {})},
                           [CONFIG, WEIGHTS])
        logger.info("saved soft prompt (%d x %d) to %s", self.n_virtual, self.hidden_size, folder)

    @classmethod
    def load(cls, folder: str | Path, model, tokenizer) -> SoftPromptGenerator:
        """Load a prompt saved by :meth:`save` (or any PEFT prompt-tuning folder) onto ``model``."""
        folder = Path(folder)
        manifest = read_manifest(folder) if (folder / "manifest.json").exists() else {}
        if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
            raise RetriktError(f"{folder}: not a prompt-tuning adapter (needs {CONFIG} and {WEIGHTS})")
        pcfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if pcfg.get("peft_type") != "PROMPT_TUNING":
            raise RetriktError(f"{folder / CONFIG}: peft_type is {pcfg.get('peft_type')!r}, expected PROMPT_TUNING")
        weights = load_file(str(folder / WEIGHTS)).get("prompt_embeddings")
        hidden = model.get_input_embeddings().weight.shape[1]
        if weights is None or weights.ndim != 2 or weights.shape[1] != hidden:
            shape = None if weights is None else tuple(weights.shape)
            raise RetriktError(f"{folder / WEIGHTS}: prompt_embeddings of shape {shape} do not fit a model "
                               f"with hidden size {hidden}")
        init_text = manifest.get("init_text") or pcfg.get("prompt_tuning_init_text") or DEFAULT_INIT_TEXT
        gen = cls(model, tokenizer, n_virtual=weights.shape[0], init_text=init_text)
        with torch.no_grad():
            gen.prompt.copy_(weights.to(gen.prompt.device))
        gen.snapshot_reference()
        return gen


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one block without disturbing the caller's random state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
