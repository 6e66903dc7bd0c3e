"""A second host of the same shape for module porting: an encoder after continued masked-LM training on
unlabelled task text (e.g. all-MiniLM-L6-v2 on SST-2 training sentences, labels dropped).

    python -m retrikt.init.hosts --base minilm-l6 --task sst2          # a few hundred steps, minutes on CPU
    python -m retrikt.init.hosts --smoke                               # tiny-encoder, a few steps

all-MiniLM-L6-v2 ships without an MLM head, so a fresh ``BertOnlyMLMHead`` is added with its decoder tied to the
input embeddings (as in BERT). Its first ``head_warmup_steps`` train the head alone, so that the random head's
gradients do not shake the encoder before the head means anything. Only masked positions go through the
30k-word decoder (the loss ignores the rest anyway), which cuts the cost of a step several-fold. Only the encoder
(``BertModel``) is saved, with ``save_pretrained`` and the tokenizer: the folder loads with
``retrikt.models.load_encoder(path)``.

The cache entry (``$RETRIKT_CACHE/hosts/<key>``, else ``~/.cache/retrikt/hosts/<key>``) is named after the base
and task plus a hash of everything that changes the weights; it is written into a temp folder beside it, gets a
manifest, and is renamed into place, so a killed build never leaves half an entry. ``BASE+mlm-TASK`` host names
(e.g. ``minilm-l6+mlm-sst2``) are resolved by :func:`resolve_host`, building the entry on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from retrikt.progress import progress

from retrikt.config import arg, parse_config
from retrikt.io import MANIFEST, RetriktError, folder_lock, read_manifest, write_manifest
from retrikt.logs import setup_logging

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_NOT_IN_KEY = ("cache", "force", "device")   # fields that do not change the weights


@dataclass
class HostConfig:
    """Continued masked-LM training of an encoder on unlabelled task text (BERT's MLM recipe)."""
    base: str = arg("minilm-l6", help="encoder to continue training: short name or folder")
    task: str = arg("sst2", help="task whose training split provides the text (labels are dropped)")
    steps: int = arg(300, help="optimisation steps (a few minutes on a 2-core CPU)")
    batch_size: int = arg(16, help="sentences per step")
    lr: float = arg(1e-4, help="AdamW peak learning rate (BERT pre-training's 1e-4)")
    head_warmup_steps: int = arg(50, help="first steps train only the new MLM head, encoder frozen")
    warmup_ratio: float = arg(0.06, help="share of steps with linear warm-up, then linear decay")
    mask_prob: float = arg(0.15, help="share of tokens chosen for prediction (BERT: 15%; of those 80% [MASK], "
                                      "10% random, 10% kept)")
    max_length: int = arg(64, help="token cap per sentence (SST-2 sentences are short)")
    max_sentences: int = arg(20000, help="sentences drawn (seeded) from the training split")
    seed: int = arg(0, help="seed of the sentence draw, the masks, the head init and the batch order")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ files (default: ../shared/data)")
    cache: str | None = arg(None, help="cache folder (default: $RETRIKT_CACHE/hosts or ~/.cache/retrikt/hosts)")
    device: str = arg("auto", help="auto | cpu | cuda")
    force: bool = arg(False, help="rebuild even when the entry exists")


SMOKE = {"base": "tiny-encoder", "steps": 4, "batch_size": 8, "head_warmup_steps": 1, "max_sentences": 64}


def cache_dir(cfg: HostConfig) -> Path:
    if cfg.cache:
        return Path(cfg.cache).expanduser()
    env = os.environ.get("RETRIKT_CACHE")
    return Path(env).expanduser() / "hosts" if env else Path("~/.cache/retrikt/hosts").expanduser()


def task_texts(cfg: HostConfig) -> list[str]:
    """Up to ``max_sentences`` training texts of ``cfg.task`` (text fields joined), seeded draw, no labels."""
    from retrikt.tasks import get_task, load_split
    task = get_task(cfg.task)
    texts = [" ".join(t for t in task.text_pair(e) if t) for e in load_split(task, "train", data_dir=cfg.data_dir)]
    texts = [t for t in texts if t.strip()]
    random.Random(cfg.seed).shuffle(texts)
    return texts[:cfg.max_sentences]


def host_key(cfg: HostConfig, texts: list[str]) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY and k != "data_dir"}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update(hashlib.sha256("\n".join(texts).encode()).digest())
    base = Path(cfg.base).name if cfg.base.startswith((".", "/", "~")) else cfg.base
    return f"{base}-mlm-{cfg.task}-{h.hexdigest()[:10]}"


def mlm_head(encoder: nn.Module) -> nn.Module:
    """A fresh BERT MLM head, BERT's init (normal(0, initializer_range)), decoder tied to the input embeddings."""
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead
    config = encoder.config
    if config.model_type != "bert":
        raise RetriktError(f"MLM hosts are built from BERT-type encoders (MiniLM); {_name_of(encoder)} is "
                           f"{config.model_type}")
    head = BertOnlyMLMHead(config)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=config.initializer_range)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    head.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias   # one output bias, as BERT ties them
    nn.init.zeros_(head.predictions.bias)
    return head.to(encoder.device)


def _name_of(model: nn.Module) -> str:
    return getattr(model, "name_or_path", "") or type(model).__name__


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, tokenizer, prob: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: (masked input ids, labels with -100 on unchosen positions). ``special`` marks tokens never
    chosen (padding, [CLS], [SEP])."""
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    chosen = (torch.rand(input_ids.shape, generator=gen) < prob) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=gen)
    ids = input_ids.clone()
    ids[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=gen)
    return ids, labels


def _batch(texts: list[str], tokenizer, cfg: HostConfig, gen: torch.Generator, device) -> dict | None:
    enc = tokenizer(texts, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt",
                    return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask").bool() | (enc["attention_mask"] == 0)
    ids, labels = mask_tokens(enc["input_ids"], special, tokenizer, cfg.mask_prob, gen)
    if not (labels != -100).any():
        return None
    enc["input_ids"] = ids
    out = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return dict(out, labels=labels.to(device))


def _length_buckets(texts: list[str], batch_size: int, rng: random.Random, pool: int = 16) -> list[list[str]]:
    """``pool`` random batches' worth of texts, sorted by length and cut into batches (in random order).

    Task sentences vary a lot in length (SST-2: 13 tokens on average, up to 60); batching similar lengths cuts
    the padding, and with it the cost of a step, about three-fold.
    """
    picked = [texts[i] for i in rng.sample(range(len(texts)), min(len(texts), batch_size * pool))]
    picked.sort(key=len)
    batches = [picked[i:i + batch_size] for i in range(0, len(picked), batch_size)]
    rng.shuffle(batches)
    return batches


def mlm_train(encoder: nn.Module, tokenizer, texts: list[str], cfg: HostConfig) -> list[float]:
    """Continue MLM training of ``encoder`` in place on ``texts``; returns the loss of each step."""
    from retrikt.student.trainer import _schedule, seed_everything
    if not texts:
        raise RetriktError(f"no text to train the {cfg.task} host on")
    seed_everything(cfg.seed)
    head, gen, rng = mlm_head(encoder), torch.Generator().manual_seed(cfg.seed), random.Random(cfg.seed)
    params = {id(p): p for p in [*encoder.parameters(), *head.parameters()]}   # the tied decoder once
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.01)
    batches: list[list[str]] = []
    losses, warmup = [], int(cfg.warmup_ratio * cfg.steps)
    encoder.train()
    for step in progress(range(cfg.steps), desc=f"mlm {cfg.task}", leave=False):
        if not batches:
            batches = _length_buckets(texts, cfg.batch_size, rng)
        batch = _batch(batches.pop(), tokenizer, cfg, gen, encoder.device)
        if batch is None:
            continue
        labels = batch.pop("labels")
        frozen = step < cfg.head_warmup_steps
        with torch.set_grad_enabled(not frozen):
            hidden = encoder(**batch).last_hidden_state
        picked = labels != -100
        loss = F.cross_entropy(head(hidden[picked].detach() if frozen else hidden[picked]), labels[picked])
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _schedule(step, cfg.steps, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if frozen:   # the tied decoder is the embedding matrix: keep it, too, until the head has settled
            encoder.embeddings.word_embeddings.weight.grad = None
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0:   # the progress bar is off when not on a terminal
            logger.info("mlm step %d/%d: loss %.3f", step + 1, cfg.steps, sum(losses[-50:]) / len(losses[-50:]))
    encoder.eval()
    return losses


def _entry_ok(folder: Path) -> bool:
    if not (folder / MANIFEST).exists():
        return False
    manifest = read_manifest(folder, verify=False)
    return manifest.get("schema_version") == SCHEMA_VERSION and all(
        (folder / rel).exists() and (folder / rel).stat().st_size == info["bytes"]
        for rel, info in manifest["files"].items())


def _write_entry(final: Path, encoder: nn.Module, tokenizer, meta: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        out = tmp / "model"
        encoder.save_pretrained(out)
        tokenizer.save_pretrained(out)
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        write_manifest(out, meta, files)
        if final.exists():
            os.replace(final, tmp / "old")   # --force: move the old entry aside, deleted with tmp
        os.replace(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_mlm_host(cfg: HostConfig, texts: list[str] | None = None) -> Path:
    """The cached host folder for ``cfg`` (built on first use). ``texts`` overrides the task's training text."""
    from retrikt import models
    from retrikt.dist import rank_device
    texts = task_texts(cfg) if texts is None else list(texts)
    root = cache_dir(cfg)
    final = root / host_key(cfg, texts)
    if not cfg.force and _entry_ok(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root / ".locks" / final.name):
        if not cfg.force and _entry_ok(final):
            return final   # another process finished it while we waited
        for leftover in root.glob(f".{final.name}.tmp-*"):   # from a killed build
            shutil.rmtree(leftover, ignore_errors=True)
        start = time.monotonic()
        encoder, tok = models.load_encoder(cfg.base, device=rank_device(cfg.device))
        losses = mlm_train(encoder, tok, texts, cfg)
        meta = {"schema_version": SCHEMA_VERSION, "kind": "mlm_host", "config": dataclasses.asdict(cfg),
                "texts": len(texts), "texts_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:])), "seconds": time.monotonic() - start}
        _write_entry(final, encoder.cpu(), tok, meta)
        logger.info("built host %s in %.0f s (MLM loss %.3f -> %.3f)", final, meta["seconds"],
                    meta["loss_first"] or 0, meta["loss_last_10"])
    return final


def resolve_host(name: str, **overrides) -> str:
    """``BASE+mlm-TASK`` -> the cached MLM host folder (built with :class:`HostConfig` defaults and ``overrides``);
    any other name or folder is returned unchanged."""
    if "+mlm-" not in str(name):
        return str(name)
    base, task = str(name).split("+mlm-", 1)
    return str(build_mlm_host(HostConfig(base=base, task=task, **overrides)))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        cfg = parse_config(HostConfig, argv, description=__doc__.splitlines()[0], smoke=SMOKE)
        path = build_mlm_host(cfg)
        print(json.dumps({"host": str(path), **read_manifest(path, verify=False)}, indent=2, default=str))
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
