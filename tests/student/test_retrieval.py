import numpy as np
import pytest
import torch

from retrikt.io import RetriktError
from retrikt.store import StoreWriter
from retrikt.student.encoder import EncoderClassifier
from retrikt.student.retrieval import (MemoryStore, RetrievalSettings, RetrievalStudent, load_retrieval_student,
                                       relational_targets)
from retrikt.tasks import get_task
from tests.tiny import tiny_bert, tiny_tokenizer

EX = [{"idx": i, "sentence": s, "label": i % 2} for i, s in enumerate(["good movie", "bad film", "a great dog"])]


def _memory_store(dim=32, n=6, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    soft = rng.dirichlet([1, 1], size=n)
    entries = [{"fields": {"sentence": f"s{i}"}, "label": int(i % 2), "soft_label": soft[i].tolist()} for i in range(n)]
    return MemoryStore(emb, entries, {"name": "tiny", "dim": dim})


def _student(store, **settings):
    tok = tiny_tokenizer()
    base = EncoderClassifier(tiny_bert(tok), tok, get_task("sst2"))
    return RetrievalStudent(base, store, RetrievalSettings(**settings))


def test_mixture_equals_hand_computed():
    store = _memory_store()
    model = _student(store)
    p_student = np.array([[0.9, 0.1]])
    scores, ids = np.array([[0.8, 0.5, 0.1]]), np.array([[2, 0, 5]])
    beta, tau, k = 0.3, 0.2, 2
    w = np.exp(np.array([0.8, 0.5]) / tau)
    w /= w.sum()
    teacher = np.array([store.entries([2])[0]["soft_label"], store.entries([0])[0]["soft_label"]])
    expected = beta * p_student + (1 - beta) * (w[:, None] * teacher).sum(0)
    np.testing.assert_allclose(model.mix(p_student, scores, ids, k, beta, tau), expected, rtol=1e-6)


def test_beta_one_is_exactly_the_students_own_prediction():
    store = _memory_store()
    model = _student(store, beta=1.0, k=4)
    np.testing.assert_array_equal(model.predict_proba(EX), model.base.predict_proba(EX))
    model.settings.beta = 0.5
    assert not np.allclose(model.predict_proba(EX), model.base.predict_proba(EX))


def test_projection_starts_at_identity_when_dims_match():
    model = _student(_memory_store(dim=32))
    assert torch.equal(model.proj.weight, torch.eye(32))


def test_relational_targets_exclude_the_entry_itself():
    store = _memory_store()
    ids, sims = relational_targets(store, store.embeddings, 3, exclude=list(range(len(store))))
    assert all(i not in row for i, row in enumerate(ids))
    np.testing.assert_allclose(sims[0], store.embeddings[0] @ store.embeddings[ids[0]].T, rtol=1e-5)


def _real_store(folder, seed):
    mem = _memory_store(seed=seed)
    with StoreWriter(folder, {"task": "sst2", "teacher": "t", "embedder": {"name": "tiny", "dim": 32,
                                                                           "normalize": True}}) as w:
        w.add_batch(0, [dict(e, meta={}) for e in mem.entries(range(len(mem)))], mem.embeddings)
        w.finalize(index_kind="flat")
    from retrikt.store import Store
    return Store.open(folder)


def test_saved_student_refuses_a_store_whose_manifest_differs(tmp_path, monkeypatch):
    store = _real_store(tmp_path / "store", seed=0)
    model = _student(store)
    model.save(tmp_path / "student", meta={"base": "x"})
    other = _real_store(tmp_path / "other", seed=1)
    import retrikt.student.encoder as enc

    def fake_load_student(folder, task, base=None, device=None):
        return model.base

    monkeypatch.setattr(enc, "load_student", fake_load_student)
    again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="x")
    np.testing.assert_allclose(again.predict_proba(EX), model.predict_proba(EX), rtol=1e-6)
    with pytest.raises(RetriktError, match="different or rebuilt store"):
        load_retrieval_student(tmp_path / "student", get_task("sst2"), base="x", store_path=str(other.folder))
