import numpy as np
import pytest

from retrikt.store.samples import (condition, example_key, label_words, names_label, near_duplicates, parse,
                                    serialise, target)
from retrikt.tasks import get_task


def test_condition_target_parse_round_trip():
    task = get_task("cb")
    ex = {"premise": "It rained\nall day.", "hypothesis": "The ground is wet.", "label": 0}
    cond, tgt = condition(task, 0), target(task, ex)
    assert cond.endswith("label: entailment\npremise:")
    assert cond[cond.rindex("\n") + 1:] + tgt == serialise(task, ex)
    assert parse(task, tgt) == {"premise": "It rained all day.", "hypothesis": "The ground is wet."}


@pytest.mark.parametrize("generated", [" only a premise", " p\nno cue line", " p\nhypothesis:   ", ""])
def test_strict_parse_refuses_incomplete_samples(generated):
    assert parse(get_task("cb"), generated) is None


def test_parse_takes_fields_by_position_and_ignores_what_follows():
    got = parse(get_task("cb"), " It rained.\nconclusion: The ground is wet.\nlabel: entailment\npremise: more")
    assert got == {"premise": "It rained.", "hypothesis": "The ground is wet."}


def test_lenient_parse_splits_words_over_fields():
    task = get_task("cb")
    assert parse(task, " a b c d e", lenient=True) == {"premise": "a b c", "hypothesis": "d e"}
    assert parse(task, " a", lenient=True) is None


def test_example_key_ignores_case_punctuation_spacing():
    task = get_task("sst2")
    assert example_key(task, {"sentence": "A  great, film!"}) == example_key(task, {"sentence": "a great film"})


def test_near_duplicates_against_accepted_and_within_batch():
    a = np.eye(4, dtype=np.float32)
    new = np.stack([a[0], a[1], a[1] * 0.999 + a[2] * 0.01, a[3]])
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    drop = near_duplicates(new, accepted=a[:1], threshold=0.95)
    # row 0 duplicates an accepted row; row 2 duplicates row 1 (kept first); row 3 is new
    assert drop.tolist() == [True, False, True, False]


def test_condition_can_name_the_task_by_its_description():
    task = get_task("sst2")
    assert condition(task, 1).startswith("task: sst2\nlabel: positive")
    described = condition(task, 1, "description")
    assert described.startswith(f"task: {task.description}\nlabel: positive") and "sst2" not in described
    ex = {"sentence": "a fine film", "label": 1}
    # the target, hence parsing, does not depend on how the task is named
    assert described[described.rindex("\n") + 1:] + target(task, ex) == serialise(task, ex)


@pytest.mark.parametrize("task,label,text,names", [
    ("cb", 0, "The answer is Entailment, clearly.", True),      # case-insensitive, punctuation around it
    ("cb", 0, "No, maybe yes: a contradiction.", False),          # Yes / No / Maybe never count; another label's name
    ("cb", 1, "No, maybe yes: a contradiction.", True),
    ("rte", 1, "This is not_entailment.", True),                   # underscores read as spaces
    ("rte", 1, "not  entailment", True),
    ("rte", 1, "entailment", False),
    ("cola", 1, "It is unacceptable.", False),                     # whole words only
    ("cola", 0, "It is unacceptable.", True),
    ("sst2", 1, "A Positive surprise.", True),                     # name and verbaliser: positive
    ("boolq", 1, "Is it true that no one came?", False),           # True / False are ordinary words
])
def test_a_sample_names_its_label_by_name_or_specific_verbaliser(task, label, text, names):
    t = get_task(task)
    fields = dict.fromkeys(t.text_fields, "x")
    fields[t.text_fields[-1]] = text
    assert names_label(t, fields, label) is names


def test_generic_answer_words_never_name_a_label():
    assert label_words(get_task("cb"), 0) == ["entailment"] and label_words(get_task("boolq"), 1) == []
    assert label_words(get_task("sst2"), 0) == ["negative"]


def test_pair_tasks_embed_as_sentence_pairs_and_stores_record_the_format():
    import numpy as np

    from retrikt import models
    from retrikt.store.samples import embed_examples, pair_format
    from retrikt.store.schema import _check_meta
    from retrikt.tasks import get_task
    st = models.load_sentence_transformer("tiny-encoder")
    task = get_task("rte")
    exs = [{"sentence1": "the man ran", "sentence2": "he ran", "label": 0},
           {"sentence1": "a dog sat", "sentence2": "the cat sat on it", "label": 1}]
    pair, newline = embed_examples(st, task, exs, "pair"), embed_examples(st, task, exs, "newline")
    assert pair.shape == newline.shape == (2, st.get_sentence_embedding_dimension())
    np.testing.assert_allclose(np.linalg.norm(pair, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(pair, newline)  # [CLS] a [SEP] b [SEP], not "a b"
    meta = _check_meta({"task": "rte", "teacher": "t", "embedder": {"name": "e", "dim": 4, "pair_format": "pair"}})
    assert pair_format(meta) == "pair" and pair_format({"embedder": {"name": "e", "dim": 4}}) == "newline"


@pytest.mark.slow
def test_a_minilm_students_query_equals_its_pair_key_at_initialisation():
    import numpy as np

    from retrikt import models
    from retrikt.store.samples import embed_examples
    from retrikt.student.encoder import EncoderClassifier
    from retrikt.tasks import get_task
    task = get_task("rte")
    exs = [{"sentence1": "No one came to the party.", "sentence2": "The party was crowded.", "label": 1}]
    key = embed_examples(models.load_sentence_transformer("minilm-l6"), task, exs, "pair")
    enc, tok = models.load_encoder("minilm-l6")
    query = EncoderClassifier(enc, tok, task).encode(exs)
    np.testing.assert_allclose((key * query).sum(1), 1.0, atol=1e-4)


def test_missing_field_names_the_next_field_only_after_good_first_lines():
    from retrikt.store.samples import missing_field
    from retrikt.tasks import get_task
    cb, sst2 = get_task("cb"), get_task("sst2")
    assert missing_field(cb, " A man sat.") == "hypothesis"
    assert missing_field(cb, " A man sat.\nhypothesis: he sat") is None   # complete
    assert missing_field(cb, " A man sat.\nand then he left") is None     # a second line that is no field
    assert missing_field(cb, "   ") is None                               # nothing written
    assert missing_field(sst2, " a fine film") is None                    # one field: nothing to complete
