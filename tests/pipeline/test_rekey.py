"""A store re-keyed by another embedder: same entries in the same order, the new keys, the source's provenance."""
import numpy as np
import pytest

from retrikt.io import RetriktError
from retrikt.pipeline.rekey import rekey_store
from retrikt.store import Store
from tests.student.test_retrieval import _tiny_store


class _FakeEmbedder:
    """8-d keys that depend on the text, so a re-keyed row can be checked against its entry."""

    def get_embedding_dimension(self):
        return 8

    def encode(self, texts, normalize_embeddings=True, **_):
        x = np.array([[len(t) + i for i in range(8)] for t in map(str, texts)], dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rekeyed_store_keeps_entries_and_provenance_with_the_new_embedders_keys(tmp_path, monkeypatch):
    from retrikt import models
    src = _tiny_store(tmp_path / "src", seed=2, kshot_idx=[5, 7])
    monkeypatch.setattr(models, "load_sentence_transformer", lambda name, device=None: _FakeEmbedder())
    out = rekey_store(src, "fake-8d", tmp_path / "out")
    a, b = Store.open(src), Store.open(out)
    assert b.entries(range(len(b))) == a.entries(range(len(a)))
    texts = [e["fields"]["sentence"] for e in a.entries(range(len(a)))]
    np.testing.assert_allclose(b.embeddings, _FakeEmbedder().encode(texts), atol=1e-6)
    assert b.manifest["embedder"]["name"] == "fake-8d" and b.manifest["embedder"]["dim"] == 8
    assert b.manifest["seed"] == 2 and b.manifest["kshot_idx"] == [5, 7]  # a student still checks its k-shot set
    assert b.manifest["rekeyed_from"]["checksum"] == a.checksum
    with pytest.raises(RetriktError, match="already holds"):
        rekey_store(src, "fake-8d", out)
