"""The filters a batch of samples passes on its way into a store, and the build log's totals.

Per batch, in this order: parse; drop copies of forbidden examples and repeats within the batch; drop samples cut
off before end-of-sequence and samples that name their own conditioned label (:class:`Filter`, before embedding, so
no dropped sample is embedded); drop near-copies (cosine above the dedup threshold) of the k-shot examples the
generator may have been shown; label; drop samples the labeller disagrees with (:func:`agreement`, necessarily after
labelling). Every filter counts what it catches in the batch's build-log record, whether or not it drops it. The
filters against earlier batches (duplicates of anything accepted before) run when the shards are merged
(:class:`retrikt.store.shard.Dedup`).
"""
from __future__ import annotations

import logging

import numpy as np

from retrikt.store.samples import embed_examples, example_key, missing_field, names_label, parse

logger = logging.getLogger(__name__)


class Filter:
    """The per-batch filters up to embedding (see the module docstring), which need nothing outside the batch. A
    sample that arrives with ``fields`` (an oracle input) is not parsed; one with label None has no conditioned label
    to name. Unfinished and label-naming samples are counted, and dropped unless ``keep_unfinished`` / not
    ``drop_label_words``."""

    def __init__(self, task, forbidden: set[str], lenient: bool = False, keep_unfinished: bool = False,
                 drop_label_words: bool = True, reference: np.ndarray | None = None, threshold: float = 0.95,
                 pair_format: str = "pair"):
        self.task, self.forbidden, self.lenient = task, forbidden, lenient
        self.keep_unfinished, self.drop_label_words = keep_unfinished, drop_label_words
        # embeddings of the k-shot examples: a generator shown them as demonstrations may paraphrase them closely
        self.reference, self.threshold = reference, threshold
        self.pair_format = pair_format

    def __call__(self, samples: list[dict], embedder) -> tuple[list[dict], np.ndarray, dict]:
        stats = {"generated": len(samples), "parsed": 0, "copies": 0, "exact_dups": 0, "unfinished": 0,
                 "label_words": 0, "near_dups": 0, "perturbed": sum("perturb" in s for s in samples),
                 "completed": sum(bool(s.get("completed")) for s in samples), "completed_parsed": 0,
                 "first_field_only": 0}
        kept, seen = [], set()
        for s in samples:
            if s.get("unchanged"):  # a sample a corruption could not change (retrikt.pipeline.perturb)
                continue
            fields = s.get("fields") or parse(self.task, s["text"], lenient=self.lenient)
            if fields is None:
                stats["first_field_only"] += bool(s.get("finished", True) and missing_field(self.task, s["text"]))
                continue
            stats["parsed"] += 1
            stats["completed_parsed"] += bool(s.get("completed"))
            key = example_key(self.task, fields)
            if key in self.forbidden:
                stats["copies"] += 1
            elif key in seen:
                stats["exact_dups"] += 1
            else:
                seen.add(key)
                entry = self._candidate(s, fields, stats)
                if entry is not None:
                    kept.append(entry)
        emb = embed_examples(embedder, self.task, [k["fields"] for k in kept], self.pair_format)
        if self.reference is not None and len(self.reference) and len(kept):
            near = (emb @ self.reference.T).max(1) > self.threshold
            stats["copies"] += int(near.sum())
            kept, emb = [k for k, n in zip(kept, near) if not n], emb[~near]
        return kept, emb, stats

    def _candidate(self, s: dict, fields: dict, stats: dict) -> dict | None:
        finished, label = s.get("finished", True), s.get("label")
        if not finished:
            stats["unfinished"] += 1
            if not self.keep_unfinished:
                return None
        names = label is not None and names_label(self.task, fields, label)
        if names:
            stats["label_words"] += 1
            if self.drop_label_words:
                return None
        return {"fields": fields, "tokens": len(s.get("tokens", ())), "finished": finished, "label": label,
                "names_label": names, "idx": s.get("idx"),
                **{k: s[k] for k in ("perturb", "source_text") if k in s}}


def label_entries(labeller, kept: list[dict]) -> list[dict]:
    """Teacher-label the candidates. A generated one keeps its conditioned label; an oracle input, which has none,
    takes the labeller's argmax (its gold label is never passed on)."""
    if not kept:
        return []
    probs = labeller.predict_proba([{**k["fields"], "idx": -1} for k in kept])
    out = []
    for k, p in zip(kept, probs):
        top = int(p.argmax())
        label = top if k["label"] is None else k["label"]
        meta = {"teacher_label": top, "agree": top == label, "tokens": k["tokens"], "finished": k["finished"],
                "names_label": k["names_label"]}
        if k["idx"] is not None:
            meta["train_idx"] = k["idx"]
        meta.update({key: k[key] for key in ("perturb", "source_text") if key in k})
        out.append({"fields": k["fields"], "label": label, "soft_label": [round(float(x), 6) for x in p],
                    "meta": meta})
    return out


def agreement(kept: list[dict], entries: list[dict], min_agreement: float) -> tuple[list[int], dict]:
    """Which labelled candidates to keep, and the counts. A candidate agrees when the labeller's argmax is its
    conditioned label with probability >= ``min_agreement``; 0 keeps them all (still counted). An oracle input has
    no conditioned label (its label is the argmax), so there is nothing to disagree with: it always passes."""
    ok = [k["label"] is None or passes_agreement(e, min_agreement) for k, e in zip(kept, entries)]
    keep = [i for i, a in enumerate(ok) if a or min_agreement <= 0]
    return keep, {"agreed": sum(ok), "disagree": len(ok) - sum(ok)}


def passes_agreement(entry: dict, min_agreement: float) -> bool:
    """A labelled entry agrees: the labeller's argmax is its label with probability >= ``min_agreement`` (the rule
    of :func:`agreement`, applied to a stored entry by retrikt.pipeline.refilter)."""
    return bool(entry["meta"]["agree"]) and entry["soft_label"][int(entry["label"])] >= min_agreement


LOG_COUNTS = ("generated", "parsed", "copies", "exact_dups", "unfinished", "label_words", "disagree", "agreed",
              "near_dups", "kept", "agree", "new_tokens", "perturbed", "completed",
              "completed_parsed", "first_field_only")


def summarise_log(log: list[dict]) -> dict:
    """Totals over the build log, keeping the last record of each batch (a re-run batch is logged twice). A count
    that an older build did not log counts as 0."""
    last = {r["batch_id"]: r for r in log}
    tot = {k: sum(r.get(k, 0) for r in last.values()) for k in LOG_COUNTS}
    gen_s = sum(r.get("generate_seconds", 0.0) for r in last.values())
    return tot | {"batches": len(last), "generate_seconds": gen_s,
                  "tokens_per_s": tot["new_tokens"] / gen_s if gen_s else 0.0,
                  "parse_rate": tot["parsed"] / max(1, tot["generated"]),
                  "keep_rate": tot["kept"] / max(1, tot["generated"]),
                  "agreement": tot["agree"] / max(1, tot["kept"])}


class YieldWatch:
    """Warns once, early in a build, when few generated samples both parse and end before ``--max-new-tokens``. A
    soft prompt that rambles or breaks the field format spends the whole build's time on a fraction of its entries
    (CB seed 3 in sessions 18-19, docs/RESULTS.md), and its tuning loss does not show it; the build log's totals do,
    but only at the end. The warning names the remedy that fits the failure: samples that stop after their first
    field are fewer with a k-shot example in context (--gen-demos 1) or can be continued (--complete-fields); longer
    tuning did not help there. Oracle inputs are never watched: they arrive parsed."""

    def __init__(self, min_samples: int = 64, min_rate: float = 0.6):
        self.min_samples, self.min_rate = min_samples, min_rate
        self.generated = self.usable = self.first_only = 0
        self.warned = False

    def add(self, stats: dict, prompt_epochs: int, keep_unfinished: bool = False) -> bool:
        """Counts a batch's filter stats (those since a resume); True when this batch raised the warning. With
        ``keep_unfinished`` the store keeps cut-off samples, so they count as usable."""
        self.generated += stats["generated"]
        self.usable += stats["parsed"] - (0 if keep_unfinished else stats["unfinished"])
        self.first_only += stats.get("first_field_only", 0)
        rate = self.usable / max(1, self.generated)
        if self.warned or self.generated < self.min_samples or rate >= self.min_rate:
            return False
        self.warned = True
        if self.first_only >= (self.generated - self.usable) / 2:
            remedy = (f"{self.first_only} of them stopped after their first field: rebuild into a new --out with "
                      "--gen-demos 1 (a same-label k-shot example in the generator's context), or with "
                      "--complete-fields, which continues such samples from the next field's cue")
        else:
            remedy = (f"the soft prompt ({prompt_epochs} tuning epochs) may be undertrained: rebuild into a new "
                      "--out with a larger --prompt-epochs")
        logger.warning("only %d of the first %d samples parse and end before --max-new-tokens (%.0f%%), and the store "
                       "will keep about that share of its samples. The build goes on; to do better, stop it: %s",
                       self.usable, self.generated, 100 * rate, remedy)
        return True
