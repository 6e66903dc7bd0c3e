"""Teacher keys: the labeller's answer states written beside a store, read back verified, and a retrieval student
that searches them."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from retrikt.io import RetriktError
from retrikt.pipeline.keys import add_teacher_keys
from retrikt.store import Store
from retrikt.store.teacher_keys import KEYS_FILE, KEYS_META, load_teacher_keys
from retrikt.tasks import get_task
from retrikt.teacher.lm import LMClassifier
from tests.student.test_retrieval import EX, KSHOT, _tiny_store
from tests.tiny import tiny_qwen, tiny_tokenizer


@pytest.fixture()
def keyed(tmp_path):
    """A tiny store built from KSHOT, with teacher keys from a tiny causal LM labeller."""
    folder = _tiny_store(tmp_path / "store", seed=1, kshot_idx=[e["idx"] for e in KSHOT])
    tok = tiny_tokenizer()
    clf = LMClassifier(tiny_qwen(tok), tok, get_task("sst2"))
    add_teacher_keys(folder, classifier=(clf, KSHOT))
    return Store.open(folder), clf


def test_teacher_keys_round_trip_through_the_store_files(keyed):
    store, clf = keyed
    texts = [dict(e["fields"]) for e in store.entries(range(len(store)))]
    raw = load_file(str(store.folder / KEYS_FILE))
    np.testing.assert_allclose(raw["entries"], clf.answer_states(texts), atol=1e-5)
    np.testing.assert_allclose(raw["kshot"], clf.answer_states(KSHOT), atol=1e-5)
    keys = load_teacher_keys(store)
    assert keys.entries.shape == (len(store), clf.model.config.hidden_size) and len(keys.kshot) == len(KSHOT)
    np.testing.assert_allclose(np.linalg.norm(keys.entries, axis=1), 1.0, atol=1e-5)
    centred = raw["entries"] - raw["entries"].mean(0)
    np.testing.assert_allclose(keys.entries[0], centred[0] / np.linalg.norm(centred[0]), atol=1e-5)
    assert store.checksum == Store.open(store.folder).checksum  # the store itself is untouched


def test_teacher_keys_of_another_store_version_or_edited_are_refused(keyed):
    store, _ = keyed
    meta_path = store.folder / KEYS_META
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"store_checksum": "0" * 64}))
    with pytest.raises(RetriktError, match="another version of this store"):
        load_teacher_keys(store)
    meta_path.write_text(json.dumps(meta | {"sha256": "0" * 64}))
    with pytest.raises(RetriktError, match="corrupted or edited"):
        load_teacher_keys(store)
    (store.folder / KEYS_FILE).unlink()
    with pytest.raises(RetriktError, match="python -m retrikt.keys"):
        load_teacher_keys(store)


def test_a_retrieval_student_trains_and_retrieves_in_the_teacher_key_space(keyed, tmp_path):
    from retrikt.methods import TrainConfig, run_method
    from retrikt.student.retrieval import load_retrieval_student
    store, _ = keyed
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(store.folder), epochs=2,
                      retrieval_keys="teacher")
    train = [dict(e) for e in KSHOT]
    model, extra = run_method(cfg, get_task("sst2"), train, seed=1)
    assert extra["retrieval"]["keys"] == "teacher" and {r["keys"] for r in extra["selection"]["grid"]} == {"teacher", "none"}
    assert model.proj.out_features == model.teacher_keys.dim
    p = model.predict_proba(EX)
    _, scores, ids = model._student_and_neighbours(EX, 3)
    import torch
    with torch.no_grad():  # the projected query, searched exactly against the teacher keys
        sims = model.query(model.tokenize(EX)).numpy() @ model.teacher_keys.entries.T
    np.testing.assert_allclose(scores, -np.sort(-sims, axis=1)[:, :3], atol=1e-5)
    assert ids.max() < len(store)
    model.save(tmp_path / "student", meta={"base": "tiny-encoder"})
    again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="tiny-encoder")
    np.testing.assert_allclose(again.predict_proba(EX), p, atol=1e-5)
    with pytest.raises(RetriktError, match="retrieve-from store"):
        run_method(TrainConfig(**{**cfg.__dict__, "retrieve_from": "both"}), get_task("sst2"), train, seed=1)


def test_auto_keys_train_towards_valid_teacher_keys_and_fall_back_to_the_stores_own(keyed, caplog):
    from retrikt.methods import TrainConfig
    from retrikt.methods.retrikt import trained_keys
    store, _ = keyed
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(store.folder))
    assert cfg.retrieval_keys == "auto" and trained_keys(cfg, store) == "teacher"
    assert trained_keys(TrainConfig(**{**cfg.__dict__, "retrieve_from": "both"}), store) == "store"
    assert trained_keys(TrainConfig(**{**cfg.__dict__, "retrieval_keys": "store"}), store) == "store"
    meta_path = store.folder / KEYS_META
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | {"store_checksum": "0" * 64}))
    with caplog.at_level("WARNING"):
        assert trained_keys(cfg, store) == "store"  # stale keys: a warning, not a failed run
    assert "another version of this store" in caplog.text
    (store.folder / KEYS_FILE).unlink(), meta_path.unlink()
    assert trained_keys(cfg, store) == "store"


def test_a_student_trained_towards_teacher_keys_may_search_its_own(keyed, tmp_path, monkeypatch):
    """When the CV picks the student's own keys, the final student is still trained towards the teacher's (as the
    fold students it scored were), searches its own, scores every variant, and reloads so."""
    import retrikt.methods.retrikt as rk
    from retrikt.eval.harness import evaluate_variants
    from retrikt.methods import TrainConfig, run_method
    from retrikt.student.retrieval import load_retrieval_student
    store, _ = keyed
    real = rk._cross_validate

    def pick_student_keys(*args, **kwargs):
        out = real(*args, **kwargs)
        return out | {"keys": "student", "beta": 0.5, "k": 2}
    monkeypatch.setattr(rk, "_cross_validate", pick_student_keys)
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(store.folder), epochs=1)
    model, extra = run_method(cfg, get_task("sst2"), [dict(e) for e in KSHOT], seed=1)
    assert model.trained_keys == "teacher" and model.settings.keys == "student" == extra["retrieval"]["keys"]
    assert model.proj.out_features == model.teacher_keys.dim
    scored = evaluate_variants(model, get_task("sst2"), EX)
    assert {"keys teacher", "keys student"} <= set(scored) and model.settings.keys == "student"
    p = model.predict_proba(EX)
    model.save(tmp_path / "student", meta={"base": "tiny-encoder"})
    again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="tiny-encoder")
    assert again.settings.keys == "student" and again.trained_keys == "teacher"
    np.testing.assert_allclose(again.predict_proba(EX), p, atol=1e-5)


def test_transform_puts_other_inputs_answer_states_in_the_keys_space(keyed):
    # queries keyed at retrieval time must go through the same centring as the stored keys, or cosines to them differ
    store, clf = keyed
    keys = load_teacher_keys(store)
    raw = clf.answer_states(KSHOT)
    got = keys.transform(raw)
    for e, row in zip(KSHOT, got):
        np.testing.assert_allclose(row, keys.kshot[e["idx"]], atol=1e-5)
    assert not np.allclose(got, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-3)
