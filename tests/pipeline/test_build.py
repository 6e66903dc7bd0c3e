"""The build pipeline with tiny random models and a scripted generator: filtering, stats and kill-and-resume."""
import json
import logging

import pytest

from retrikt.io import read_jsonl
from retrikt.store import Store
from retrikt.pipeline import run as B
from retrikt.teacher.softprompt import SoftPromptGenerator

WORDS = "the a good bad movie film man woman dog cat ran sat big small red blue old new".split()


def _fake_generate(self, conditions, n_per_condition=1, seed=0, **kw):
    """Deterministic, parseable samples that depend on the seed (like real sampling) and include one copy and
    one exact duplicate per batch."""
    out = []
    for i in range(len(conditions) * n_per_condition):  # one row per condition (the build sends n of them)
        w = [WORDS[(seed * 7 + i * 3 + j) % len(WORDS)] for j in range(6)]
        text = f" {' '.join(w[:3])} {seed % 997} {i}\nhypothesis: {' '.join(w[3:])} {seed % 991}"
        out.append({"condition": conditions[0], "text": text, "tokens": [1] * 10, "finished": True})
    out.append(dict(out[0]))  # an exact duplicate
    out.append({"condition": conditions[0], "text": " cut off", "tokens": [1] * 3, "finished": False})
    return out


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(SoftPromptGenerator, "generate", _fake_generate)
    # uniform mix: 2 batches per label; the random labeller agrees by chance only, so no agreement filter
    return B.BuildConfig(task="cb", teacher="tiny-causal", embedder="tiny-encoder", per_label=4, batch_size=2,
                         shots=8, prompt_epochs=1, label_demos=1, dedup_threshold=0.9999, label_mix="uniform",
                         min_agreement=0.0, out=str(tmp_path / "store"))


def _keys(store):
    return sorted(json.dumps(e["fields"], sort_keys=True) for e in store.entries(range(len(store))))


def _resume_lines(caplog):
    return [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]


def test_build_filters_labels_and_records_stats(cfg, caplog):
    with caplog.at_level(logging.INFO):
        path = B.build_store(cfg)
    assert _resume_lines(caplog) == []  # the merge reads the shards back; a fresh build does not say it resumes
    store = Store.open(path, expected_embedder={"name": "tiny-encoder", "dim": 64})
    log = read_jsonl(path / "build_log.jsonl")
    assert len(log) == 6  # 3 labels x 2 batches
    assert all(r["generated"] == 4 and r["parsed"] == 3 and r["exact_dups"] == 1 for r in log)
    assert len(store) == 12 and len(set(_keys(store))) == 12
    e = store.entries([0])[0]
    assert len(e["soft_label"]) == 3 and abs(sum(e["soft_label"]) - 1) < 1e-4
    stats = store.manifest["stats"]
    assert stats["parse_rate"] == pytest.approx(18 / 24) and stats["kept"] == 12
    # what the store benchmark reports as build minutes and peak memory
    assert store.manifest["build_seconds"] > 0 and store.manifest["peak_rss_gib"] > 0.05
    # the labeller's answer states, written beside the store for its entries and its k-shot set
    from retrikt.store.teacher_keys import load_teacher_keys
    keys = load_teacher_keys(store)
    assert keys.entries.shape[0] == 12 and sorted(keys.kshot) == sorted(store.manifest["kshot_idx"])


@pytest.mark.parametrize("label_mix", ["uniform", "kshot"])
def test_killed_build_resumes_without_duplicates_or_losses(cfg, tmp_path, monkeypatch, label_mix, caplog):
    cfg.label_mix = label_mix
    reference = Store.open(B.build_store(cfg))
    n_batches = len(read_jsonl(reference.folder / "build_log.jsonl"))
    calls = {"n": 0}
    real = B.Filter.__call__

    def dying(self, samples, embedder):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed halfway through the fourth batch
        return real(self, samples, embedder)

    cfg.out = str(tmp_path / "resumed")
    monkeypatch.setattr(B.Filter, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        B.build_store(cfg)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    calls["n"] = -100  # count the second run's batches without dying again
    caplog.clear()
    with caplog.at_level(logging.INFO):
        resumed = Store.open(B.build_store(cfg))
    assert any(m.endswith("rank-0: resuming, 3 batches already written") for m in _resume_lines(caplog))
    assert calls["n"] == -100 + n_batches - 3  # the 3 batches finished before the kill were not generated again
    assert _keys(resumed) == _keys(reference)
    assert (tmp_path / "resumed" / "prompt" / "manifest.json").exists()


def test_regression_task_is_refused(cfg):
    cfg.task = "stsb"
    with pytest.raises(Exception, match="regression"):
        B.build_store(cfg)


def test_task_text_changes_the_prompt_key_and_leaves_older_keys_alone():
    import dataclasses
    import hashlib
    import json

    from retrikt.pipeline.config import BuildConfig, prompt_key
    cfg = BuildConfig(task="sst2")
    keys = ("task", "teacher", "shots", "seed", "prompt_tokens", "prompt_epochs", "prompt_lr", "prompt_batch_size")
    before = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]
    assert prompt_key(cfg) == before      # a prompt tuned before the option existed is still reused
    assert prompt_key(dataclasses.replace(cfg, task_text="description")) != before


def test_a_store_labelled_by_another_model_records_generator_and_labeller(cfg, monkeypatch):
    """Generated by tiny-causal, labelled in context by a model with another tokenizer (word-level): labelling works
    on the parsed text, which the labeller tokenizes itself, and the manifest names both models."""
    from retrikt.teacher import labeller as L
    from tests.tiny import tiny_qwen, tiny_tokenizer
    loaded = []
    real = L.models.load_causal_lm

    def load(name, device=None, **kw):
        loaded.append(name)
        if name == "other-lm":
            tok = tiny_tokenizer()
            return tiny_qwen(tok), tok
        return real(name, device=device, **kw)
    monkeypatch.setattr(L.models, "load_causal_lm", load)
    cfg.labeller, cfg.labeller_model = "icl", "other-lm"
    store = Store.open(B.build_store(cfg))
    assert loaded == ["tiny-causal", "other-lm"]  # the generator, then the labeller
    m = store.manifest
    assert m["generator"] == m["teacher"] == "tiny-causal"
    assert m["labeller"] == {"kind": "icl", "model": "other-lm", "demos": 1, "calibration": "none"}
    assert m["seed"] == cfg.seed and len(m["kshot_idx"]) == cfg.shots
    e = store.entries([0])[0]
    assert len(e["soft_label"]) == 3 and abs(sum(e["soft_label"]) - 1) < 1e-4


def test_the_default_labeller_is_the_adapted_teacher(cfg):
    store = Store.open(B.build_store(cfg))
    spec = store.manifest["labeller"]
    assert spec["kind"] == "adapted" and spec["model"] == "tiny-causal" and spec["recipe"]["adapt_r"] == 16


def test_label_counts_follow_the_kshot_mix_and_the_plan_keeps_them():
    from retrikt.tasks import get_task
    task, cfg = get_task("cb"), B.BuildConfig(task="cb", per_label=10, batch_size=4)
    kshot = [{"label": y} for y in [0] * 5 + [1] * 2 + [2]]
    # 30 in all at 5:2:1 = 18.75 / 7.5 / 3.75: floors 18 / 7 / 3, the 2 left to the largest remainders (0 and 2)
    assert B.label_counts(task, cfg, kshot) == [19, 7, 4]
    # a label the k-shot set lacks gets nothing; a rare one is raised to one batch, taken from the largest
    assert B.label_counts(task, B.BuildConfig(per_label=4, batch_size=4), [{"label": 0}] * 7 + [{"label": 1}]) == \
        [8, 4, 0]
    assert B.label_counts(task, B.BuildConfig(per_label=10, label_mix="uniform"), kshot) == [10, 10, 10]
    plan = B.batch_plan([19, 7, 4], 4)
    assert plan == B.batch_plan([19, 7, 4], 4)  # deterministic: a resumed build plans the same batches
    assert [b[0] for b in plan] == [0, 1, 2, 3, 4, 100_000, 100_001, 200_000]
    assert [sum(n for _, lab, n in plan if lab == label) for label in range(3)] == [19, 7, 4]


def test_kshot_label_mix_generates_the_planned_proportions(cfg):
    cfg.label_mix = "kshot"
    store = Store.open(B.build_store(cfg))
    # the seed-1 8-shot CB set holds 3 / 4 / 1 examples per label: 12 samples as 4.5 / 6 / 1.5 -> 5 / 6 / 1, then the
    # rare label raised to one batch (2) from the largest
    assert store.manifest["label_counts"] == [5, 5, 2]
    log = read_jsonl(store.folder / "build_log.jsonl")
    assert sorted(r["label"] for r in log) == [0, 0, 0, 1, 1, 1, 2]  # batches of 2: 3 + 3 + 1
    assert [r["generated"] for r in log] == [2 + 2, 2 + 2, 1 + 2, 2 + 2, 2 + 2, 1 + 2, 2 + 2]  # +2: a dup, a cut


KINDS = {"dog": "sure", "cat": "cut", "man": "named", "woman": "unsure", "movie": "wrong", "film": "edge"}


def _handmade_generate(self, conditions, n_per_condition=1, seed=0, **kw):
    """One batch of every case the filters tell apart; the premise names its case and its conditioned label."""
    from retrikt.tasks import get_task
    task = get_task("cb")
    label = task.label_names.index(conditions[0].split("label: ")[1].split("\n")[0])
    tails = {"cat": "the dog", "man": f"it is {task.label_names[label].upper()} .", "film": "no maybe yes"}
    return [{"condition": conditions[0], "text": f" {word} {seed} {label}\nhypothesis: {tails.get(word, 'the dog')}",
             "tokens": [1] * 5, "finished": KINDS[word] != "cut"} for word in KINDS]


class _ScriptedLabeller:
    """Probabilities by case: sure / cut / named 0.9 for the conditioned label, edge exactly 0.5, unsure 0.45 (still
    the argmax), wrong 0.8 for another label."""

    def predict_proba(self, examples):
        import numpy as np
        out = []
        for e in examples:
            word, _, label = e["premise"].split()
            kind, label = KINDS[word], int(label)
            p = {"sure": 0.9, "cut": 0.9, "named": 0.9, "edge": 0.5, "unsure": 0.45, "wrong": 0.1}[kind]
            row = np.full(3, (1 - p) / 2)
            row[label] = p
            if kind == "wrong":
                row[(label + 1) % 3] = 0.8
            out.append(row)
        return np.array(out)


@pytest.mark.parametrize("filters,kept,agreed", [
    ({}, {"sure", "edge"}, 2),                                       # defaults: unsure is below 0.5, wrong is not argmax
    ({"keep_unfinished": True, "drop_label_words": False, "min_agreement": 0}, set(KINDS.values()), 5),
    ({"min_agreement": 0.46}, {"sure", "edge"}, 2),
    ({"min_agreement": 0.4}, {"sure", "edge", "unsure"}, 3)])
def test_filters_keep_exactly_the_samples_meeting_the_rules(cfg, monkeypatch, filters, kept, agreed):
    monkeypatch.setattr(SoftPromptGenerator, "generate", _handmade_generate)
    monkeypatch.setattr(B, "_labeller", lambda *a, **k: _ScriptedLabeller())
    cfg.per_label, cfg.batch_size, cfg.min_agreement = 1, 1, 0.5
    for k, v in filters.items():
        setattr(cfg, k, v)
    store = Store.open(B.build_store(cfg))
    got = sorted((KINDS[e["fields"]["premise"].split()[0]], e["label"]) for e in store.entries(range(len(store))))
    assert got == sorted((kind, label) for kind in kept for label in range(3))
    # the unfinished and the label-naming samples, when dropped, are dropped before labelling
    labelled = 6 - (not filters.get("keep_unfinished", False)) - filters.get("drop_label_words", True)
    log = read_jsonl(store.folder / "build_log.jsonl")
    assert [(r["generated"], r["parsed"], r["unfinished"], r["label_words"], r["agreed"], r["disagree"], r["kept"])
            for r in log] == [(6, 6, 1, 1, agreed, labelled - agreed, len(kept))] * 3
    stats = store.manifest["stats"]
    assert (stats["unfinished"], stats["label_words"], stats["agreed"], stats["kept"]) == (3, 3, 3 * agreed, len(store))


def test_auto_max_new_tokens_follows_the_longest_kshot_target(cfg, monkeypatch):
    import math

    from retrikt import models
    from retrikt.store.samples import target
    from retrikt.tasks import get_task, load_split, sample_few_shot
    seen = []

    def spy(self, conditions, n_per_condition=1, seed=0, max_new_tokens=64, **kw):
        seen.append(max_new_tokens)
        return _fake_generate(self, conditions, n_per_condition=n_per_condition, seed=seed)
    monkeypatch.setattr(SoftPromptGenerator, "generate", spy)
    cfg.max_new_tokens = 0
    store = Store.open(B.build_store(cfg))
    task, tok = get_task("cb"), models.load_causal_lm("tiny-causal")[1]
    kshot = sample_few_shot(load_split(task, "train"), n=cfg.shots, seed=cfg.seed)
    longest = max(len(tok(target(task, e), add_special_tokens=False)["input_ids"]) for e in kshot)
    want = math.ceil(1.5 * longest) + 8
    assert set(seen) == {want} and store.manifest["config"]["max_new_tokens"] == want
    assert store.manifest["max_new_tokens_auto"] == {"longest_kshot_target": longest, "chosen": want}
    seen.clear()
    cfg.max_new_tokens, cfg.out = 17, cfg.out + "-explicit"
    B.build_store(cfg)
    assert set(seen) == {17}


def test_oracle_store_holds_training_inputs_outside_the_kshot_set_with_the_labellers_labels(cfg, monkeypatch):
    from collections import Counter

    import numpy as np

    from retrikt.store.samples import example_key
    from retrikt.tasks import get_task, load_split, sample_few_shot

    def must_not_generate(*a, **k):
        raise AssertionError("an oracle store generates nothing")
    monkeypatch.setattr(SoftPromptGenerator, "generate", must_not_generate)
    monkeypatch.setattr(SoftPromptGenerator, "train_supervised", must_not_generate)
    # no conditioned label to agree with: a threshold the random labeller never reaches must drop nothing
    cfg.source, cfg.label_mix, cfg.min_agreement = "oracle", "kshot", 0.9
    store = Store.open(B.build_store(cfg))
    m = store.manifest
    assert m["source"] == "oracle" and m["generator"] is None and m["label_counts"] == [5, 5, 2]
    task = get_task("cb")
    pool = {e["idx"]: e for e in load_split(task, "train")}
    kshot = sample_few_shot(list(pool.values()), n=cfg.shots, seed=cfg.seed)
    assert sorted(m["kshot_idx"]) == sorted(e["idx"] for e in kshot)
    entries = store.entries(range(len(store)))
    assert len(store) == 12 and m["stats"]["disagree"] == 0
    drawn = [pool[e["meta"]["train_idx"]] for e in entries]
    assert all(e["fields"] == {f: d[f] for f in task.text_fields} for e, d in zip(entries, drawn))
    assert not {d["idx"] for d in drawn} & set(m["kshot_idx"])
    assert not {example_key(task, d) for d in drawn} & {example_key(task, e) for e in kshot}
    # gold labels only stratified the draw (5 / 5 / 2 as planned); the entries carry the labeller's argmax
    assert Counter(d["label"] for d in drawn) == Counter({0: 5, 1: 5, 2: 2})
    assert all(e["label"] == int(np.argmax(e["soft_label"])) == e["meta"]["teacher_label"] for e in entries)
    assert all(set(e["meta"]) == {"teacher_label", "agree", "tokens", "finished", "names_label", "train_idx"}
               for e in entries)


def test_oracle_draw_is_seeded_and_excludes_the_kshot_examples():
    from retrikt.pipeline.oracle import oracle_inputs
    from retrikt.tasks import get_task
    task = get_task("cb")
    pool = [{"idx": i, "premise": f"p{i}", "hypothesis": "h", "label": i % 3} for i in range(60)]
    kshot = pool[:6]
    a = oracle_inputs(task, pool, kshot, [4, 3, 30], seed=1)
    assert a == oracle_inputs(task, pool, kshot, [4, 3, 30], seed=1)
    assert a != oracle_inputs(task, pool, kshot, [4, 3, 30], seed=2)
    assert [len(a[lab]) for lab in range(3)] == [4, 3, 18]  # label 2 has only 20 - 2 outside the k-shot set
    assert all(e["label"] == lab and e["idx"] >= 6 for lab in a for e in a[lab])


def test_complete_fields_continues_only_samples_that_stopped_after_their_first_field(cfg):
    from retrikt.store.samples import parse
    from retrikt.tasks import get_task
    task = get_task("cb")
    head = "task: cb\nlabel: entailment\npremise:"
    seen = []

    class Gen:
        def generate(self, conditions, **kw):
            seen.extend(conditions)
            return [{"condition": c, "text": " a cat sat", "tokens": [7, 8], "finished": True} for c in conditions]

    samples = [{"condition": head, "text": " the dog ran", "tokens": [1], "finished": True},   # no hypothesis
               {"condition": head, "text": " x y\nhypothesis: z", "tokens": [1], "finished": True},  # parses
               {"condition": head, "text": " the dog", "tokens": [1], "finished": False},  # cut off: dropped later
               {"condition": head, "text": " no\nfield here", "tokens": [1], "finished": True}]  # garbled
    out = B.complete_fields(cfg, task, Gen(), samples, seed=3)
    assert seen == [head + " the dog ran\nhypothesis:"]
    assert parse(task, out[0]["text"]) == {"premise": "the dog ran", "hypothesis": "a cat sat"}
    assert out[0]["completed"] and out[0]["tokens"] == [1, 7, 8] and out[0]["finished"]
    assert out[1:] == samples[1:]


def test_build_with_complete_fields_continues_and_counts(cfg, monkeypatch):
    def premise_only(self, conditions, n_per_condition=1, seed=0, **kw):
        # the first pass writes a premise and stops; a continuation (its condition ends with the cue) the rest
        return [{"condition": c, "tokens": [1, 2], "finished": True,
                 "text": f" w{seed % 997} {i} {'d e' if c.endswith('hypothesis:') else 'a b c'}"}
                for i, c in enumerate(conditions)]
    monkeypatch.setattr(SoftPromptGenerator, "generate", premise_only)
    cfg.complete_fields = True
    path = B.build_store(cfg)
    log = read_jsonl(path / "build_log.jsonl")
    assert all(r["completed"] == r["generated"] == r["completed_parsed"] == r["parsed"] for r in log)
    store = Store.open(path)
    assert len(store) == 12 and all(e["fields"]["hypothesis"].endswith("d e")
                                    for e in store.entries(range(len(store))))


def test_another_draw_samples_anew_from_the_same_kshot_set_and_draw_0_is_the_seeds_own(cfg, tmp_path, monkeypatch):
    seeds = []

    def recording(self, conditions, n_per_condition=1, seed=0, **kw):
        seeds.append(seed)
        return _fake_generate(self, conditions, n_per_condition, seed=seed, **kw)
    monkeypatch.setattr(SoftPromptGenerator, "generate", recording)
    own = Store.open(B.build_store(cfg))
    # draw 0 seeds each batch as every build before --draw did, so older stores rebuild identically
    assert sorted(seeds) == sorted(cfg.seed * 1_000_003 + b for b, _, _ in B.batch_plan([4, 4, 4], 2))
    other = Store.open(B.build_store(B.BuildConfig(**{**cfg.__dict__, "draw": 1, "out": str(tmp_path / "d1")})))
    again = Store.open(B.build_store(B.BuildConfig(**{**cfg.__dict__, "out": str(tmp_path / "again")})))
    assert _keys(again) == _keys(own) and not set(_keys(other)) & set(_keys(own))
    assert (own.manifest["draw"], other.manifest["draw"]) == (0, 1)
    assert other.manifest["kshot_idx"] == own.manifest["kshot_idx"] and other.manifest["seed"] == cfg.seed


def test_a_negative_draw_is_refused(cfg):
    cfg.draw = -1
    with pytest.raises(B.RetriktError, match="--draw"):
        B.build_store(cfg)


def test_demonstrations_that_leave_no_room_for_the_target_are_refused_naming_the_option(cfg):
    cfg.gen_demos = 40  # CB premises are long: 40 of them overflow any tuning window
    with pytest.raises(B.RetriktError, match="--gen-demos 40: .* use fewer --gen-demos"):
        B.build_store(cfg)
