import dataclasses

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
    # conditioned labels: entries 2 and 0 were both generated for label 0
    cond = beta * p_student + (1 - beta) * np.array([[1.0, 0.0]])
    np.testing.assert_allclose(model.mix(p_student, scores, ids, k, beta, tau, "conditioned"), cond, rtol=1e-6)


def test_label_source_is_chosen_on_held_out_examples_when_auto():
    from retrikt.student.selection import choose_settings
    store = _memory_store(n=6)
    model = _student(store)
    # teacher soft labels that always contradict the conditioned (here: correct) label
    model.teacher_probs = 1.0 - model.conditioned_probs
    dev_q = store.embeddings                      # each dev example sits on an entry of its own label
    dev = [{"idx": i, "sentence": f"s{i}", "label": i % 2} for i in range(6)]
    model._student_and_neighbours = lambda ex, k: (np.full((6, 2), 0.5), *store.search(dev_q, k))
    chosen = choose_settings(model, dev, grid_labels=("teacher", "conditioned"))
    assert chosen["labels"] == "conditioned" and chosen["beta"] < 1 and chosen["dev_main"] == 1.0
    assert choose_settings(model, dev)["labels"] == "teacher"   # not offered: the paper's default stays


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


def test_a_one_entry_store_has_no_neighbours_and_trains_without_the_relational_loss(tmp_path):
    store = _memory_store(n=1)
    ids, sims = relational_targets(store, store.embeddings, 0, exclude=[0])
    assert ids.shape == (1, 0) and ids.dtype == np.int64 and sims.shape == (1, 0)
    from retrikt.methods import TrainConfig, run_method
    path = _tiny_store(tmp_path / "one", texts=["good movie"])
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(path), epochs=1)
    train = [{"idx": i, "sentence": s, "label": y} for i, (s, y) in enumerate([("good film", 1), ("bad film", 0)] * 4)]
    model, extra = run_method(cfg, get_task("sst2"), train, seed=1)
    assert extra["store_entries"] == 1 and np.allclose(model.predict_proba(EX).sum(1), 1, atol=1e-5)


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


def test_student_keys_are_the_trained_students_embeddings_of_the_store_texts_and_survive_a_reload(tmp_path,
                                                                                                 monkeypatch):
    from retrikt.store import Store
    store = Store.open(_tiny_store(tmp_path / "store"))
    model = _student(store, keys="student", k=3, beta=0.0)
    texts = [{"sentence": e["fields"]["sentence"]} for e in store.entries(range(len(store)))]
    _, scores, ids = model._student_and_neighbours(texts, 1)
    # each store text, queried in the student's own space, finds itself (or an identical twin) at cosine 1
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(model.student_keys, model.base.encode(texts), atol=1e-6)
    same_text = [texts[int(i)]["sentence"] == t["sentence"] for i, t in zip(ids[:, 0], texts)]
    assert all(same_text)
    # the store-key search is another one: the projected query in the store embedder's space finds no exact twins
    _, store_scores, _ = model._student_and_neighbours(texts, 1, keys="store")
    assert not np.allclose(store_scores[:, 0], 1.0, atol=1e-3)
    p = model.predict_proba(EX)
    model.save(tmp_path / "student", meta={"base": "x"})
    import retrikt.student.encoder as enc
    monkeypatch.setattr(enc, "load_student", lambda folder, task, base=None, device=None: model.base)
    again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="x")
    assert again.settings.keys == "student" and again.student_keys is None  # recomputed from the weights on use
    np.testing.assert_allclose(again.predict_proba(EX), p, atol=1e-6)


def _tiny_store(folder, texts=("good movie", "great film", "bad movie", "terrible film", "a good dog", "a bad cat") * 2,
                **meta):
    """A store in the key space of the tiny-encoder embedder, with texts the tiny tokenizer knows; ``meta`` adds to
    (or replaces) its manifest's task / provenance."""
    from retrikt import models
    emb_model = models.load_sentence_transformer("tiny-encoder")
    texts = list(texts)
    emb = np.asarray(emb_model.encode(texts, normalize_embeddings=True), dtype=np.float32)
    entries = [{"fields": {"sentence": t}, "label": int("good" in t or "great" in t),
                "soft_label": [0.2, 0.8] if ("good" in t or "great" in t) else [0.8, 0.2], "meta": {}}
               for t in texts]
    with StoreWriter(folder, {"task": "sst2", "teacher": "t", "embedder": {"name": "tiny-encoder", "dim": 64,
                                                                           "normalize": True}, **meta}) as w:
        w.add_batch(0, entries, emb)
        return w.finalize(index_kind="flat")


@pytest.mark.parametrize("flags", [{}, {"no_relational": True}, {"no_retrieval": True}, {"retrieve_from": "kshot"},
                                   {"retrieve_from": "both"}, {"cv_folds": 0}, {"gold_share": 0.0},
                                   {"retrieval_keys": "student"}, {"retrieval_keys": "auto"}])
def test_retrikt_method_trains_selects_settings_and_honours_ablations(tmp_path, flags):
    import dataclasses

    from retrikt.methods import TrainConfig, run_method
    path = _tiny_store(tmp_path / "store")
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(path), epochs=2, **flags)
    train = [{"idx": i, "sentence": s, "label": y} for i, (s, y) in
             enumerate([("good film", 1), ("bad film", 0), ("great movie", 1), ("terrible movie", 0)] * 2)]
    model, extra = run_method(cfg, get_task("sst2"), train, seed=1)
    p = model.predict_proba(EX)
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert extra["store_checksum"] == model.store.checksum or flags.get("retrieve_from") == "kshot"
    if flags.get("cv_folds") == 0:  # the old rule: accuracy on 2 of the 8 held out
        assert set(extra["selection"]) >= {"k", "beta", "tau", "dev_main"} and extra["selection"]["dev_n"] == 2
    else:  # 4-fold CV: every k-shot example scored once, by a model that did not see it
        assert set(extra["selection"]) >= {"k", "beta", "tau", "log_loss", "beta_curve"}
        assert extra["selection"]["n"] == 8 and extra["selection"]["method"].startswith("4-fold")
    assert "nbr_ids" not in train[0]
    if flags.get("no_retrieval"):
        np.testing.assert_array_equal(p, model.base.predict_proba(EX))
    if "retrieval_keys" in flags:  # the CV scored both key spaces when auto, and the final student searches its choice
        keys = {r["keys"] for r in extra["selection"]["grid"]} - {"none"}  # none: the smoothed student
        assert keys == ({"store", "student"} if flags["retrieval_keys"] == "auto" else {"student"})
        assert model.settings.keys == extra["selection"]["keys"] == extra["retrieval"]["keys"]
        # the ablations one student is scored on besides its chosen setting, which they leave as it was
        from retrikt.eval.harness import evaluate_variants
        from retrikt.tasks import compute_metrics
        assert set(model.variant_settings()) == {"no retrieval at inference", "accuracy rule (old criterion)",
                                                 "uncalibrated log-loss (session-8 rule)",
                                                 "no SE margin (session-11 rule)"} | {f"keys {k}" for k in keys}
        assert extra["selection"]["se_margin"] == 1.0 and "SE margin" in extra["selection"]["method"]
        before = dict(model.settings.__dict__)
        scored = evaluate_variants(model, get_task("sst2"), EX)
        assert model.settings.__dict__ == before
        own = compute_metrics(get_task("sst2"), [e["label"] for e in EX], model.base.predict_proba(EX).argmax(1).tolist())
        assert scored["no retrieval at inference"]["main"] == own["main"]
    assert extra["refit"] is True
    if flags.get("retrieve_from") == "kshot":  # the final student retrieves among all 8 k-shot examples
        assert len(model.store) == 8
    if flags.get("retrieve_from") == "both":  # the 12 store entries, then the 8 k-shot examples with gold labels
        assert len(model.store) == 20
        np.testing.assert_array_equal(model.teacher_probs[12:], np.eye(2)[[e["label"] for e in train]])
        model.save(tmp_path / "student", meta={"base": "tiny-encoder"})
        again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="tiny-encoder")
        assert len(again.store) == 20 and again.store.checksum == extra["store_checksum"]
        np.testing.assert_allclose(again.predict_proba(EX), p, atol=1e-5)
    kd, info = run_method(dataclasses.replace(cfg, method="kd"), get_task("sst2"), train, seed=1)
    assert info["store_entries"] == 12 and kd.predict_proba(EX).shape == (3, 2)


KSHOT = [{"idx": i, "sentence": s, "label": y} for i, (s, y) in
         enumerate([("good film", 1), ("bad film", 0), ("great movie", 1), ("terrible movie", 0)] * 2)]


@pytest.mark.parametrize("method", ["kd", "retrikt"])
def test_a_student_refuses_a_store_of_another_task(tmp_path, method):
    from retrikt.methods import TrainConfig, run_method
    path = _tiny_store(tmp_path / "store", task="cola")
    cfg = TrainConfig(task="sst2", method=method, student="tiny-encoder", store=str(path), epochs=1,
                      allow_foreign_store=True)  # no flag makes another task's store usable
    with pytest.raises(RetriktError, match="store for task 'cola'; this run trains 'sst2'"):
        run_method(cfg, get_task("sst2"), KSHOT, seed=1)


@pytest.mark.parametrize("method", ["kd", "retrikt"])
def test_a_student_refuses_another_seeds_store_unless_allowed(tmp_path, method):
    from retrikt.methods import TrainConfig, run_method
    other = _tiny_store(tmp_path / "s2", seed=2, kshot_idx=[100 + i for i in range(8)])
    cfg = TrainConfig(task="sst2", method=method, student="tiny-encoder", store=str(other), epochs=1)
    with pytest.raises(RetriktError, match=r"s2 was built from the k-shot set of seed 2, not this run's \(seed 1"):
        run_method(cfg, get_task("sst2"), KSHOT, seed=1)
    cfg.allow_foreign_store = True
    _, info = run_method(cfg, get_task("sst2"), KSHOT, seed=1)
    assert info["store_seed"] == 2 and info["foreign_store"] is True
    own = _tiny_store(tmp_path / "s1", seed=1, kshot_idx=[e["idx"] for e in reversed(KSHOT)])  # order is irrelevant
    cfg.allow_foreign_store, cfg.store = False, str(own)
    _, info = run_method(cfg, get_task("sst2"), KSHOT, seed=1)
    assert info["store_seed"] == 1 and "foreign_store" not in info


def test_a_store_without_its_kshot_set_is_accepted_with_a_warning(tmp_path, caplog):
    from retrikt.student.retrieval import check_store, open_store
    store = open_store(str(_tiny_store(tmp_path / "old")))
    with caplog.at_level("WARNING", logger="retrikt.student.retrieval"):
        assert check_store(store, get_task("sst2"), KSHOT, seed=1) == {"store_seed": None, "store_source": "generated"}
    assert "records no k-shot set" in caplog.text


def test_cv_selection_keeps_the_student_when_retrieval_adds_nothing_and_retrieves_when_it_knows():
    """Synthetic out-of-fold predictions: a student that is 70% right, and a retrieval half that either votes with
    random labels (a store that carries nothing) or with the inputs' gold labels (a store that holds them)."""
    from retrikt.student.selection import cv_select
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(np.eye(2)[y] > 0, 0.7, 0.3)
    p[:60] = p[:60, ::-1]  # 70% right (a student always right would need no retrieval, calibrated)
    noise = np.eye(2)[rng.integers(0, 2, 200)] * 0.8 + 0.1
    gold = np.eye(2)[y] * 0.8 + 0.1
    for name, votes, retrieves in (("random", noise, False), ("gold", gold, True)):
        ret = {("teacher", k, tau, "store"): votes for k in (1, 8) for tau in (0.1, 0.5)}
        chosen, grid = cv_select(p, ret, y)
        assert (chosen["beta"] < 1) is retrieves, name
        assert len(grid) == 4 * 5 + 5  # 2 k x 2 tau x 5 beta, and the student smoothed towards uniform (5 beta)
        if retrieves:  # gold votes: within the tolerance of the best, clearly better than the student alone
            assert chosen["log_loss"] <= min(r["log_loss"] for r in grid) + 0.005
            assert chosen["log_loss"] < min(r["log_loss"] for r in grid if r["beta"] == 1.0) - 0.005
    # a tie within the tolerance goes to the student's own prediction
    chosen, _ = cv_select(p, {("teacher", 1, 0.1, "store"): p.copy()}, y)
    assert chosen["beta"] == 1.0
    # an overconfident student: a vote that only softens it (here: near-uniform noise) lowers the log-loss, but
    # no more than smoothing towards uniform does, so retrieval is not chosen; a vote that knows the labels is
    sure = np.where(np.eye(2)[y] > 0, 0.99, 0.01)
    sure[:60] = sure[:60, ::-1]  # 70% right, always 99% sure
    soft_noise = 0.5 + 0.02 * (np.eye(2)[rng.integers(0, 2, 200)] - 0.5)
    chosen, grid = cv_select(sure, {("teacher", 8, 0.5, "store"): soft_noise}, y)
    retrieval_only = [r for r in grid if r["labels"] != "uniform"]
    assert min(r["raw_log_loss"] for r in retrieval_only if r["beta"] < 1) < min(
        r["raw_log_loss"] for r in retrieval_only if r["beta"] == 1)  # raw log-loss would have taken the noise
    assert chosen["beta"] == 1.0 and chosen["labels"] == "teacher"
    chosen, _ = cv_select(sure, {("teacher", 8, 0.5, "store"): gold}, y)
    assert chosen["beta"] < 1.0


def test_calibrated_log_loss_scores_ranking_not_confidence():
    """Fold students are overconfident: a sharp retrieval vote that gets more answers right can have the worse raw
    log-loss (its errors are sure too); after each setting's own temperature, the better-ranking setting wins."""
    from retrikt.student.selection import calibrated_log_loss, cv_select, pick_by_raw_log_loss
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    sure = np.where(np.eye(2)[y] > 0, 0.999, 0.001)
    sure[:120] = sure[:120, ::-1]  # 70% right, always sure
    soft = np.where(np.eye(2)[y] > 0, 0.6, 0.4)
    soft[:80] = soft[:80, ::-1]  # 80% right, never sure
    raw = lambda m: float(-np.log(m[np.arange(len(y)), y]).mean())
    assert raw(soft) < raw(sure)
    ll_sure, t_sure = calibrated_log_loss(sure, y)
    assert t_sure > 1 and ll_sure < raw(sure)  # the overconfident student is flattened
    ll_soft, t_soft = calibrated_log_loss(soft, y)
    assert t_soft < 1 and ll_soft < ll_sure  # the unsure one sharpened, and it ranks better
    # the argmax, so every prediction, is the mixture's whatever the temperature
    vote = np.where(np.eye(2)[y] > 0, 0.9, 0.1)
    vote[:40] = vote[:40, ::-1]  # a sharp vote, 90% right: retrieval that knows more than the student
    chosen, grid = cv_select(sure, {("teacher", 8, 0.5, "store"): vote}, y)
    assert chosen["beta"] < 1 and all({"raw_log_loss", "temperature"} <= set(r) for r in grid)
    assert chosen["log_loss"] <= min(r["log_loss"] for r in grid if r["beta"] == 1.0) - 0.005
    # the uncalibrated rule stays available (the ablation) and scores the raw loss
    assert pick_by_raw_log_loss(grid)["log_loss"] == min(r["raw_log_loss"] for r in grid)
    _, uncal = cv_select(sure, {("teacher", 8, 0.5, "store"): vote}, y, calibrate=False)
    assert all(r["log_loss"] == r["raw_log_loss"] and r["temperature"] == 1.0 for r in uncal)


def test_cv_selection_never_picks_a_setting_that_predicts_one_class_everywhere():
    """A store that votes its majority label everywhere, more surely where that label is right, ranks the answers
    well (low calibrated log-loss) but its argmax is one class: MCC 0 (CoLA, session 11, seeds 1-2). The guard
    keeps the choice among settings whose out-of-fold predictions hold more than one class."""
    from retrikt.student.selection import cv_select, pick_setting
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.7).astype(int)
    vote = np.stack([np.where(y == 1, 0.1, 0.35), np.where(y == 1, 0.9, 0.65)], 1)  # class 1 always, ranks well
    p = np.eye(2)[rng.integers(0, 2, len(y))] * 0.2 + 0.4  # a student that knows nothing: both classes, unsure
    chosen, grid = cv_select(p, {("teacher", 8, 0.5, "store"): vote}, y)
    unguarded = pick_setting(grid, guard=False)
    assert unguarded["one_class"] and unguarded["beta"] == 0.0  # what the log-loss alone would pick
    assert not chosen["one_class"] and len(np.unique((chosen["beta"] * p + (1 - chosen["beta"]) * vote).argmax(1))) == 2
    # where every setting predicts one class (a degenerate fold), the guard keeps them all rather than fail
    flat = np.tile([0.3, 0.7], (len(y), 1))
    chosen, grid = cv_select(flat, {("teacher", 8, 0.5, "store"): vote}, y)
    assert all(r["one_class"] for r in grid) and chosen


def test_accuracy_rule_breaks_ties_towards_retrieval_as_the_old_rule_did():
    from retrikt.student.selection import cv_select, pick_by_accuracy
    y = np.array([0, 1, 0, 1])
    p = np.eye(2)[y] * 0.6 + 0.2  # right, unsure: every mixture with a right vote keeps every argmax
    chosen, grid = cv_select(p, {("teacher", k, 0.5, "store"): np.eye(2)[y] for k in (1, 8)}, y)
    assert all(r["accuracy"] == 1.0 for r in grid if r["labels"] != "uniform")
    old = pick_by_accuracy(grid)
    assert (old["k"], old["beta"], old["labels"]) == (1, 0.0, "teacher")  # retrieval only, one neighbour
    wrong = np.eye(2)[1 - y]  # a vote that is always wrong: only the settings that trust the student stay right
    _, grid = cv_select(p, {("teacher", 4, 0.5, "store"): wrong}, y)
    old = pick_by_accuracy(grid)
    assert old["accuracy"] == 1.0 and old["beta"] == 0.75  # the most retrieval that keeps every answer


def test_mixed_batches_hold_a_fixed_share_of_gold_examples():
    from retrikt.student.trainer import MixedBatches
    gold = [{"g": i} for i in range(5)]
    store = [{"s": i} for i in range(100)]
    sampler = MixedBatches(gold, store, batch_size=8, share=0.25, seed=0)
    batches = [sampler(i) for i in range(10)]
    assert all(sum("g" in e for e in b) == 2 and len(b) == 8 for b in batches)
    seen = [e["g"] for b in batches[:5] for e in b if "g" in e]
    assert sorted(seen) == sorted(list(range(5)) * 2)  # every gold example once before any repeats twice
    assert len(MixedBatches(gold, [], 8, 0.25, 0)(0)) == 8  # no store: whole batches of gold examples


def test_cv_with_fewer_examples_than_folds_uses_one_fold_per_example(tmp_path):
    from retrikt.methods import TrainConfig, run_method
    path = _tiny_store(tmp_path / "store")
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(path), epochs=1,
                      allow_foreign_store=True)
    train = [{"idx": 0, "sentence": "good film", "label": 1}, {"idx": 1, "sentence": "bad film", "label": 0},
             {"idx": 2, "sentence": "great movie", "label": 1}]
    _, extra = run_method(cfg, get_task("sst2"), train, seed=1)
    assert extra["selection"]["method"] == "3-fold CV, calibrated log-loss, 1-SE margin"
    assert extra["selection"]["n"] == 3


def test_cv_selection_needs_retrieval_to_win_by_more_than_its_noise_on_32_examples():
    """The one-standard-error rule: on 32 out-of-fold examples, a vote that lowers the mean log-loss by less than
    one standard error of the paired per-example differences is noise (CB seed 1, session 11: β = 0 won by 0.085
    nats and lost 5.3 points to the student alone); a vote that knows the labels still wins."""
    from retrikt.student.selection import cv_select, paired_se, pick_setting
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 32)
    p = np.where(np.eye(2)[y] > 0, 0.65, 0.35)
    p[:10] = p[:10, ::-1]  # a student 69% right
    lucky = np.where(np.eye(2)[y] > 0, 0.6, 0.4)  # a vote no better than the student, a little luckier here
    lucky[:8] = lucky[:8, ::-1]
    lucky[rng.permutation(32)[:6]] = 0.5
    ret = {("teacher", 8, 0.5, "store"): lucky}
    chosen, grid = cv_select(p, ret, y)
    margin_free = pick_setting(grid)  # the session-11 rule on the same record
    top = min(grid, key=lambda r: r["log_loss"])
    alone = next(r for r in grid if r["beta"] == 1.0 and r["labels"] == "teacher")
    assert margin_free["beta"] < 1 and top["beta"] < 1  # the vote wins the log-loss by more than the tolerance ...
    assert 0.005 < alone["log_loss"] - top["log_loss"] <= paired_se(alone, top)  # ... but within one SE
    assert chosen["beta"] == 1.0 and len(grid[0]["losses"]) == 32
    gold = np.eye(2)[y] * 0.8 + 0.1
    chosen, grid = cv_select(p, {("teacher", 8, 0.5, "store"): gold}, y)
    assert chosen["beta"] < 1.0
    # rows recorded before per-example losses (no "losses") fall back to the tolerance alone
    old = [{k: v for k, v in r.items() if k != "losses"} for r in cv_select(p, ret, y)[1]]
    assert pick_setting(old, se_margin=1.0)["beta"] == margin_free["beta"]


@pytest.mark.parametrize("method", ["kd", "retrikt"])
def test_store_prior_kshot_gives_the_store_labels_the_training_examples_prior(tmp_path, monkeypatch, method):
    from retrikt.methods import TrainConfig, run_method
    from retrikt.store.prior import reweight
    from retrikt.student.retrieval import open_store
    path = _tiny_store(tmp_path / "store")  # its teacher labels: mean [0.5, 0.5]
    skewed = [dict(e, label=1) for e in KSHOT[:6]] + KSHOT[6:]  # 7 of 8 positive: add-one prior [0.2, 0.8]
    cfg = TrainConfig(task="sst2", method=method, student="tiny-encoder", store=str(path), epochs=1,
                      store_prior="kshot")
    import retrikt.methods.kd as kd_mod
    import retrikt.methods.retrikt as retrikt_mod
    mod = kd_mod if method == "kd" else retrikt_mod
    seen, real_fit = [], mod.fit

    def spy(model, data, *a, **k):  # what the method actually trains on
        seen.append([e["soft_label"] for e in data if e["idx"] < 0])
        return real_fit(model, data, *a, **k)
    monkeypatch.setattr(mod, "fit", spy)
    model, info = run_method(cfg, get_task("sst2"), skewed, seed=1)
    np.testing.assert_allclose(np.mean(seen[-1], 0), [0.2, 0.8], atol=1e-4)  # the final fit's store entries
    weights = info["label_weights"] if method == "kd" else info["retrieval"]["label_weights"]
    soft = np.array([e["soft_label"] for e in open_store(str(path)).entries(range(12))])
    np.testing.assert_allclose(reweight(soft, weights).mean(0), [0.2, 0.8], atol=1e-4)
    if method == "retrikt":  # the neighbours vote with the re-weighted labels, also after a reload
        np.testing.assert_allclose(model.teacher_probs.mean(0), [0.2, 0.8], atol=1e-4)
        model.save(tmp_path / "student", meta={"base": "tiny-encoder"})
        again = load_retrieval_student(tmp_path / "student", get_task("sst2"), base="tiny-encoder")
        np.testing.assert_allclose(again.teacher_probs, model.teacher_probs)
    _, plain = run_method(dataclasses.replace(cfg, store_prior="none"), get_task("sst2"), skewed, seed=1)
    assert (plain["label_weights"] if method == "kd" else plain["retrieval"]["label_weights"]) is None


def test_store_keys_train_the_projection_onto_each_example_s_own_store_key(tmp_path, monkeypatch):
    # the projected query must land where the store's embedder puts the same text, or it retrieves another's neighbours
    from retrikt.methods import TrainConfig, run_method
    from retrikt.student import retrieval
    from retrikt.student.retrieval import open_store
    import retrikt.methods.retrikt as retrikt_mod
    path = _tiny_store(tmp_path / "store")
    seen, real_fit = [], retrikt_mod.fit

    def spy(model, data, *a, **k):
        seen.append(data)
        return real_fit(model, data, *a, **k)
    monkeypatch.setattr(retrikt_mod, "fit", spy)
    cfg = TrainConfig(task="sst2", method="retrikt", student="tiny-encoder", store=str(path), epochs=1,
                      retrieval_keys="store", select_settings=False)
    model, _ = run_method(cfg, get_task("sst2"), KSHOT, seed=1)
    store_rows = [e for e in seen[-1] if e["idx"] < 0]
    np.testing.assert_allclose(np.stack([e["tkey"] for e in store_rows]), open_store(str(path)).embeddings)
    batch, fc = seen[-1][:4], retrieval.FitConfig()
    model.eval()
    with_align = retrieval.retrieval_loss(model, batch, fc, 1.0, 0.1).item()
    model.settings.key_align = 0.0
    assert retrieval.retrieval_loss(model, batch, fc, 1.0, 0.1).item() < with_align
