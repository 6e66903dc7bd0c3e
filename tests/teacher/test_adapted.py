"""The adapted teacher: trained on the seed's k-shot set, saved in PEFT format, reused, retrained on a new key."""
import json

import numpy as np
import pytest
import torch

from retrikt.tasks import get_task
from retrikt.teacher import adapted
from retrikt.teacher.adapted import AdaptConfig, adapted_teacher, adapter_folder, adapter_key
from retrikt.teacher.labeller import make_labeller, pick_demos
from tests.tiny import tiny_qwen, tiny_tokenizer

KSHOT = [{"idx": i, "sentence": s, "label": y} for i, (s, y) in enumerate(
    [("the movie is great", 1), ("a bad film", 0), ("good good movie", 1), ("terrible dog", 0),
     ("it was great", 1), ("this is bad", 0)])]


@pytest.fixture
def tiny(monkeypatch):
    tok = tiny_tokenizer()
    calls = []

    def load(name, device=None, **kw):
        calls.append(name)
        return tiny_qwen(tok), tok
    monkeypatch.setattr(adapted.models, "load_causal_lm", load)
    return calls


def test_adapter_is_trained_saved_in_peft_format_and_reused(tiny, tmp_path, monkeypatch):
    from peft import PeftModel
    cfg = AdaptConfig(adapt_r=4, adapt_alpha=4, adapt_epochs=2, adapt_batch_size=4, adapt_lr=1e-2,
                      teacher_cache=str(tmp_path))
    task = get_task("sst2")
    m1, tok, info1 = adapted_teacher("tiny", task, KSHOT, 1, cfg)
    folder = tmp_path / info1["adapter"].split("/")[-1]
    assert not info1["adapter_reused"] and (folder / "adapter_model.safetensors").exists()
    PeftModel.from_pretrained(tiny_qwen(tok), str(folder))  # plain PEFT loads it
    trained = []
    monkeypatch.setattr("retrikt.student.trainer.fit", lambda *a, **k: trained.append(1) or [0.0])
    m2, _, info2 = adapted_teacher("tiny", task, KSHOT, 1, cfg)
    assert info2["adapter_reused"] and not trained
    x = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(m1(x).logits, m2(x).logits)  # the reloaded adapter is the trained one
    base = tiny_qwen(tok)(x).logits
    assert not torch.allclose(m1(x).logits, base)  # and it is not a no-op


@pytest.mark.parametrize("change", [dict(seed=2), dict(kshot=KSHOT[:4]), dict(cfg=dict(adapt_r=2)),
                                    dict(teacher="other"), dict(task="cola"),
                                    dict(kshot=[dict(e, label=1 - e["label"]) for e in KSHOT])])  # same indices
def test_a_changed_key_trains_a_new_adapter(tiny, tmp_path, monkeypatch, change):
    cfg = AdaptConfig(adapt_r=4, adapt_alpha=4, adapt_epochs=1, teacher_cache=str(tmp_path))
    trained = []
    real_fit = __import__("retrikt.student.trainer", fromlist=["fit"]).fit
    monkeypatch.setattr("retrikt.student.trainer.fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    adapted_teacher("tiny", get_task("sst2"), KSHOT, 1, cfg)
    new_cfg = AdaptConfig(**{**cfg.__dict__, **change.get("cfg", {})})
    _, _, info = adapted_teacher(change.get("teacher", "tiny"), get_task(change.get("task", "sst2")),
                                 change.get("kshot", KSHOT), change.get("seed", 1), new_cfg)
    assert len(trained) == 2 and not info["adapter_reused"]
    assert len(list(tmp_path.iterdir())) == 2


def test_a_folder_whose_recorded_key_differs_is_retrained(tiny, tmp_path):
    cfg = AdaptConfig(adapt_r=4, adapt_alpha=4, adapt_epochs=1, teacher_cache=str(tmp_path))
    task = get_task("sst2")
    adapted_teacher("tiny", task, KSHOT, 1, cfg)
    folder = adapter_folder(adapter_key("tiny", task, KSHOT, 1, cfg), cfg)
    side = folder / "retrikt_adapter.json"
    data = json.loads(side.read_text())
    data["extra"]["key"]["seed"] = 99
    side.write_text(json.dumps(data))
    (folder / "manifest.json").unlink()  # a hand-edited / half-written folder is never trusted
    _, _, info = adapted_teacher("tiny", task, KSHOT, 1, cfg)
    assert not info["adapter_reused"]


def test_labeller_modes(tiny, tmp_path):
    task = get_task("sst2")
    cfg = AdaptConfig(adapt_r=4, adapt_alpha=4, adapt_epochs=1, teacher_cache=str(tmp_path))
    zero, info = make_labeller("zero-shot", "tiny", task, KSHOT, 1)
    icl, info_icl = make_labeller("icl", "tiny", task, KSHOT, 1, demos=3)
    ad, info_ad = make_labeller("adapted", "tiny", task, KSHOT, 1, adapt=cfg)
    assert zero.demos == [] and info["calibration"] == "content-free"
    assert icl.demos == pick_demos(KSHOT, 3, 1) and info_icl["demo_idx"] == [d["idx"] for d in icl.demos]
    assert info_ad["kind"] == "adapted" and info_ad["adapter"].startswith(str(tmp_path))
    for clf in (zero, icl, ad):
        p = clf.predict_proba(KSHOT)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    with pytest.raises(Exception, match="unknown labeller"):
        make_labeller("oracle", "tiny", task, KSHOT, 1)


def test_batch_calibrated_labeller_uses_its_seeds_k_shot_inputs_except_the_demonstrations(tiny):
    task = get_task("sst2")
    kshot = KSHOT + [{"idx": 6, "sentence": "fine film", "label": 1}]
    icl, info = make_labeller("icl", "tiny", task, kshot, 1, demos=2, calibration="batch")
    assert info["calibration"] == "batch"
    demo_idx = {d["idx"] for d in icl.demos}
    assert sorted(e["idx"] for e in icl.calibration_inputs) == sorted(set(range(7)) - demo_idx)
    np.testing.assert_allclose(icl.label_mix, [3 / 7, 4 / 7])
    zero, _ = make_labeller("zero-shot", "tiny", task, kshot, 1, calibration="batch")
    assert len(zero.calibration_inputs) == 7
    np.testing.assert_allclose(icl.predict_proba(kshot).sum(1), 1, atol=1e-5)
