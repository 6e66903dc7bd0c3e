import json
from collections import Counter
from pathlib import Path

import pytest

from retrikt.io import RetriktError
from retrikt.tasks import default_data_dir, find_split_file, get_task, load_split
from retrikt.tasks import loaders

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "glue").is_dir() or not (DATA / "superglue").is_dir(),
                                reason="shared/data not found beside the repo (set RETRIKT_DATA_DIR)")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test may reach the Hugging Face hub: the fallback fails like it does offline."""
    def offline(path, config, split):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (offline)")
    monkeypatch.setattr(loaders, "_hub_rows", offline)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def labels(examples):
    return dict(Counter(ex["label"] for ex in examples))


# ------------------------------------------------------------------------------------------ real files
REAL = [  # (task, split, rows, label counts as in shared/data/SOURCES.md or None)
    ("cb", "train", 250, {1: 119, 0: 115, 2: 16}), ("cb", "validation", 56, {1: 28, 0: 23, 2: 5}),
    ("copa", "train", 400, {0: 195, 1: 205}), ("copa", "validation", 100, None),
    ("superglue-rte", "train", 2490, {0: 1249, 1: 1241}), ("superglue-rte", "validation", 277, None),
    ("boolq", "validation", 3270, {1: 2033, 0: 1237}),
    ("wsc", "train", 554, None), ("wsc", "validation", 104, None),
    ("multirc", "train", 27243, None), ("multirc", "validation", 4848, None),
    ("sst2", "train", 67349, {1: 37569, 0: 29780}), ("sst2", "validation", 872, {1: 444, 0: 428}),
    ("cola", "train", 8551, {1: 6023, 0: 2528}), ("cola", "validation", 1043, {1: 721, 0: 322}),
    ("rte", "train", 2490, {0: 1249, 1: 1241}), ("rte", "validation", 277, None),
    ("stsb", "train", 5749, None), ("stsb", "validation", 1500, None),
    ("wnli", "train", 635, {0: 323, 1: 312}), ("wnli", "validation", 71, {0: 40, 1: 31}),
]


@needs_data
@pytest.mark.parametrize("name,split,rows,counts", REAL)
def test_real_files(name, split, rows, counts):
    task = get_task(name)
    examples = load_split(task, split)
    assert len(examples) == rows
    assert [ex["idx"] for ex in examples] == list(range(rows))
    assert all(isinstance(ex[f], str) for ex in examples for f in task.text_fields)
    # real data has a few empty texts (3 MultiRC train answers are ""), never many
    assert sum(not ex[f].strip() for ex in examples for f in task.text_fields) <= 3
    if task.is_regression:
        assert all(isinstance(ex["label"], float) and 0.0 <= ex["label"] <= 5.0 for ex in examples)
    else:
        assert set(labels(examples)) <= set(range(task.num_labels))
    if counts is not None:
        assert labels(examples) == counts


@needs_data
def test_real_details():
    assert load_split("stsb", "validation")[0]["label"] == 5.0
    assert load_split("cb", "validation")[0]["label"] == 1  # "contradiction"
    # GLUE's RTE TSV keeps the literal quote characters (read without csv quoting); SuperGLUE's copy has none
    glue_rte, sg_rte = load_split("rte", "train"), load_split("superglue-rte", "train")
    assert glue_rte[12]["sentence1"].startswith('Valero Energy Corp., on Monday, said it found "extensive"')
    assert [ex["label"] for ex in glue_rte] == [ex["label"] for ex in sg_rte]
    differ = [a["sentence1"] != b["premise"] or a["sentence2"] != b["hypothesis"] for a, b in zip(glue_rte, sg_rte)]
    assert sum(differ) == 70  # SOURCES.md: the two copies differ only in the quote characters of 70 rows
    wsc = load_split("wsc", "train")[0]
    assert (wsc["span1_text"], wsc["span2_text"], wsc["span1_index"], wsc["span2_index"]) == ("Mark", "He", 0, 13)
    multirc = load_split("multirc", "validation")
    assert len({(ex["paragraph_idx"], ex["question_idx"]) for ex in multirc}) == 953
    assert len({ex["paragraph_idx"] for ex in multirc}) == 83
    first = multirc[0]
    assert first["answer"] == "No" and first["label"] == 0 and first["question"].startswith("Would the mass")


@needs_data
def test_boolq_has_no_train_file_and_falls_back_to_the_hub_which_fails_offline():
    with pytest.raises(RetriktError) as e:
        load_split("boolq", "train")
    msg = str(e.value)
    assert "boolq" in msg and "train.jsonl" in msg and "aps/super_glue" in msg and "offline" in msg


# ------------------------------------------------------------------------------------------ other tasks
MRPC = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately "
        "distorting his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother of "
        "deliberately distorting his evidence .\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 .\t"
        "Yucaipa bought Dominick 's in 1995 .\n")
QQP = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
       "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
       "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n"
       "360472\t364011\t490273\tWhat causes stool color to change to yellow?\n"  # a row broken by a stray newline
       "What can cause stool to come out as little balls?\t0\n"
       "150662\t155721\t7256\tWhat can one do after MBBS?\tWhat do i do after my MBBS ?\t1\n")
MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2")
MNLI_TRAIN = (MNLI_HEAD + "\tlabel1\tgold_label\n"
              "0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tConceptually cream skimming has two "
              "basic dimensions - product and geography.\tProduct and geography are what make cream skimming work. "
              "\tneutral\tneutral\n"
              "1\t101457\t101457e\ttelephone\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tyou know during the season\t"
              "You lose the things to the following level\tentailment\tentailment\n"
              "2\t134793\t134793e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tOne of our number will carry out "
              "your instructions minutely.\tA member of my team will execute your orders\t"
              "contradiction\tcontradiction\n")
MNLI_DEV = (MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            "0\t63735\t63735n\tslate\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe new rights are nice enough\t"
            "Everyone really likes the newest benefits\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n")
MNLI_TEST = MNLI_HEAD + "\n0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tPremise.\tHypothesis.\n"
QNLI = ("index\tquestion\tsentence\tlabel\n"
        "0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution "
        "heralding the Second Republic came into force.\tentailment\n"
        "1\tWhat is the first major city in the stream of the Rhine?\tThe most important tributaries in this area "
        "are the Ill below of Strasbourg.\tnot_entailment\n")
WIC = [{"word": "place", "sentence1": "Do you want to come over to my place later?",
        "sentence2": "A political system with no place for the less prominent groups.", "idx": 0, "label": False,
        "start1": 31, "start2": 27, "end1": 36, "end2": 32, "version": 1.1},
       {"word": "beat", "sentence1": "We beat the competition.", "sentence2": "Agassi beat Becker in the tennis "
        "championship.", "idx": 1, "label": True, "start1": 3, "start2": 7, "end1": 7, "end2": 11, "version": 1.1}]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def other_tasks(tmp_path):
    """MRPC, QQP, MNLI, QNLI, WiC in their original formats under official (mixed-case) folder names."""
    write(tmp_path / "glue" / "MRPC" / "train.tsv", MRPC)
    write(tmp_path / "glue" / "MRPC" / "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
          "0\t1089874\t1089925\tPCCW 's chief operating officer .\tCurrent Chief Operating Officer .\n")
    write(tmp_path / "glue" / "QQP" / "train.tsv", QQP)
    write(tmp_path / "glue" / "QQP" / "test.tsv", "id\tquestion1\tquestion2\n0\tWhy?\tHow?\n")
    write(tmp_path / "glue" / "MNLI" / "train.tsv", MNLI_TRAIN)
    write(tmp_path / "glue" / "MNLI" / "dev_matched.tsv", MNLI_DEV)
    write(tmp_path / "glue" / "MNLI" / "dev_mismatched.tsv", MNLI_DEV.replace("slate", "letters"))
    write(tmp_path / "glue" / "MNLI" / "test_matched.tsv", MNLI_TEST)
    write(tmp_path / "glue" / "QNLI" / "dev.tsv", QNLI)
    write(tmp_path / "superglue" / "WiC" / "val.jsonl", jsonl(WIC))
    return tmp_path


def test_mrpc(other_tasks):
    train = load_split("mrpc", "train", data_dir=other_tasks)
    assert [ex["label"] for ex in train] == [1, 0]
    assert train[0]["sentence1"].startswith("Amrozi accused his brother , whom he called \" the witness")
    assert train[1]["sentence2"] == "Yucaipa bought Dominick 's in 1995 ."
    test = load_split("mrpc", "test", data_dir=other_tasks)
    assert test == [{"sentence1": "PCCW 's chief operating officer .", "sentence2": "Current Chief Operating Officer .",
                     "label": None, "idx": 0}]


def test_windows_line_endings_and_byte_order_mark(tmp_path):
    write(tmp_path / "glue" / "MRPC" / "dev.tsv", MRPC.replace("\n", "\r\n").encode("utf-8"))
    dev = load_split("mrpc", "validation", data_dir=tmp_path)
    assert [ex["label"] for ex in dev] == [1, 0] and dev[1]["sentence2"] == "Yucaipa bought Dominick 's in 1995 ."


def test_qqp_drops_rows_broken_by_newlines(other_tasks, caplog):
    train = load_split("qqp", "train", data_dir=other_tasks)
    assert [(ex["question1"][:6], ex["label"]) for ex in train] == [("How is", 0), ("How do", 1), ("What c", 1)]
    assert "dropped 2 row(s)" in caplog.text and "[4, 5]" in caplog.text
    assert load_split("qqp", "test", data_dir=other_tasks)[0] == {"question1": "Why?", "question2": "How?",
                                                                 "label": None, "idx": 0}


def test_mnli_splits(other_tasks):
    train = load_split("mnli", "train", data_dir=other_tasks)
    assert [ex["label"] for ex in train] == [1, 0, 2]  # neutral, entailment, contradiction
    assert train[0]["premise"].startswith("Conceptually cream") and train[2]["hypothesis"].endswith("orders")
    dev = load_split("mnli", "validation", data_dir=other_tasks)
    assert dev[0]["label"] == 1 and dev[0]["premise"] == "The new rights are nice enough"
    assert load_split("mnli", "dev_matched", data_dir=other_tasks) == dev
    assert len(load_split("mnli", "validation_mismatched", data_dir=other_tasks)) == 1
    test = load_split("mnli", "test", data_dir=other_tasks)
    assert test == [{"premise": "Premise.", "hypothesis": "Hypothesis.", "label": None, "idx": 0}]


def test_qnli_and_wic(other_tasks):
    qnli = load_split("qnli", "validation", data_dir=other_tasks)
    assert [ex["label"] for ex in qnli] == [0, 1] and qnli[1]["question"].startswith("What is the first")
    wic = load_split("wic", "val", data_dir=other_tasks)
    assert [ex["label"] for ex in wic] == [0, 1]
    assert wic[1]["word"] == "beat" and (wic[1]["start1"], wic[1]["end1"]) == (3, 7)
    assert wic[0]["sentence1"][wic[0]["start1"]:wic[0]["end1"]] == "place"


def test_lookup_is_case_insensitive_and_accepts_glue_data_layout(tmp_path):
    write(tmp_path / "glue_data" / "SST-2" / "dev.tsv", "sentence\tlabel\nit 's a charming journey . \t1\n")
    write(tmp_path / "SuperGLUE" / "CB" / "Train.jsonl",
          jsonl([{"premise": "P", "hypothesis": "H", "label": "neutral", "idx": 0}]))
    path, _ = find_split_file("SST-2", "dev", tmp_path)
    assert path == tmp_path / "glue_data" / "SST-2" / "dev.tsv"
    assert load_split("sst-2", "validation", data_dir=tmp_path)[0]["label"] == 1
    assert load_split("cb", "train", data_dir=tmp_path)[0]["label"] == 2
    write(tmp_path / "flat" / "CoLA" / "train.tsv", "gj04\t1\t\tThe sailors rode the breeze.\n"
          "gj04\t0\t*\tThe more books I ask to whom he will give.\n")
    cola = load_split("cola", "train", data_dir=tmp_path / "flat")
    assert [(ex["sentence"][:4], ex["label"]) for ex in cola] == [("The ", 1), ("The ", 0)]


def test_cola_test_file_has_a_header(tmp_path):
    write(tmp_path / "glue" / "CoLA" / "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
    assert load_split("cola", "test", data_dir=tmp_path) == [
        {"sentence": "Bill whistled past the house.", "label": None, "idx": 0}]


def test_missing_file_names_the_paths_and_the_task(tmp_path):
    (tmp_path / "glue" / "mrpc").mkdir(parents=True)
    with pytest.raises(RetriktError) as e:
        load_split("mrpc", "validation", data_dir=tmp_path)
    msg = str(e.value)
    assert "mrpc" in msg and str(tmp_path / "glue" / "mrpc" / "dev.tsv") in msg and "nyu-mll/glue" in msg


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(RetriktError, match="does not exist"):
        load_split("cb", "train", data_dir=tmp_path / "nope")


def test_hub_rows_are_converted(monkeypatch, tmp_path):
    rows = {"mrpc": [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 7},
                     {"sentence1": "c", "sentence2": "d", "label": -1, "idx": 8}],
            "multirc": [{"paragraph": "P", "question": "Q", "answer": "A", "label": 1,
                         "idx": {"paragraph": 0, "question": 3, "answer": 9}}]}
    calls = []

    def fake(path, config, split):
        calls.append((path, config, split))
        return rows[config]
    monkeypatch.setattr(loaders, "_hub_rows", fake)
    mrpc = load_split("mrpc", "validation", data_dir=tmp_path)
    assert mrpc == [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
                    {"sentence1": "c", "sentence2": "d", "label": None, "idx": 1}]
    multirc = load_split("multirc", "train", data_dir=tmp_path)
    assert multirc[0]["question_idx"] == 3 and multirc[0]["answer_idx"] == 9 and multirc[0]["label"] == 1
    with pytest.raises(RetriktError, match="validation_mismatched"):
        load_split("mnli", "validation_mismatched", data_dir=tmp_path)
    assert calls == [("nyu-mll/glue", "mrpc", "validation"), ("aps/super_glue", "multirc", "train"),
                     ("nyu-mll/glue", "mnli", "validation_mismatched")]


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RETRIKT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("RETRIKT_DATA_DIR")
    found = default_data_dir()
    assert found is None or (found.is_dir() and found.parts[-2:] == ("shared", "data"))


# ------------------------------------------------------------------------------------------ malformed input
def check_error(path: Path, line: int, match: str, task: str, split: str = "train"):
    with pytest.raises(RetriktError) as e:
        load_split(task, split, data_dir=path.parents[2])
    msg = str(e.value)
    assert str(path) in msg and f"line {line}" in msg and match in msg, msg


CB_ROW = {"premise": "P", "hypothesis": "H", "label": "neutral", "idx": 0}


@pytest.mark.parametrize("text,line,match", [
    (jsonl([CB_ROW]) + '{"premise": "P", "hypothesis": \n', 2, "not valid JSON"),
    (jsonl([CB_ROW, {"premise": "P", "hypothesis": "H", "idx": 1}]), 2, "no 'label' field"),
    (jsonl([CB_ROW, CB_ROW, {**CB_ROW, "label": "maybe"}]), 3, "'maybe' is not a label of task cb"),
    (jsonl([CB_ROW, {**CB_ROW, "label": 3}]), 2, "is not a label"),
    (jsonl([{"premise": "P", "label": "neutral"}]), 1, "no 'hypothesis' field"),
    (jsonl([{**CB_ROW, "premise": 5}]), 1, "expected a string"),
    ("", 1, "empty file"),
    ("\n\n", 1, "empty file"),
    (b'{"premise": "P", "hypothesis": "H", "label": "neutral"}\n{"premise": "caf\xe9"}\n', 2, "not UTF-8"),
])
def test_jsonl_errors(tmp_path, text, line, match):
    path = write(tmp_path / "superglue" / "cb" / "train.jsonl", text)
    check_error(path, line, match, "cb")


RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize("text,line,match", [
    (RTE_HEAD + "0\tA.\tB.\tentailment\n1\tA.\tnot_entailment\n", 3, "3 tab-separated columns, expected 4"),
    (RTE_HEAD + "0\tA.\tB.\tentailment\textra\n", 2, "5 tab-separated columns"),
    (RTE_HEAD + "0\tA.\tB.\tentailment\n1\tA.\tB.\tcontradiction\n", 3, "'contradiction' is not a label"),
    (RTE_HEAD + "0\tA.\tB.\t\n", 2, "empty label"),
    ("index\tsentence1\tsentence2\n0\tA.\tB.\n", 1, "no label column 'label'"),
    ("index\tpremise\thypothesis\tlabel\n0\tA.\tB.\tentailment\n", 1, "no column 'sentence1'"),
    (RTE_HEAD, 1, "a header but no examples"),
    ("", 1, "empty file"),
    (RTE_HEAD.encode() + b"0\tA.\tB.\tentailment\n1\tna\xefve\xff\tB.\tentailment\n", 3, "not UTF-8"),
])
def test_tsv_errors(tmp_path, text, line, match):
    path = write(tmp_path / "glue" / "rte" / "train.tsv", text)
    check_error(path, line, match, "rte")


def test_glue_int_label_out_of_range(tmp_path):
    path = write(tmp_path / "glue" / "SST-2" / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t7\n")
    check_error(path, 3, "'7' is not a label of task sst2", "sst2")


def test_stsb_score_must_be_a_number(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = write(tmp_path / "glue" / "STS-B" / "dev.tsv",
                 head + "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA.\tB.\t5.000\n"
                        "1\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA.\tB.\thigh\n")
    check_error(path, 3, "not a number", "stsb", "validation")


def test_multirc_errors_name_the_answer(tmp_path):
    good = {"idx": 0, "passage": {"text": "T", "questions": [
        {"question": "Q", "idx": 0, "answers": [{"text": "A", "idx": 0, "label": 1}]}]}}
    bad = {"idx": 1, "passage": {"text": "T", "questions": [
        {"question": "Q", "idx": 1, "answers": [{"text": "A", "idx": 1, "label": 1}, {"text": "B", "idx": 2}]}]}}
    path = write(tmp_path / "superglue" / "MultiRC" / "train.jsonl", jsonl([good, bad]))
    check_error(path, 2, "passage.questions[0].answers[1]: no 'label' field", "multirc")
    write(path, jsonl([good, {"idx": 1, "passage": "flat text"}]))
    check_error(path, 2, "MultiRC format", "multirc")
