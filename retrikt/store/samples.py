"""Task examples <-> generator text, and the filters a generated sample must pass to enter the store.

The generator sees ``condition(label)`` ("task: cb\\nlabel: entailment\\npremise:") and learns to continue it with
the rest of the serialised example, one ``field: value`` line per text field; ending the condition with the first
field's cue makes the format much easier to hit. Parsing is strict by default (one "cue: value" line per field, in
order, non-empty; the cues after the first may be renamed)
because a half-parsed sample would put noise in the store under a confident label. The ``lenient`` mode (smoke runs
with random tiny models, which cannot learn the format) splits whatever words came out across the fields.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np

from retrikt.io import RetriktError

FIELD_SEP = "\n"
FIELD_LINE = re.compile(r"^([A-Za-z][\w ]{0,30}?)\s*:\s*(.+)$")   # one "cue: value" line of a generated sample


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def task_text(task, how: str = "name") -> str:
    """How the generator's condition names the task: its id ("sst2", meaningless to a small LM, which then writes
    about "sst2") or its one-line description ("SST-2: sentiment of a movie-review sentence.")."""
    return task.description if how == "description" else task.name


def condition(task, label: int, how: str = "name", demos: list[dict] | tuple = ()) -> str:
    """What the generator continues: ``demos`` (examples of the same label, serialised with their task and label
    lines) and then the label's header ending in the first field's cue."""
    head = f"task: {task_text(task, how)}\nlabel: {task.label_names[label]}\n"
    shots = "".join(head + serialise(task, d) + "\n\n" for d in demos)
    return f"{shots}{head}{task.text_fields[0]}:"


def chat_condition(tokenizer, task, label: int, how: str = "name", demos: list[dict] | tuple = ()) -> str:
    """:func:`condition` inside an Instruct model's chat template: the request and the demonstrations are the user's
    turn, the answer's header is already written in the assistant's. The model then ends its answer with its
    end-of-turn token, which is the tokenizer's EOS for Qwen2.5-Instruct, so samples stop instead of running on."""
    examples = "".join(f"label: {task.label_names[label]}\n{serialise(task, d)}\n\n" for d in demos)
    ask = (f"Write one new, original example for this task: {task.description} Its label must be "
           f"'{task.label_names[label]}'. Write each field on its own line as 'field: text'"
           + (f", like these examples:\n\n{examples}" if demos else ".") + " Do not copy the examples.")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False, add_generation_prompt=True)
    return chat + condition(task, label, how)


def serialise(task, example: dict) -> str:
    return FIELD_SEP.join(f"{f}: {_one_line(example[f])}" for f in task.text_fields)


def target(task, example: dict) -> str:
    """What the generator must produce after ``condition``: the serialised example minus the first cue."""
    return serialise(task, example)[len(task.text_fields[0]) + 1:]


def parse(task, generated: str, lenient: bool = False) -> dict | None:
    """Fields of a generated continuation of ``condition``, or None when it does not parse."""
    text = f"{task.text_fields[0]}:{generated}"
    lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
    out = {}
    # Fields are taken by position, one "cue: value" line each: the first cue is ours, later ones may be renamed
    # (qwen-0.5b writes "conclusion:" for CB's hypothesis) without changing what the line holds.
    for f, line in zip(task.text_fields, lines):
        m = FIELD_LINE.match(line)
        if not m or not m.group(2).strip():
            break
        out[f] = m.group(2).strip()
    if len(out) == len(task.text_fields):
        return out
    return _split_words(task, text) if lenient else None


def missing_field(task, generated: str) -> str | None:
    """The next field's name when ``generated`` holds the first fields, each a good "cue: value" line, and nothing
    after them (the generator ended the sample early); None when it parses or is garbled."""
    lines = [ln.strip() for ln in f"{task.text_fields[0]}:{generated}".strip().split("\n") if ln.strip()]
    if not 0 < len(lines) < len(task.text_fields):
        return None
    if all(FIELD_LINE.match(ln) for ln in lines):
        return task.text_fields[len(lines)]
    return None


def _split_words(task, text: str) -> dict | None:
    cues = {f"{f}:" for f in task.text_fields}
    words = [w for w in text.split() if w not in cues]
    n = len(task.text_fields)
    if len(words) < n:
        return None
    size = -(-len(words) // n)
    chunks = [words[i * size:(i + 1) * size] for i in range(n)]
    if not all(chunks):
        return None
    return {f: " ".join(c) for f, c in zip(task.text_fields, chunks)}


# Answer words that ordinary sentences use all the time ("no one came", "is it true"): a verbaliser or label name
# that is one of them (CB / RTE's " Yes" / " No" / " Maybe", BoolQ / WiC's False / True) does not mark a sample as
# naming its label, or the filter would drop a large share of plain text.
GENERIC_ANSWERS = frozenset({"yes", "no", "maybe", "true", "false"})


def label_words(task, label: int) -> list[str]:
    """The words that name ``label`` in a sample's text: the label's name with underscores as spaces ("not
    entailment") and its verbaliser stripped ("positive" for SST-2), less :data:`GENERIC_ANSWERS`. So for tasks
    whose verbalisers are " Yes" / " No" only the label names count, and for BoolQ-style tasks named False / True
    nothing does."""
    words = [task.label_names[label].replace("_", " ")]
    if task.verbalizers:
        words.append(task.verbalizers[label].strip())
    return sorted({w for w in words if w and w.lower() not in GENERIC_ANSWERS})


def names_label(task, fields: dict, label: int) -> bool:
    """Whether the sample's text names its own conditioned label: a whole-word, case-insensitive match of one of
    :func:`label_words` in any field (underscores read as spaces, so "not_entailment" names "entailment" too)."""
    text = " ".join(str(v) for v in fields.values()).replace("_", " ")
    for word in label_words(task, label):
        pattern = r"\s+".join(re.escape(w) for w in word.split())
        if re.search(rf"\b{pattern}\b", text, flags=re.IGNORECASE):
            return True
    return False


def normalise(text: str) -> str:
    """Key for exact-duplicate / copy detection: case, accents, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def example_key(task, example: dict) -> str:
    return normalise(" | ".join(str(example[f]) for f in task.text_fields))


def embed_text(task, example: dict) -> str:
    """An example's text as one string (pair tasks: the two texts on two lines), as stores built before the pair
    format embedded it; also the text distinct-n statistics count."""
    a, b = task.text_pair(example)
    return a if b is None else f"{a}\n{b}"


# How a pair task's two texts reach the store embedder. "pair": as a sentence pair ([CLS] a [SEP] b [SEP]), which is
# how an encoder student tokenizes them, so a MiniLM student's query equals its MiniLM key at initialisation (cosine
# 1.0 vs 0.99 for "newline", measured on RTE pairs). "newline": "a\nb" as one text, what older stores hold.
PAIR_FORMATS = ("pair", "newline")


def pair_format(manifest: dict) -> str:
    """The pair format a store's keys were embedded with (stores that do not say are "newline")."""
    return (manifest.get("embedder") or {}).get("pair_format", "newline")


def embed_examples(embedder, task, examples: list[dict], fmt: str = "pair") -> np.ndarray:
    """L2-normalised float32 embeddings [n, dim] of task examples, pair tasks in the format ``fmt``: the one way
    store keys and the queries compared with them are embedded."""
    if fmt not in PAIR_FORMATS:
        raise RetriktError(f"unknown pair format {fmt!r}; known: {', '.join(PAIR_FORMATS)}")
    if fmt == "newline":
        return embed_texts(embedder, [embed_text(task, e) for e in examples])
    pairs = [task.text_pair(e) for e in examples]
    return embed_texts(embedder, [a if b is None else [a, b] for a, b in pairs])


def embedding_dim(embedder) -> int:
    get = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(get())


def embed_texts(embedder, texts: list[str]) -> np.ndarray:
    """L2-normalised float32 embeddings [n, dim]: the one way store keys, queries and rewards are embedded."""
    if not texts:
        return np.zeros((0, embedding_dim(embedder)), dtype=np.float32)
    return np.asarray(embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False), dtype=np.float32)


def near_duplicates(new: np.ndarray, accepted: np.ndarray | None, threshold: float) -> np.ndarray:
    """Boolean mask over ``new`` rows: True where the row's cosine to an accepted row, or to an earlier
    kept row of ``new``, is above ``threshold``. Rows must be L2-normalised."""
    drop = np.zeros(len(new), dtype=bool)
    if len(new) == 0:
        return drop
    if accepted is not None and len(accepted):
        drop |= (new @ accepted.T).max(1) > threshold
    sims = new @ new.T
    for i in range(len(new)):
        if drop[i]:
            continue
        later = np.arange(i + 1, len(new))
        drop[later[sims[i, i + 1:] > threshold]] = True
    return drop
