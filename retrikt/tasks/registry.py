"""The GLUE + SuperGLUE task registry: fields, labels, verbalisers, prompts, metrics and file formats.

Label names follow the official order of each benchmark's integer labels (the order the Hugging Face
``nyu-mll/glue`` / ``aps/super_glue`` datasets use), so ints read from files and ints from the hub agree.
Example field names are the Hugging Face ones (``sentence1``, ``premise``, ...), whatever the file calls them.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from retrikt.io import RetriktError

YES_NO = (" No", " Yes")  # label order False=0 / True=1, as in BoolQ, WiC, WSC, MultiRC
GLUE_TSV_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}
SUPERGLUE_JSONL_FILES = {"train": ("train.jsonl",), "validation": ("val.jsonl", "validation.jsonl", "dev.jsonl"),
                         "test": ("test.jsonl",)}


@dataclass(frozen=True, eq=False)
class Task:
    """One benchmark task. ``eq=False`` keeps identity hashing, so tasks can be dict keys."""

    name: str
    benchmark: str                                  # "glue" | "superglue"
    description: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None             # None for regression (STS-B) and span tasks
    verbalizers: tuple[str, ...] | None             # one continuation per label, leading space
    metrics: tuple[str, ...]                        # the first is the main metric
    template: str = ""                              # str.format template over the example, ends with "Answer:"
    pair_template: tuple[str, str | None] = ("", None)
    kind: str = "classification"                    # classification | regression | multiple_choice | span
    verbalizer_values: tuple[float, ...] | None = None  # regression: the score each verbaliser stands for
    skip_reason: str | None = None
    # --- where and how the files are read (used by retrikt.tasks.loaders) ---
    file_format: str = "tsv"                        # "tsv" | "jsonl"
    folders: tuple[str, ...] = ()                   # folder names under <data_dir>/<benchmark>/, any case
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # file column / JSON key (dotted) -> example field
    label_column: str = "label"
    int_fields: dict[str, str] = field(default_factory=dict)  # JSON key (dotted) -> int example field
    headerless_columns: tuple[str, ...] | None = None  # column names of header-less TSVs (CoLA)
    skip_short_rows: bool = False                   # QQP: rows broken by stray newlines, dropped as HF does
    hf_path: str = ""
    hf_config: str = ""
    hf_splits: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    choices_fn: Callable[[dict], list[str]] | None = field(default=None, repr=False)
    prompt_fn: Callable[[dict], str] | None = field(default=None, repr=False)

    @property
    def num_labels(self) -> int:
        """Width of a student's output: 1 for regression, 0 for span tasks."""
        if self.is_regression:
            return 1
        return len(self.label_names) if self.label_names else 0

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_files)

    def prompt(self, example: dict) -> str:
        """The LM prompt; the verbaliser (or, for COPA, each choice) is the continuation scored after it."""
        if self.prompt_fn is not None:
            return self.prompt_fn(self._fields(example))
        return self.template.format(**self._fields(example))

    def text_pair(self, example: dict) -> tuple[str, str | None]:
        """Input of an encoder student: (text_a, text_b or None)."""
        first, second = self.pair_template
        fields = self._fields(example)
        return first.format(**fields), None if second is None else second.format(**fields)

    def _fields(self, example: dict) -> dict:
        """The example with its text fields stripped (SST-2 sentences end in a space), checked present."""
        missing = [f for f in self.text_fields if not isinstance(example.get(f), str)]
        if missing:
            raise RetriktError(f"task {self.name}: example has no text field {missing[0]!r} "
                               f"(needs {list(self.text_fields)}, got keys {sorted(example)})")
        return {**example, **{f: example[f].strip() for f in self.text_fields}}

    def choices(self, example: dict) -> list[str] | None:
        """Multiple-choice tasks (COPA): one continuation of ``prompt(example)`` per label; else None."""
        return self.choices_fn(self._fields(example)) if self.choices_fn is not None else None

    def continuations(self, example: dict) -> list[str]:
        """What an LM scores after ``prompt(example)``: the choices, else the verbalisers."""
        choices = self.choices(example)
        if choices is not None:
            return choices
        if self.verbalizers is None:
            raise RetriktError(f"task {self.name} has no verbalisers ({self.skip_reason or self.kind})")
        return list(self.verbalizers)


def _copa_connector(example: dict) -> str:
    return "because" if example["question"] == "cause" else "so"


def _copa_prompt(example: dict) -> str:
    return f"{example['premise'].rstrip().rstrip('.')} {_copa_connector(example)}"


def _boolq_prompt(example: dict) -> str:
    # BoolQ questions are lower-case and lack the question mark
    question = example["question"].rstrip("?")
    return f"Passage: {example['passage']}\nQuestion: {question}?\nYes or No?\nAnswer:"


def _lower_first(text: str) -> str:
    """Continue a sentence mid-way: 'The sun rose.' -> 'the sun rose.' (but keep 'I ...')."""
    text = text.strip()
    if not text or re.match(r"I\b", text):
        return text
    return text[0].lower() + text[1:]


def _copa_choices(example: dict) -> list[str]:
    return [" " + _lower_first(example["choice1"]), " " + _lower_first(example["choice2"])]


def _glue(name: str, folder: str, **kw: Any) -> Task:
    base = dict(name=name, benchmark="glue", file_format="tsv", folders=(folder,), split_files=GLUE_TSV_FILES,
                hf_path="nyu-mll/glue", hf_config=name,
                hf_splits={"train": "train", "validation": "validation", "test": "test"})
    return Task(**{**base, **kw})


def _superglue(name: str, folder: str, **kw: Any) -> Task:
    base = dict(name=name, benchmark="superglue", file_format="jsonl", folders=(folder,),
                split_files=SUPERGLUE_JSONL_FILES, hf_path="aps/super_glue", hf_config=name,
                hf_splits={"train": "train", "validation": "validation", "test": "test"},
                columns={f: f for f in kw["text_fields"]})
    return Task(**{**base, **kw})


_PAIR = ("{sentence1}", "{sentence2}")
_NLI_Q = "\nDoes the premise entail the hypothesis? Yes or No?\nAnswer:"
_NLI3_Q = "\nDoes the premise entail the hypothesis? Yes, No or Maybe?\nAnswer:"

_TASKS: list[Task] = [
    _glue("cola", "CoLA", description="CoLA: is the sentence grammatically acceptable English?",
          text_fields=("sentence",), label_names=("unacceptable", "acceptable"), verbalizers=YES_NO,
          metrics=("mcc",), headerless_columns=("source", "label", "notes", "sentence"),
          columns={"sentence": "sentence"},
          template="Sentence: {sentence}\nIs this sentence grammatically acceptable English? Yes or No?\nAnswer:",
          pair_template=("{sentence}", None)),
    _glue("sst2", "SST-2", description="SST-2: sentiment of a movie-review sentence.",
          text_fields=("sentence",), label_names=("negative", "positive"), verbalizers=(" negative", " positive"),
          metrics=("accuracy",), columns={"sentence": "sentence"}, aliases=("sst",),
          template="Review: {sentence}\nIs the sentiment of this review positive or negative?\nAnswer:",
          pair_template=("{sentence}", None)),
    _glue("mrpc", "MRPC", description="MRPC: are the two news sentences paraphrases?",
          text_fields=("sentence1", "sentence2"), label_names=("not_equivalent", "equivalent"),
          verbalizers=YES_NO, metrics=("f1", "accuracy"), label_column="Quality",
          columns={"#1 String": "sentence1", "#2 String": "sentence2"},
          template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\n"
                   "Do the two sentences mean the same thing? Yes or No?\nAnswer:", pair_template=_PAIR),
    _glue("qqp", "QQP", description="QQP: do the two Quora questions ask the same thing?",
          text_fields=("question1", "question2"), label_names=("not_duplicate", "duplicate"),
          verbalizers=YES_NO, metrics=("f1", "accuracy"), label_column="is_duplicate", skip_short_rows=True,
          columns={"question1": "question1", "question2": "question2"},
          template="Question 1: {question1}\nQuestion 2: {question2}\n"
                   "Do the two questions ask the same thing? Yes or No?\nAnswer:",
          pair_template=("{question1}", "{question2}")),
    _glue("mnli", "MNLI", description="MNLI: premise entails / is neutral to / contradicts the hypothesis.",
          text_fields=("premise", "hypothesis"), label_names=("entailment", "neutral", "contradiction"),
          verbalizers=(" Yes", " Maybe", " No"), metrics=("accuracy",), label_column="gold_label",
          columns={"sentence1": "premise", "sentence2": "hypothesis"}, aliases=("multinli", "mnli-m"),
          split_files={"train": ("train.tsv",), "validation": ("dev_matched.tsv", "dev.tsv"),
                       "validation_mismatched": ("dev_mismatched.tsv",), "test": ("test_matched.tsv", "test.tsv"),
                       "test_mismatched": ("test_mismatched.tsv",)},
          hf_splits={"train": "train", "validation": "validation_matched",
                     "validation_mismatched": "validation_mismatched", "test": "test_matched",
                     "test_mismatched": "test_mismatched"},
          template="Premise: {premise}\nHypothesis: {hypothesis}" + _NLI3_Q,
          pair_template=("{premise}", "{hypothesis}")),
    _glue("qnli", "QNLI", description="QNLI: does the sentence contain the answer to the question?",
          text_fields=("question", "sentence"), label_names=("entailment", "not_entailment"),
          verbalizers=(" Yes", " No"), metrics=("accuracy",), columns={"question": "question", "sentence": "sentence"},
          template="Question: {question}\nSentence: {sentence}\n"
                   "Does the sentence contain the answer to the question? Yes or No?\nAnswer:",
          pair_template=("{question}", "{sentence}")),
    _glue("rte", "RTE", description="RTE (GLUE copy): does the first sentence entail the second?",
          text_fields=("sentence1", "sentence2"), label_names=("entailment", "not_entailment"),
          verbalizers=(" Yes", " No"), metrics=("accuracy",), aliases=("glue-rte",),
          columns={"sentence1": "sentence1", "sentence2": "sentence2"},
          template="Premise: {sentence1}\nHypothesis: {sentence2}" + _NLI_Q, pair_template=_PAIR),
    _glue("stsb", "STS-B", description="STS-B: semantic similarity of two sentences, a score from 0 to 5.",
          text_fields=("sentence1", "sentence2"), label_names=None, kind="regression",
          verbalizers=(" 0", " 1", " 2", " 3", " 4", " 5"), verbalizer_values=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
          metrics=("pearson_spearman_mean", "pearson", "spearman"), label_column="score", aliases=("sts",),
          columns={"sentence1": "sentence1", "sentence2": "sentence2"},
          template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nOn a scale from 0 (unrelated) to 5 "
                   "(same meaning), how similar are the two sentences?\nAnswer:", pair_template=_PAIR),
    _glue("wnli", "WNLI", description="WNLI: Winograd schemas recast as entailment.",
          text_fields=("sentence1", "sentence2"), label_names=("not_entailment", "entailment"),
          verbalizers=YES_NO, metrics=("accuracy",), columns={"sentence1": "sentence1", "sentence2": "sentence2"},
          template="Premise: {sentence1}\nHypothesis: {sentence2}" + _NLI_Q, pair_template=_PAIR),
    _superglue("boolq", "BoolQ", description="BoolQ: yes/no question about a Wikipedia passage.",
               text_fields=("question", "passage"), label_names=("False", "True"), verbalizers=YES_NO,
               metrics=("accuracy",), prompt_fn=_boolq_prompt,
               pair_template=("{question}", "{passage}")),
    _superglue("cb", "CB", description="CommitmentBank: 3-way entailment of an embedded clause.",
               text_fields=("premise", "hypothesis"), label_names=("entailment", "contradiction", "neutral"),
               verbalizers=(" Yes", " No", " Maybe"), metrics=("accuracy", "f1_macro"), aliases=("commitmentbank",),
               template="Premise: {premise}\nHypothesis: {hypothesis}" + _NLI3_Q,
               pair_template=("{premise}", "{hypothesis}")),
    _superglue("copa", "COPA", description="COPA: which alternative is the cause / effect of the premise?",
               text_fields=("premise", "choice1", "choice2", "question"), label_names=("choice1", "choice2"),
               verbalizers=None, kind="multiple_choice", metrics=("accuracy",),
               prompt_fn=_copa_prompt, choices_fn=_copa_choices,
               pair_template=("{premise} What was the {question}?", "Option 1: {choice1} Option 2: {choice2}")),
    _superglue("superglue-rte", "RTE", description="RTE (SuperGLUE copy): premise entails hypothesis?",
               text_fields=("premise", "hypothesis"), label_names=("entailment", "not_entailment"),
               verbalizers=(" Yes", " No"), metrics=("accuracy",), hf_config="rte", aliases=("sg-rte", "rte-sg"),
               template="Premise: {premise}\nHypothesis: {hypothesis}" + _NLI_Q,
               pair_template=("{premise}", "{hypothesis}")),
    _superglue("wic", "WiC", description="WiC: is the word used with the same sense in both sentences?",
               text_fields=("word", "sentence1", "sentence2"), label_names=("False", "True"), verbalizers=YES_NO,
               metrics=("accuracy",), int_fields={k: k for k in ("start1", "end1", "start2", "end2")},
               template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nIs the word \"{word}\" used with the "
                        "same meaning in both sentences? Yes or No?\nAnswer:",
               pair_template=("{word}: {sentence1}", "{sentence2}")),
    _superglue("wsc", "WSC", description="WSC: does the pronoun refer to the noun phrase?",
               text_fields=("text", "span1_text", "span2_text"), label_names=("False", "True"), verbalizers=YES_NO,
               metrics=("accuracy",), hf_config="wsc.fixed", aliases=("wsc.fixed", "wscfixed"),
               columns={"text": "text", "target.span1_text": "span1_text", "target.span2_text": "span2_text"},
               int_fields={"target.span1_index": "span1_index", "target.span2_index": "span2_index"},
               template="Passage: {text}\nIn the passage above, does the pronoun \"{span2_text}\" refer to "
                        "\"{span1_text}\"? Yes or No?\nAnswer:",
               pair_template=("{text}", "Does \"{span2_text}\" refer to \"{span1_text}\"?")),
    _superglue("multirc", "MultiRC", description="MultiRC: is this candidate answer to a question about the "
               "paragraph correct? (one example per answer)",
               text_fields=("paragraph", "question", "answer"), label_names=("False", "True"), verbalizers=YES_NO,
               metrics=("f1a", "em"), columns={},
               template="Paragraph: {paragraph}\nQuestion: {question}\nCandidate answer: {answer}\n"
                        "Is the candidate answer correct? Yes or No?\nAnswer:",
               pair_template=("{paragraph}", "{question} {answer}")),
    _superglue("record", "ReCoRD", description="ReCoRD: cloze-style entity prediction over a news article.",
               text_fields=("passage", "query"), label_names=None, verbalizers=None, kind="span",
               metrics=("f1", "em"), skip_reason="span extraction over per-example entity candidates, not a "
               "fixed-label classification task"),
    _superglue("axb", "AX-b", description="AX-b: broad-coverage diagnostic (RTE format).",
               text_fields=("sentence1", "sentence2"), label_names=("entailment", "not_entailment"),
               verbalizers=(" Yes", " No"), metrics=("mcc",), aliases=("ax-b", "broadcoverage"),
               skip_reason="diagnostic test set only (no train/validation split); evaluate an RTE model on it"),
    _superglue("axg", "AX-g", description="AX-g: Winogender diagnostic (RTE format).",
               text_fields=("premise", "hypothesis"), label_names=("entailment", "not_entailment"),
               verbalizers=(" Yes", " No"), metrics=("accuracy",), aliases=("ax-g", "winogender"),
               skip_reason="diagnostic test set only (no train/validation split); evaluate an RTE model on it"),
]

SPLIT_ALIASES = {"val": "validation", "dev": "validation", "valid": "validation", "eval": "validation",
                 "validation_matched": "validation", "dev_matched": "validation",
                 "dev_mismatched": "validation_mismatched", "test_matched": "test"}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.strip().lower())


def _build_index() -> dict[str, Task]:
    index: dict[str, Task] = {}
    for task in _TASKS:
        for key in (task.name, *task.aliases, *(f"{task.benchmark}/{a}" for a in (task.name, *task.aliases))):
            index[_norm(key)] = task
    index[_norm("superglue/rte")] = index[_norm("superglue-rte")]
    index[_norm("super_glue/rte")] = index[_norm("superglue-rte")]
    return index


_INDEX = _build_index()


def list_tasks() -> list[Task]:
    """Every registered task, skipped ones included (check ``task.skip_reason``)."""
    return list(_TASKS)


def get_task(name: str | Task) -> Task:
    """Look a task up by name or alias (case, '-', '_' and '.' ignored): 'SST-2', 'sts-b', 'superglue/rte'."""
    if isinstance(name, Task):
        return name
    task = _INDEX.get(_norm(str(name)))
    if task is not None:
        return task
    known = [t.name for t in _TASKS]
    close = difflib.get_close_matches(_norm(str(name)), list(_INDEX), n=3, cutoff=0.6)
    suggestion = sorted({_INDEX[c].name for c in close})
    hint = f"; did you mean {', '.join(suggestion)}?" if suggestion else ""
    raise RetriktError(f"unknown task {name!r}{hint} Known tasks: {', '.join(known)}")


def canonical_split(task: Task, split: str) -> str:
    """'dev' / 'val' / 'validation_matched' -> 'validation'; RetriktError on a split the task lacks."""
    s = SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if s not in task.split_files:
        raise RetriktError(f"task {task.name} has no split {split!r}; splits: {', '.join(task.split_files) or 'none'}")
    return s


def parse_label(task: Task, raw: Any, where: str) -> int | float:
    """A file's label value -> int index into ``label_names`` (or float score); RetriktError naming ``where``."""
    if task.is_regression:
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        except (TypeError, ValueError):
            raise RetriktError(f"{where}: label {raw!r} of task {task.name} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise RetriktError(f"{where}: label {raw!r} of task {task.name} is not a finite number")
        return value
    names = task.label_names or ()
    index: int | None = None
    if isinstance(raw, bool):
        index = int(raw) if names == ("False", "True") else None
    elif isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer()):
        index = int(raw)
    elif isinstance(raw, str):
        s = raw.strip()
        lowered = [n.lower() for n in names]
        if s.lower() in lowered:
            index = lowered.index(s.lower())
        elif re.fullmatch(r"-?\d+", s):
            index = int(s)
    if index is None or not 0 <= index < len(names):
        raise RetriktError(f"{where}: label {raw!r} is not a label of task {task.name} "
                           f"(label_names {list(names)}, or ints 0..{len(names) - 1})")
    return index
