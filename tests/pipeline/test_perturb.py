"""Corrupted negatives (--perturb-label): the edits, the draw that makes a label's batches from the other label's,
and a build that stores them with their provenance."""
import random

import pytest

from retrikt.io import RetriktError, read_jsonl
from retrikt.pipeline import perturb as P
from retrikt.pipeline import run as B
from retrikt.store import Store
from retrikt.tasks import get_task
from retrikt.teacher.softprompt import SoftPromptGenerator

from tests.pipeline.test_build import _fake_generate

SENTENCE = "The dogs are chasing the cat in the garden."


@pytest.mark.parametrize("op", P.OPS)
def test_every_edit_changes_the_words_and_keeps_the_closing_punctuation(op):
    words, end = P._split(SENTENCE)
    assert end == "." and words[-1] == "garden"
    edited = P._edit(words, op, random.Random(0))
    assert edited is not None and edited != words
    assert sorted(edited) != sorted(words) or op in ("swap", "move")   # swap / move keep the words, in another order


@pytest.mark.parametrize("op", ["swap", "move"])
def test_reordering_edits_leave_the_first_word_so_case_gives_no_clue(op):
    words, _ = P._split(SENTENCE)
    for seed in range(50):
        edited = P._edit(words, op, random.Random(seed))
        assert edited[0] == "The" and not any(w[:1].isupper() for w in edited[1:]) and edited != words


def test_agreement_edit_breaks_number_agreement():
    assert P._edit(["The", "dogs", "are", "barking"], "agreement", random.Random(0)) == ["The", "dogs", "is",
                                                                                          "barking"]
    assert P._edit(["Dogs", "bark"], "agreement", random.Random(0)) is None     # nothing to break: not applied


def test_corrupt_is_seeded_and_refuses_what_it_cannot_change():
    a, b = P.corrupt(SENTENCE, random.Random(3)), P.corrupt(SENTENCE, random.Random(3))
    assert a == b and a[0] != SENTENCE and a[1] in P.OPS and a[0].endswith(".") and a[0][0].isupper()
    assert P.corrupt("", random.Random(0)) is None


def test_the_perturbed_label_is_made_from_the_other_labels_samples():
    task, asked = get_task("cola"), []

    def draw(batch_id, label, n):
        asked.append(label)
        return [{"text": f" {SENTENCE}", "label": label, "finished": True}, {"text": "", "label": label}][:n]

    wrapped = P.perturbed_draw(task, draw, 0, seed=1)
    plain = wrapped(1, 1, 2)
    assert asked == [1] and plain == draw(1, 1, 2)                      # the other label: untouched
    asked.clear()
    broken, unparsed = wrapped(2, 0, 2)
    assert asked == [1]                                                 # generated as acceptable ...
    assert broken["label"] == 0 and broken["fields"]["sentence"] != SENTENCE and broken["perturb"] in P.OPS
    assert broken["source_text"] == SENTENCE
    assert unparsed["unchanged"] and unparsed["label"] == 0            # ... and never stored uncorrupted


def test_the_filter_drops_a_sample_no_edit_could_change():
    """A lone "." parses as a sentence no edit changes; stored under the broken label it would be a clean sentence
    labelled unacceptable, so the filter drops it before parsing."""
    from retrikt import models
    from retrikt.pipeline.filters import Filter
    task = get_task("cola")
    wrapped = P.perturbed_draw(task, lambda b, lab, n: [{"text": " .", "label": lab, "finished": True}], 0, seed=1)
    (sample,) = wrapped(0, 0, 1)
    assert sample["unchanged"]
    kept, _, stats = Filter(task, set())([sample], models.load_sentence_transformer("tiny-encoder"))
    assert kept == [] and stats["parsed"] == 0 and stats["generated"] == 1


def test_perturbation_is_refused_where_it_is_undefined():
    with pytest.raises(RetriktError, match="single sentences"):
        P.check_perturb(get_task("cb"), 0)
    with pytest.raises(RetriktError, match="0 or 1"):
        P.check_perturb(get_task("cola"), 2)


def test_a_build_stores_corrupted_negatives_with_their_source(tmp_path, monkeypatch):
    monkeypatch.setattr(SoftPromptGenerator, "generate", _fake_generate)
    cfg = B.BuildConfig(task="cola", teacher="tiny-causal", embedder="tiny-encoder", per_label=4, batch_size=2,
                        shots=8, prompt_epochs=1, label_demos=1, dedup_threshold=0.9999, label_mix="uniform",
                        min_agreement=0.0, perturb_label=0, out=str(tmp_path / "store"))
    store = Store.open(B.build_store(cfg))
    entries = store.entries(range(len(store)))
    negatives = [e for e in entries if e["label"] == 0]
    assert negatives and all(e["meta"]["perturb"] in P.OPS for e in negatives)
    assert all(e["fields"]["sentence"] != e["meta"]["source_text"] for e in negatives)
    assert not any("perturb" in e["meta"] for e in entries if e["label"] == 1)
    log = read_jsonl(store.folder / "build_log.jsonl")
    assert sum(r["perturbed"] for r in log if r["label"] == 0) == 8 and store.manifest["stats"]["perturbed"] == 8
    cfg.source, cfg.out = "oracle", str(tmp_path / "oracle")
    with pytest.raises(RetriktError, match="generates none"):
        B.build_store(cfg)


def test_build_entry_point_reports_the_corrupted_samples(tmp_path, capsys):
    from retrikt import build
    assert build.main(["--smoke", "--task", "cola", "--perturb-label", "0", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "samples made by corruption (--perturb-label)" in out
    assert build.main(["--smoke", "--task", "rte", "--perturb-label", "0", "--out", str(tmp_path / "r")]) == 2
    assert "corrupts single sentences; rte has the fields" in capsys.readouterr().err
