"""Experiment 3 of ``benchmarks.arithmetic`` (see its docstring): unlearning by negation. A LoRA on a causal LM is
trained on negative SST-2 sentences and negated; generations are scored by a sentiment classifier trained here."""
from __future__ import annotations

import math
import random
import re

import torch
import torch.nn.functional as F

from retrikt import models
from retrikt.init.adapters import seeded_peft_model
from retrikt.init.arithmetic import negate
from retrikt.init.portability import peft_config_for
from retrikt.student.encoder import EncoderClassifier
from retrikt.student.trainer import FitConfig, fit, seed_everything
from retrikt.tasks import get_task, load_split

from benchmarks.arithmetic_common import PROMPTS, ArithmeticBench, score, validation


# ---- 3. unlearning by negation -----------------------------------------------------------------------------

def lm_batch(tok, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = tok([t + tok.eos_token for t in texts], return_tensors="pt", padding=True, padding_side="right")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    return ids, mask, ids.masked_fill(mask == 0, -100)


@torch.no_grad()
def mean_nll(model, tok, texts: list[str], batch_size: int, device) -> float:
    """Token-weighted mean negative log-likelihood of ``texts`` (each ended by EOS)."""
    model.eval()
    texts = sorted(texts, key=len)   # less padding
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        ids, mask, labels = lm_batch(tok, texts[i:i + batch_size], device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                                       reduction="sum"))
        count += int((tgt != -100).sum())
    return total / max(count, 1)


@torch.no_grad()
def generate(model, tok, cfg: ArithmeticBench, seed: int, device) -> list[str]:
    """``cfg.generations`` sampled continuations of the neutral prompts; the same sampling seed for every model."""
    model.eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.generations)]
    texts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), 16):
            enc = tok(prompts[i:i + 16], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, do_sample=True, top_p=cfg.top_p, temperature=1.0,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id)
            conts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            texts += [" ".join((p + c).split()) for p, c in zip(prompts[i:i + 16], conts)]
    return texts


def sentiment_classifier(cfg: ArithmeticBench, device, ctx: dict):
    """MiniLM fully fine-tuned on ``clf_size`` SST-2 training examples (seed 0), trained once per process."""
    if "classifier" not in ctx:
        task = get_task("sst2")
        train = random.Random(0).sample(load_split(task, "train", data_dir=cfg.data_dir), cfg.clf_size)
        encoder, tok = models.load_encoder(cfg.encoder, device=device)
        seed_everything(0)
        clf = EncoderClassifier(encoder, tok, task, max_length=cfg.max_length).to(device)
        fit(clf, train, FitConfig(epochs=cfg.clf_epochs, lr=cfg.clf_lr, head_lr=cfg.head_lr,
                                  batch_size=cfg.batch_size), 0, desc="sentiment classifier")
        ctx["classifier"] = (clf, score(clf, task, validation(cfg, task)))
    return ctx["classifier"]


# SST-2 is PTB-tokenised and lower-cased ("it 's slow -- very , very slow ."); an LM module trained on that text
# learns the format as much as the sentiment, and negating it would then mostly unlearn the format.
_DETOK = [(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1"), (r" ([.,;:!?)%]|\.\.\.)", r"\1"), (r"([($]) ", r"\1"),
          (r"`` ?", '"'), (r" ?''", '"')]


def detokenize(sentence: str) -> str:
    for pattern, repl in _DETOK:
        sentence = re.sub(pattern, repl, sentence)
    sentence = sentence.strip()
    return sentence[:1].upper() + sentence[1:]


def lm_data(cfg: ArithmeticBench, seed: int) -> dict[str, list[str]]:
    task = get_task("sst2")
    full = [e for e in load_split(task, "train", data_dir=cfg.data_dir)
            if len(e["sentence"].split()) >= cfg.lm_min_words]
    rng = random.Random(seed)
    neg, pos = ([detokenize(e["sentence"]) for e in full if e["label"] == label] for label in (0, 1))
    rng.shuffle(neg)
    rng.shuffle(pos)
    n, h = cfg.lm_sentences, cfg.lm_heldout
    val = [detokenize(e["sentence"]) for e in load_split(task, "validation", data_dir=cfg.data_dir)]
    return {"train": neg[:n], "held_neg": neg[n:n + h], "held_pos": pos[:h], "val": val[:cfg.ppl_sentences]}


def measure(model, tok, cfg: ArithmeticBench, data: dict, clf, seed: int, device) -> dict:
    texts = generate(model, tok, cfg, seed, device)
    p_neg = clf.predict_proba([{"sentence": t} for t in texts])[:, 0]
    return {"negative_share": float((p_neg > 0.5).mean()), "p_negative": float(p_neg.mean()),
            "ppl_val": float(torch.tensor(mean_nll(model, tok, data["val"], cfg.lm_batch_size, device)).exp()),
            **{f"nll_{k}": mean_nll(model, tok, data[k], cfg.lm_batch_size, device) for k in ("held_neg", "held_pos")},
            "samples": texts[:8]}


def lm_loss(tok, device):
    def loss(model, batch: list[dict]) -> torch.Tensor:
        ids, mask, labels = lm_batch(tok, [e["sentence"] for e in batch], device)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    return loss


def choose_negation(peft, tok, cfg: ArithmeticBench, data: dict, base: dict, device) -> tuple[float, dict]:
    """The strongest negation within a fluency budget: among the λ whose perplexity on held-out *positive* training
    sentences stays within ``ppl_budget`` × the base model's, the one maximising NLL(held-out negative) −
    NLL(held-out positive) (ties: the smaller λ); the smallest λ when none stays within the budget. Without the
    budget the margin only grows with λ as the LM falls apart (measured: PPL 168 -> 22,900 at λ = 1.5)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    state = {k: v.clone() for k, v in get_peft_model_state_dict(peft).items()}
    curve = {}
    for lam in cfg.neg_grid:
        set_peft_model_state_dict(peft, negate(state, "LORA", lam))
        neg, pos = (mean_nll(peft, tok, data[k], cfg.lm_batch_size, device) for k in ("held_neg", "held_pos"))
        curve[lam] = {"nll_held_neg": neg, "nll_held_pos": pos, "margin": neg - pos,
                      "within_budget": pos - base["nll_held_pos"] <= math.log(cfg.ppl_budget)}
    set_peft_model_state_dict(peft, state)
    ok = [lam for lam in cfg.neg_grid if curve[lam]["within_budget"]]
    lam = max(ok, key=lambda x: (round(curve[x]["margin"], 9), -x)) if ok else min(cfg.neg_grid)
    return lam, {str(k): v for k, v in curve.items()}


def run_unlearning(cfg: ArithmeticBench, seed: int, device, ctx: dict) -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    clf, clf_score = sentiment_classifier(cfg, device, ctx)
    data = lm_data(cfg, seed)
    model, tok = models.load_causal_lm(cfg.lm, device=device)
    peft = seeded_peft_model(model, peft_config_for("lora", r=cfg.lora_r, alpha=cfg.lora_alpha, causal=True), seed)
    with peft.disable_adapter():
        base = measure(peft, tok, cfg, data, clf, seed, device)
    fit(peft, [{"sentence": s} for s in data["train"]], FitConfig(epochs=cfg.lm_epochs, lr=cfg.lm_lr,
        batch_size=cfg.lm_batch_size), seed, loss_fn=lm_loss(tok, device), desc=f"LM on negative s{seed}")
    module = measure(peft, tok, cfg, data, clf, seed, device)
    lam, curve = choose_negation(peft, tok, cfg, data, base, device)
    state = {k: v.clone() for k, v in get_peft_model_state_dict(peft).items()}
    rows = {"base": base, "module": module}
    for key, value in (("negated", lam), ("negated-1", 1.0)):   # λ = 1: the paper's plain ⊖θ
        if key == "negated-1" and lam == 1.0:
            rows[key] = rows["negated"]
            continue
        set_peft_model_state_dict(peft, negate(state, "LORA", value))
        rows[key] = {**measure(peft, tok, cfg, data, clf, seed, device), "lam": value}
    return {"rows": rows, "lam": lam, "heldout_curve": curve, "classifier": clf_score, "lm": cfg.lm,
            "train_sentences": len(data["train"])}
