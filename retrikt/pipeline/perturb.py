"""Negatives by corruption: the samples of a "broken text" label (CoLA's unacceptable) made by corrupting freshly
generated samples of the other label, one small edit each.

Asked for an unacceptable sentence, the generator (a soft-prompted LM trained on fluent text) writes an acceptable
one, and the labeller rightly rejects it, so a CoLA store ends up with almost no entries of that label. The edits
here are the violations CoLA's negatives are made of (word order, a missing or doubled word, subject-verb
agreement, a misplaced word). An edit does not guarantee ungrammaticality (dropping an adjective leaves a good
sentence), so every corrupted sample still goes through the labeller's agreement filter like any other.
"""
from __future__ import annotations

import random

from retrikt.io import RetriktError
from retrikt.store.samples import parse

OPS = ("swap", "drop", "repeat", "move", "agreement")
# a form -> its number / person counterpart (both directions of the verb pairs; "a" and "himself" one way only)
AGREEMENT = {"is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has", "does": "do",
             "do": "does", "a": "many", "this": "these", "these": "this", "himself": "themselves"}
TRAILING = ".!?;:,"


def _split(text: str) -> tuple[list[str], str]:
    """Words, and the sentence's closing punctuation (kept at the end whatever the edit moves)."""
    words = text.split()
    end = ""
    if words and words[-1][-1] in TRAILING:
        stripped = words[-1].rstrip(TRAILING)
        end = words[-1][len(stripped):]
        words[-1:] = [stripped] if stripped else []
    return words, end


def _edit(words: list[str], op: str, rng: random.Random) -> list[str] | None:
    """``words`` with one ``op`` edit applied, or None where the op cannot apply."""
    w, n = list(words), len(words)
    # Swaps and moves leave the first word in place: a capitalised word moved inside the sentence (or a lower-case
    # one moved to its start) would mark the edit by its case, a clue real unacceptable sentences do not carry.
    if op == "swap" and n >= 3:
        i = rng.randrange(1, n - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
    elif op == "drop" and n >= 3:
        del w[rng.randrange(n)]
    elif op == "repeat" and n >= 1:
        i = rng.randrange(n)
        w.insert(i, w[i])
    elif op == "move" and n >= 4:
        i = rng.randrange(1, n)
        word = w.pop(i)
        w.insert(rng.choice([j for j in range(1, n) if abs(j - i) > 1] or [1]), word)
    elif op == "agreement":
        spots = [i for i, x in enumerate(w) if x.lower() in AGREEMENT]
        if not spots:
            return None
        i = rng.choice(spots)
        swap = AGREEMENT[w[i].lower()]
        w[i] = swap.capitalize() if w[i][:1].isupper() else swap
    else:
        return None
    return w


def corrupt(text: str, rng: random.Random) -> tuple[str, str] | None:
    """(corrupted text, the edit's name): the first edit, in a random order, that applies and changes ``text``;
    None when none does (an empty text)."""
    words, end = _split(text)
    for op in rng.sample(OPS, len(OPS)):
        edited = _edit(words, op, rng)
        if edited is None:
            continue
        if edited and edited[0][:1].islower() and words and words[0][:1].isupper():
            edited[0] = edited[0][:1].upper() + edited[0][1:]   # a capitalised first word is no clue of the edit
        out = " ".join(edited) + end
        if out != text and edited:
            return out, op
    return None


def check_perturb(task, label: int) -> int:
    """The label corrupted samples are generated from (the other one); a clear error where corruption is undefined."""
    if len(task.text_fields) != 1:
        raise RetriktError(f"--perturb-label corrupts single sentences; {task.name} has the fields "
                           f"{', '.join(task.text_fields)}")
    if task.num_labels != 2 or not 0 <= label < 2:
        raise RetriktError(f"--perturb-label must be 0 or 1 on a two-label task; {task.name} has {task.num_labels} "
                           f"labels and got {label}")
    return 1 - label


def perturbed_draw(task, draw, label: int, seed: int, lenient: bool = False):
    """``draw`` with the batches of ``label`` made by corrupting samples drawn for the other label. A sample that
    does not parse, or that no edit changes (a lone "."), passes on marked ``unchanged``, which the filter drops
    before parsing (generated, not parsed): nothing is stored under ``label`` uncorrupted."""
    source = check_perturb(task, label)
    field = task.text_fields[0]

    def wrapped(batch_id: int, lab: int, n: int) -> list[dict]:
        if lab != label:
            return draw(batch_id, lab, n)
        rng = random.Random(seed * 7_919 + batch_id)
        out = []
        for s in draw(batch_id, source, n):
            fields = parse(task, s["text"], lenient=lenient)
            edit = corrupt(fields[field], rng) if fields else None
            if edit is None:   # unparseable or unchanged: dropped by the filter
                out.append(dict(s, label=label, unchanged=True))
                continue
            out.append(dict(s, label=label, fields={field: edit[0]}, perturb=edit[1], source_text=fields[field]))
        return out
    return wrapped
