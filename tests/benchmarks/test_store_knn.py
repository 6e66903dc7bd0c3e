import numpy as np

from benchmarks.store_knn import knn_predict

LABELS = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], dtype=np.float32)


def test_sharp_temperature_follows_the_nearest_neighbour():
    sims = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    # tau 0.1: weights ~ e^9 : e^8 : e^1, so 0.73 * 0.9 + 0.27 * 0.2 = 0.71 for label 0
    assert knn_predict(sims, np.array([[0, 1, 2]]), LABELS, tau=0.1).tolist() == [0]


def test_equal_similarities_average_the_neighbours_labels():
    sims = np.full((1, 3), 0.5, dtype=np.float32)
    # mean of the three: label 0 = 1.5 / 3 = label 1; only neighbours 1 and 2 -> label 1 (0.7)
    assert knn_predict(sims[:, :2], np.array([[1, 2]]), LABELS, tau=1.0).tolist() == [1]
    assert knn_predict(sims[:, :1], np.array([[0]]), LABELS, tau=1.0).tolist() == [0]


def test_calibrated_store_labels_divide_by_the_labellers_prior(monkeypatch):
    from types import SimpleNamespace

    import benchmarks.store_knn as bench
    from retrikt.teacher.lm import LMClassifier
    from retrikt.tasks import get_task
    from tests.tiny import tiny_qwen, tiny_tokenizer
    tok = tiny_tokenizer()
    model = tiny_qwen(tok)
    task = get_task("cb")
    pool = [{"idx": i, "premise": f"p {i}", "hypothesis": f"h {i}", "label": i % 3} for i in range(6)]
    monkeypatch.setattr(bench, "load_split", lambda *a, **k: pool)
    monkeypatch.setattr(bench.models, "load_causal_lm", lambda *a, **k: (model, tok))
    store = SimpleNamespace(manifest={"teacher": "tiny", "kshot_idx": [4, 2, 0],
                                      "config": {"label_demos": 2, "label_calibration": "none"}})
    soft = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)
    prior = LMClassifier(model, tok, task, demos=[pool[4], pool[2]], calibrate="content-free").label_prior()
    want = soft / prior
    np.testing.assert_allclose(bench.calibrated(store, task, soft, None), want / want.sum(1, keepdims=True),
                               rtol=1e-5)
    store.manifest["config"]["label_calibration"] = "content-free"   # already calibrated when stored
    assert bench.calibrated(store, task, soft, None) is None


def test_summary_averages_each_task_s_stores_against_their_own_k_shot_kNN():
    from benchmarks.store_knn import summary
    rows = [{"task": "sst2", "entries": 1000, "teacher_soft": {4: 0.70}, "kshot": {4: [0.60]}},
            {"task": "sst2", "entries": 1200, "teacher_soft": {4: 0.66}, "kshot": {4: [0.64]}},
            {"task": "cb", "entries": 30, "teacher_soft": {4: 0.40}, "kshot": {4: [0.50]}}]
    lines = summary(rows, [4]).splitlines()
    assert lines[2] == "| sst2 | 2 | 1000 / 1200 | 68.0 / 62.0 / +6.0 |"
    assert lines[3] == "| cb | 1 | 30 | 40.0 / 50.0 / -10.0 |"
    rows[0]["teacher_prior"] = {4: 0.72}  # only the stores with prior-matched scores enter that summary
    assert summary(rows, [4], labels="teacher_prior").splitlines()[2:] == ["| sst2 | 1 | 1000 | 72.0 / 60.0 / +12.0 |"]


def test_one_seed_shows_no_spread():
    from benchmarks.store_knn import _spread
    assert _spread([0.5]) == "50.0" and _spread([0.4, 0.6]) == "50.0 ± 10.0"


def test_agreed_rows_are_what_the_agreement_filter_would_keep():
    from benchmarks.store_knn import agreed_rows
    entries = [{"meta": {"agree": True}}, {"meta": {"agree": False}}, {"meta": {"agree": True}}, {"meta": {}}]
    assert agreed_rows(entries) == [0, 2]
    # a filtered store (no disagreeing entry kept) has no second row to show
    assert agreed_rows([{"meta": {"agree": True}}, {"meta": {}}]) is None


def test_table_shows_the_agreed_only_row_with_its_size():
    from benchmarks.store_knn import table
    row = {"store": "s", "entries": 10, "majority": 0.5, "teacher_soft": {4: 0.6}, "conditioned": {4: 0.55},
           "agreed_only": {"entries": 4, "scores": {4: 0.7}}, "kshot": {4: [0.5]}, "both": {4: [0.6]}}
    assert "| s | 10 | 50.0 | store, teacher labels, only the 4 agreeing entries | 70.0 |" in table([row], [4])


def test_no_calibrated_labels_from_an_adapted_labeller():
    from types import SimpleNamespace

    import benchmarks.store_knn as bench
    store = SimpleNamespace(manifest={"labeller": {"kind": "adapted"}, "config": {"label_calibration": "none"}})
    assert bench.calibrated(store, None, np.ones((1, 2), dtype=np.float32), None) is None


def test_oracle_gold_reads_the_real_labels_of_an_oracle_store_s_inputs():
    from benchmarks.store_knn import oracle_gold
    # looked up by each example's idx, not its position in the list
    pool = [{"idx": 10, "label": 0}, {"idx": 11, "label": 1}, {"idx": 12, "label": 1}]
    assert oracle_gold([{"meta": {"train_idx": 12}}, {"meta": {"train_idx": 10}}], pool) == [1, 0]
    # a generated store (any entry without a training index) has no gold labels to look up
    assert oracle_gold([{"meta": {"train_idx": 12}}, {"meta": {"finished": True}}], pool) is None


def test_table_shows_the_gold_row_with_the_labeller_s_accuracy():
    from benchmarks.store_knn import table
    row = {"store": "s", "entries": 10, "majority": 0.5, "teacher_soft": {4: 0.6}, "conditioned": {4: 0.55},
           "gold_labels": {4: 0.75}, "labeller_accuracy": 0.646, "kshot": {4: [0.5]}, "both": {4: [0.6]}}
    assert "| s | 10 | 50.0 | store, gold labels of its real inputs (labeller 64.6% right) | 75.0 |" in table([row], [4])


def test_spaces_summary_sets_each_key_space_s_store_kNN_beside_its_own_k_shot_kNN():
    from benchmarks.store_knn import spaces_summary
    space = {"teacher_soft": {4: 0.80}, "kshot": {4: 0.70}, "labeller": 0.75}
    rows = [{"task": "sst2", "store_embedder": "minilm-l6", "teacher_soft": {4: 0.62}, "teacher_prior": {4: 0.64},
             "kshot": {4: [0.60]}, "spaces": {"teacher": space}},
            {"task": "sst2", "store_embedder": "minilm-l6", "teacher_soft": {4: 0.66}, "kshot": {4: [0.58]},
             "spaces": {"teacher": space | {"teacher_soft": {4: 0.90}, "labeller": 0.85}}}]
    lines = spaces_summary(rows, [4]).splitlines()
    assert "| sst2 | store (minilm-l6) | store, teacher labels | 64.0 |" in lines
    assert "| sst2 | store (minilm-l6) | Δ store − k-shot | +5.0 |" in lines
    assert not any("store (minilm-l6) | store, matched" in x for x in lines)  # one store lacks the prior row
    assert "| sst2 | teacher; labeller alone 80.0 | store, teacher labels | 85.0 |" in lines
    assert "| sst2 | teacher; labeller alone 80.0 | Δ store − k-shot | +15.0 |" in lines


def test_earlier_rows_come_back_with_int_neighbour_counts_and_their_file(tmp_path):
    import json

    from benchmarks.store_knn import earlier_rows, summary, table
    row = {"store": "/x/rte-s1", "task": "rte", "entries": 9, "majority": 0.5, "teacher_soft": {4: 0.6},
           "conditioned": {4: 0.5}, "kshot": {4: [0.55]}, "both": {4: [0.58]}}
    f = tmp_path / "knn.json"
    f.write_text(json.dumps({"git_commit": "abc", "rows": [row, dict(row, store="/x/cb-s1", task="cb")]}))
    got = earlier_rows(f"{f}:rte")  # JSON turned the k's into strings; the tables index them by int
    assert len(got) == 1 and got[0]["teacher_soft"] == {4: 0.6} and got[0]["kshot"] == {4: [0.55]}
    assert got[0]["measured_in"] == {"file": "knn.json", "git_commit": "abc"}
    assert "| /x/rte-s1 (knn.json) | 9 | 50.0 | store, teacher labels | 60.0 |" in table(got, [4])
    assert summary(got, [4]).splitlines()[2] == "| rte | 1 | 9 | 60.0 / 55.0 / +5.0 |"
