"""The generator's context: same-label demonstrations drawn per sample, the chat template, near-copies dropped."""
import dataclasses
import random

import numpy as np

from retrikt.pipeline.conditions import Conditioner
from retrikt.pipeline.config import BuildConfig, prompt_key
from retrikt.pipeline.filters import Filter
from retrikt.store.samples import condition, serialise, target
from retrikt.tasks import get_task
from tests.tiny import tiny_tokenizer

TASK = get_task("sst2")
KSHOT = [{"idx": i, "sentence": f"sentence number {i}", "label": i % 2} for i in range(8)]


def test_without_demos_or_template_the_condition_is_the_old_one():
    c = Conditioner(BuildConfig(task="sst2"), TASK, None, KSHOT)
    assert c.batch(1, 3, seed=5) == [condition(TASK, 1)] * 3 == ["task: sst2\nlabel: positive\nsentence:"] * 3


def test_demos_are_same_label_vary_per_sample_and_are_reproducible():
    c = Conditioner(BuildConfig(task="sst2", gen_demos=2), TASK, None, KSHOT)
    conds = c.batch(0, 6, seed=3)
    assert conds == c.batch(0, 6, seed=3) and len(set(conds)) > 1
    for cond in conds:
        shown = [e for e in KSHOT if serialise(TASK, e) in cond]
        assert len(shown) == 2 and all(e["label"] == 0 for e in shown)
        assert cond.endswith("label: negative\nsentence:")


def test_a_tuning_pair_never_shows_its_own_target():
    c = Conditioner(BuildConfig(task="sst2", gen_demos=3), TASK, None, KSHOT)
    for (cond, tgt), e in zip(c.pairs(KSHOT, seed=1), KSHOT):
        assert tgt == target(TASK, e) and serialise(TASK, e) not in cond
        assert cond.count("label: ") == 4  # three demonstrations and the header


def test_chat_template_wraps_the_request_and_ends_with_the_header():
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    c = Conditioner(BuildConfig(task="sst2", gen_demos=1, chat_template=True), TASK, tok, KSHOT)
    cond = c(1, random.Random(0))
    assert cond.startswith("<|user|>Write one new") and "'positive'" in cond
    assert cond.endswith("<|assistant|>" + condition(TASK, 1))


def test_new_context_options_change_the_prompt_key_and_defaults_keep_it():
    cfg = BuildConfig(task="sst2")
    assert prompt_key(dataclasses.replace(cfg, gen_demos=0, chat_template=False)) == prompt_key(cfg)
    assert prompt_key(dataclasses.replace(cfg, gen_demos=2)) != prompt_key(cfg)
    assert prompt_key(dataclasses.replace(cfg, chat_template=True)) != prompt_key(cfg)


class _Embedder:
    """Embeds 'a ...' texts on one axis and everything else on another."""
    def get_sentence_embedding_dimension(self):
        return 2

    def encode(self, texts, **kw):
        return np.array([[1.0, 0.0] if t.startswith("a") else [0.0, 1.0] for t in texts], dtype=np.float32)


def test_near_copies_of_the_kshot_examples_are_dropped_as_copies():
    filt = Filter(TASK, set(), reference=np.array([[1.0, 0.0]], np.float32), threshold=0.95)
    samples = [{"text": " a close paraphrase", "label": 1}, {"text": " something new", "label": 1}]
    kept, emb, stats = filt(samples, _Embedder())
    assert [k["fields"]["sentence"] for k in kept] == ["something new"] and stats["copies"] == 1
    assert emb.shape == (1, 2)
