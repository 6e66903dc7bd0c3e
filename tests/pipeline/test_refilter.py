"""A store re-filtered at a stricter agreement threshold holds exactly the entries a build at that threshold keeps."""
import json

import numpy as np
import pytest

from retrikt.build import main as build_main
from retrikt.io import RetriktError
from retrikt.pipeline import run as B
from retrikt.pipeline.refilter import refilter_store
from retrikt.store import Store
from retrikt.teacher.softprompt import SoftPromptGenerator
from tests.pipeline.test_build import KINDS, _handmade_generate, _ScriptedLabeller, cfg  # noqa: F401 (fixture)


def _build(cfg, out, threshold):
    cfg.per_label, cfg.batch_size, cfg.min_agreement, cfg.out = 1, 1, threshold, str(out)
    return Store.open(B.build_store(cfg))


def _rows(store):
    return sorted(json.dumps([e["fields"], e["label"], e["soft_label"]], sort_keys=True)
                  for e in store.entries(range(len(store))))


@pytest.fixture
def handmade(cfg, monkeypatch, tmp_path):  # noqa: F811 (the build tests' fixture)
    monkeypatch.setattr(SoftPromptGenerator, "generate", _handmade_generate)
    monkeypatch.setattr(B, "_labeller", lambda *a, **k: _ScriptedLabeller())
    return cfg


@pytest.mark.parametrize("threshold", [0.4, 0.46, 0.5, 0.6])
def test_refiltered_store_equals_a_build_at_that_threshold(handmade, tmp_path, threshold):
    src = _build(handmade, tmp_path / "a0", 0.0)
    direct = _build(handmade, tmp_path / f"direct-{threshold}", threshold)
    out = Store.open(refilter_store(src.folder, threshold, tmp_path / f"re-{threshold}"))
    assert _rows(out) == _rows(direct) and len(out) < len(src)
    rows = {json.dumps(e["fields"], sort_keys=True): i for i, e in enumerate(src.entries(range(len(src))))}
    for i, e in enumerate(out.entries(range(len(out)))):  # each kept row keeps its own key
        np.testing.assert_array_equal(out.embeddings[i], src.embeddings[rows[json.dumps(e["fields"], sort_keys=True)]])
    m, d = out.manifest, direct.manifest
    assert m["config"]["min_agreement"] == threshold and m["seed"] == src.manifest["seed"]
    assert m["kshot_idx"] == src.manifest["kshot_idx"]  # a student still checks the store's k-shot set
    assert {k: m["refiltered_from"][k] for k in ("store", "checksum", "entries", "min_agreement")} == {
        "store": str(src.folder.resolve()), "checksum": src.checksum, "entries": len(src), "min_agreement": 0.0}
    assert m["refiltered_from"].pop("exact") is True and "git_commit" in m["refiltered_from"]
    for key in ("kept", "agreed", "disagree", "agree", "generated", "exact_dups", "near_dups", "keep_rate"):
        assert m["stats"][key] == d["stats"][key], key


def _same_text(self, conditions, n_per_condition=1, seed=0, **kw):
    """Every label's batch writes the same sample, which the labeller reads as label 1 ("dog 7 1")."""
    return [{"condition": conditions[0], "text": " dog 7 1\nhypothesis: the dog", "tokens": [1] * 5,
             "finished": True}]


def test_an_entry_shadowed_by_a_dropped_duplicate_comes_back_as_in_a_build(handmade, monkeypatch, tmp_path):
    # at 0 the label-0 copy (which the labeller disagrees with) comes first and the later copies are duplicates of
    # it; at 0.5 that copy is filtered out before the duplicate filter, so the label-1 copy is kept
    monkeypatch.setattr(SoftPromptGenerator, "generate", _same_text)
    src = _build(handmade, tmp_path / "a0", 0.0)
    direct = _build(handmade, tmp_path / "a5", 0.5)
    assert [e["label"] for e in src.entries(range(len(src)))] == [0]
    assert [e["label"] for e in direct.entries(range(len(direct)))] == [1]
    out = Store.open(refilter_store(src.folder, 0.5, tmp_path / "re5"))
    assert _rows(out) == _rows(direct)
    for key in ("kept", "agreed", "disagree", "exact_dups", "near_dups"):
        assert out.manifest["stats"][key] == direct.manifest["stats"][key], key


def test_refilter_refuses_a_looser_threshold_an_oracle_store_and_an_existing_out(handmade, tmp_path):
    src = _build(handmade, tmp_path / "a5", 0.5)
    with pytest.raises(RetriktError, match="built with --min-agreement 0.5"):
        refilter_store(src.folder, 0.4, tmp_path / "loose")
    assert not (tmp_path / "loose").exists()
    out = refilter_store(src.folder, 0.9, tmp_path / "strict")
    with pytest.raises(RetriktError, match="already holds"):
        refilter_store(src.folder, 0.9, out)
    with pytest.raises(RetriktError, match="no entry passes"):
        refilter_store(src.folder, 0.95, tmp_path / "none")
    (tmp_path / "killed" / "parts").mkdir(parents=True)  # a build or re-filter killed there: its parts would mix in
    with pytest.raises(RetriktError, match="unfinished"):
        refilter_store(src.folder, 0.9, tmp_path / "killed")
    from tests.student.test_retrieval import _tiny_store
    oracle = _tiny_store(tmp_path / "oracle", source="oracle", config={"min_agreement": 0.0})
    with pytest.raises(RetriktError, match="oracle store"):
        refilter_store(oracle, 0.5, tmp_path / "o5")
    older = _tiny_store(tmp_path / "older")
    with pytest.raises(RetriktError, match="records no --min-agreement"):
        refilter_store(older, 0.5, tmp_path / "old5")


def test_build_cli_refilters_with_from_store(handmade, tmp_path, capsys):
    src = _build(handmade, tmp_path / "a0", 0.0)
    assert build_main(["--from-store", str(src.folder), "--min-agreement", "0.5"]) == 2
    assert "--from-store needs --out" in capsys.readouterr().err
    assert build_main(["--from-store", str(src.folder), "--min-agreement", "0.5", "--out",
                       str(tmp_path / "a5")]) == 0
    assert "entries" in capsys.readouterr().out
    assert len(Store.open(tmp_path / "a5")) == 6  # sure and edge, for each of the three labels


def test_teacher_keys_follow_their_rows_into_the_refiltered_store(tmp_path):
    from safetensors.numpy import load_file

    from retrikt import models
    from retrikt.pipeline.keys import add_teacher_keys
    from retrikt.store import StoreWriter
    from retrikt.store.teacher_keys import KEYS_FILE, load_teacher_keys
    from retrikt.tasks import get_task
    from retrikt.teacher.lm import LMClassifier
    from tests.student.test_retrieval import KSHOT
    from tests.tiny import tiny_qwen, tiny_tokenizer
    texts = ["good movie", "great film", "bad movie", "terrible film", "a good dog", "a bad cat"]
    probs = [0.9, 0.6, 0.8, 0.3, 0.75, 0.95]  # of each entry's label; 0.3: the labeller's argmax is the other one
    entries = [{"fields": {"sentence": t}, "label": i % 2, "soft_label": [1 - p, p] if i % 2 else [p, 1 - p],
                "meta": {"agree": p > 0.5}} for i, (t, p) in enumerate(zip(texts, probs))]
    emb = np.asarray(models.load_sentence_transformer("tiny-encoder").encode(texts, normalize_embeddings=True))
    meta = {"task": "sst2", "teacher": "t", "embedder": {"name": "tiny-encoder", "dim": 64, "normalize": True},
            "config": {"min_agreement": 0.0}, "seed": 1, "kshot_idx": [e["idx"] for e in KSHOT]}
    with StoreWriter(tmp_path / "src", meta) as w:
        w.add_batch(0, entries, emb)
        src = w.finalize(index_kind="flat")
    tok = tiny_tokenizer()
    add_teacher_keys(src, classifier=(LMClassifier(tiny_qwen(tok), tok, get_task("sst2")), KSHOT))
    out = Store.open(refilter_store(src, 0.7, tmp_path / "a7"))
    assert [e["fields"]["sentence"] for e in out.entries(range(len(out)))] == ["good movie", "bad movie",
                                                                                "a good dog", "a bad cat"]
    raw, new = load_file(str(src / KEYS_FILE)), load_file(str(out.folder / KEYS_FILE))
    np.testing.assert_array_equal(new["entries"], raw["entries"][[0, 2, 4, 5]])
    np.testing.assert_array_equal(new["kshot"], raw["kshot"])
    assert load_teacher_keys(out).entries.shape[0] == 4  # verified against the new store's checksum
    assert out.manifest["refiltered_from"]["exact"] is False  # no build shards: filtered entry by entry
