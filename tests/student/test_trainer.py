import math

import torch

from retrikt.student.encoder import EncoderClassifier
from retrikt.student.trainer import FitConfig, example_loss, fit
from retrikt.tasks import get_task
from tests.tiny import tiny_bert, tiny_tokenizer


def _toy_sst2():
    pos = ["great movie", "good film", "a great good movie", "good good", "great"]
    neg = ["terrible movie", "bad film", "a terrible bad film", "bad bad", "terrible"]
    ex = [{"idx": i, "sentence": s, "label": 1} for i, s in enumerate(pos)]
    return ex + [{"idx": 10 + i, "sentence": s, "label": 0} for i, s in enumerate(neg)]


def test_fit_learns_a_separable_toy_task():
    task = get_task("sst2")
    tok = tiny_tokenizer()
    student = EncoderClassifier(tiny_bert(tok), tok, task, dropout=0.0)
    data = _toy_sst2()
    losses = fit(student, data, FitConfig(epochs=30, lr=3e-3, head_lr=3e-3, batch_size=4, warmup_ratio=0.0), seed=0)
    assert losses[-1] < losses[0] * 0.5
    pred = student.predict_proba(data).argmax(1)
    assert (pred == [e["label"] for e in data]).all()


def test_fit_is_reproducible_for_a_seed():
    task = get_task("sst2")
    tok = tiny_tokenizer()
    runs = []
    for _ in range(2):
        student = EncoderClassifier(tiny_bert(tok, seed=3), tok, task)
        torch.manual_seed(3)
        student.head.reset_parameters()
        runs.append(fit(student, _toy_sst2(), FitConfig(epochs=2, batch_size=4), seed=5))
    assert runs[0] == runs[1]


def test_kd_loss_is_kl_to_the_soft_label_and_ce_for_gold():
    task = get_task("cb")
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    soft = [0.7, 0.2, 0.1]
    batch = [{"label": 0, "soft_label": soft}, {"label": 2}]
    got = example_loss(logits, batch, task, FitConfig(kd_weight=1.0, kd_temperature=1.0))
    logp0 = torch.log_softmax(logits[0], -1)
    kl = sum(p * (math.log(p) - float(lp)) for p, lp in zip(soft, logp0))
    ce = -float(torch.log_softmax(logits[1], -1)[2])
    assert abs(float(got) - (kl + ce) / 2) < 1e-5


def test_regression_loss_is_mse():
    task = get_task("stsb")
    got = example_loss(torch.tensor([1.0, 3.0]), [{"label": 2.0}, {"label": 3.5}], task, FitConfig())
    assert abs(float(got) - (1.0 + 0.25) / 2) < 1e-6


def test_micro_batches_give_the_whole_batch_gradient():
    # Gradients, not weights after a step: AdamW's first step is nearly scale-free and would hide a wrong weighting.
    from retrikt.teacher.lm import LMClassifier
    from retrikt.student.trainer import _accumulated_step
    from tests.tiny import tiny_qwen
    task = get_task("sst2")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    student = LMClassifier(tiny_qwen(tok), tok, task)
    data = _toy_sst2()[:7]   # 7 = 3 + 3 + 1: unequal micro-batches must still weigh each example once
    grads, losses = [], []
    for micro in (0, 3):
        student.zero_grad(set_to_none=True)
        losses.append(_accumulated_step(student, data, FitConfig(micro_batch_size=micro), None))
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert abs(losses[0] - losses[1]) < 1e-5


def test_auto_micro_batch_is_small_for_causal_lm_students_only():
    from retrikt.methods.base import StudentConfig, fit_config
    assert fit_config(StudentConfig(student="tiny-causal")).micro_batch_size == 2
    assert fit_config(StudentConfig(student="tiny-encoder")).micro_batch_size == 0
    assert fit_config(StudentConfig(student="tiny-causal", micro_batch_size=4)).micro_batch_size == 4
