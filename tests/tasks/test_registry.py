import pytest

from retrikt.io import RetriktError
from retrikt.tasks import get_task, list_tasks, load_split
from retrikt.tasks.__main__ import main as tasks_main

GLUE = ["sst2", "mrpc", "cola", "qqp", "mnli", "qnli", "rte", "stsb", "wnli"]
SUPERGLUE = ["boolq", "cb", "copa", "wic", "wsc", "multirc", "record", "axb", "axg", "superglue-rte"]


def dummy_example(task):
    ex = {f: f"<{f}>" for f in task.text_fields}
    ex.update({f: 0 for f in task.int_fields.values()})
    if task.name == "copa":
        ex["question"] = "cause"
    return ex


def test_every_glue_and_superglue_task_is_registered_once():
    names = [t.name for t in list_tasks()]
    assert sorted(names) == sorted(GLUE + SUPERGLUE)
    assert {t.benchmark for t in list_tasks() if t.name in GLUE} == {"glue"}
    assert {t.benchmark for t in list_tasks() if t.name in SUPERGLUE} == {"superglue"}


@pytest.mark.parametrize("alias,name", [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sts-b", "stsb"), ("STS-B", "stsb"), ("CoLA", "cola"),
    ("BoolQ", "boolq"), ("MultiRC", "multirc"), ("superglue/rte", "superglue-rte"), ("SuperGLUE_RTE", "superglue-rte"),
    ("RTE", "rte"), ("glue/rte", "rte"), ("wsc.fixed", "wsc"), ("AX-b", "axb"), (" mnli ", "mnli"),
])
def test_aliases_resolve(alias, name):
    assert get_task(alias).name == name


def test_get_task_passes_tasks_through():
    task = get_task("cb")
    assert get_task(task) is task


def test_unknown_task_lists_known_ones_and_suggests_close_names():
    with pytest.raises(RetriktError) as e:
        get_task("sst3")
    msg = str(e.value)
    assert "'sst3'" in msg and "did you mean sst2" in msg
    assert all(name in msg for name in GLUE + SUPERGLUE)
    with pytest.raises(RetriktError, match="did you mean multirc"):
        get_task("mulitrc")


@pytest.mark.parametrize("name,labels", [
    ("cb", ("entailment", "contradiction", "neutral")),
    ("rte", ("entailment", "not_entailment")),
    ("superglue-rte", ("entailment", "not_entailment")),
    ("boolq", ("False", "True")), ("wic", ("False", "True")), ("wsc", ("False", "True")),
    ("multirc", ("False", "True")),
    ("mnli", ("entailment", "neutral", "contradiction")),
    ("wnli", ("not_entailment", "entailment")),
    ("sst2", ("negative", "positive")), ("cola", ("unacceptable", "acceptable")),
    ("mrpc", ("not_equivalent", "equivalent")), ("qqp", ("not_duplicate", "duplicate")),
])
def test_label_names_in_official_order(name, labels):
    task = get_task(name)
    assert task.label_names == labels
    assert task.num_labels == len(labels)
    assert not task.is_regression


@pytest.mark.parametrize("name,verbalizers", [
    ("cb", (" Yes", " No", " Maybe")), ("sst2", (" negative", " positive")), ("cola", (" No", " Yes")),
    ("boolq", (" No", " Yes")), ("mnli", (" Yes", " Maybe", " No")), ("wnli", (" No", " Yes")),
])
def test_verbalizers(name, verbalizers):
    assert get_task(name).verbalizers == verbalizers


@pytest.mark.parametrize("name,main", [
    ("cola", "mcc"), ("mrpc", "f1"), ("qqp", "f1"), ("cb", "accuracy"), ("multirc", "f1a"),
    ("stsb", "pearson_spearman_mean"), ("sst2", "accuracy"),
])
def test_main_metric(name, main):
    assert get_task(name).metrics[0] == main
    assert "f1_macro" in get_task("cb").metrics and "em" in get_task("multirc").metrics


def test_every_supported_task_has_a_prompt_ending_in_answer_and_one_verbaliser_per_label():
    for task in list_tasks():
        if task.skip_reason or task.name == "copa":
            continue
        ex = dummy_example(task)
        prompt = task.prompt(ex)
        assert prompt.endswith("Answer:"), task.name
        for f in task.text_fields:
            assert f"<{f}>" in prompt, (task.name, f)
        assert len(task.verbalizers) == (len(task.label_names) if task.label_names else 6)
        assert all(v.startswith(" ") and len(v) > 1 for v in task.verbalizers), task.name
        assert len(set(task.verbalizers)) == len(task.verbalizers), task.name
        assert task.continuations(ex) == list(task.verbalizers)
        assert task.choices(ex) is None
        a, b = task.text_pair(ex)
        assert a.strip() and (b is None or b.strip())


def test_single_sentence_tasks_have_no_second_text():
    assert get_task("sst2").text_pair({"sentence": "a fine film "}) == ("a fine film", None)
    assert get_task("cola").text_pair({"sentence": "He left."})[1] is None
    assert get_task("rte").text_pair({"sentence1": "A.", "sentence2": "B."}) == ("A.", "B.")


def test_copa_choices_continue_the_premise():
    copa = get_task("copa")
    ex = {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
          "choice2": "I cut the grass.", "question": "cause", "label": 0, "idx": 0}
    assert copa.prompt(ex) == "My body cast a shadow over the grass because"
    assert copa.choices(ex) == [" the sun was rising.", " I cut the grass."]
    assert copa.continuations(ex) == copa.choices(ex)
    assert copa.prompt({**ex, "question": "effect"}).endswith("grass so")
    a, b = copa.text_pair(ex)
    assert "What was the cause?" in a and "The sun was rising." in b and "I cut the grass." in b
    assert copa.kind == "multiple_choice" and copa.num_labels == 2


def test_boolq_prompt_adds_one_question_mark():
    boolq = get_task("boolq")
    assert "Question: is it true?\n" in boolq.prompt({"question": "is it true", "passage": "P"})
    assert "Question: is it true?\n" in boolq.prompt({"question": "is it true?", "passage": "P"})


def test_stsb_is_regression():
    stsb = get_task("stsb")
    assert stsb.is_regression and stsb.label_names is None and stsb.num_labels == 1
    assert stsb.verbalizer_values == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


def test_prompt_with_a_missing_field_names_it():
    with pytest.raises(RetriktError, match="'hypothesis'"):
        get_task("cb").prompt({"premise": "x"})


@pytest.mark.parametrize("name", ["record", "axb", "axg"])
def test_skipped_tasks_say_why(name, tmp_path):
    task = get_task(name)
    assert task.skip_reason
    with pytest.raises(RetriktError, match="not supported"):
        load_split(task, "validation", data_dir=tmp_path)


def test_unknown_split_lists_the_splits(tmp_path):
    with pytest.raises(RetriktError, match="validation_mismatched"):
        load_split("mnli", "validationx", data_dir=tmp_path)


def test_cli_prints_one_row_per_task(tmp_path, capsys):
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    (tmp_path / "glue" / "MRPC" / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    (tmp_path / "glue" / "MRPC" / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    (tmp_path / "superglue" / "cb").mkdir(parents=True)
    (tmp_path / "superglue" / "cb" / "val.jsonl").write_text("{}\n")
    assert tasks_main(["--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(GLUE + SUPERGLUE)
    assert rows["mrpc"].endswith("train+validation") and "f1" in rows["mrpc"]
    assert rows["cb"].endswith("  validation") and "entailment/contradiction/neutral" in rows["cb"]
    assert "hub fallback" in rows["qqp"]
    assert "skipped: span extraction" in rows["record"]


def test_cli_refuses_a_missing_data_dir(tmp_path):
    with pytest.raises(RetriktError, match="does not exist"):
        tasks_main(["--data-dir", str(tmp_path / "nope")])
