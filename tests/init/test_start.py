"""--init as an axis of its own: a fully trained student starts from the initialiser's module folded into its
weights; a lora student trains the module itself."""
import pytest
import torch

from retrikt import models
from retrikt.init.start import merge_into_weights, start_student
from retrikt.io import RetriktError
from retrikt.methods.base import StudentConfig
from retrikt.tasks import get_task
from tests.test_train import lora_modules


def _query(encoder):
    return encoder.encoder.layer[0].attention.self.query.weight


def test_arithmetic_init_is_folded_into_the_weights_of_a_fully_trained_student(tmp_path):
    from retrikt.init.adapters import load_adapter, lora_scaling
    adapters = lora_modules(tmp_path)
    cfg = StudentConfig(student="tiny-encoder", init="arithmetic", adapters=adapters)
    student, facts = start_student(cfg, get_task("sst2"), [], 1, "cpu")
    assert hasattr(student.encoder, "peft_config") and facts["arithmetic"]["op"] == "merge"
    merge_into_weights(student)
    assert not hasattr(student.encoder, "peft_config")
    assert all(p.requires_grad for p in student.encoder.parameters())   # PEFT froze them; every weight trains
    # the start is base + the mean of the modules' ΔW (a shared A: the mean of B times A)
    plain, _ = models.load_encoder("tiny-encoder")
    mods = [load_adapter(a) for a in adapters]
    key = next(k for k in mods[0].state if "layer.0." in k and "query.lora_A" in k)
    a = mods[0].state[key]
    b = sum(m.state[key.replace("lora_A", "lora_B")] for m in mods) / len(mods)
    expected = _query(plain) + lora_scaling(mods[0].config) * (b @ a)
    torch.testing.assert_close(_query(student.encoder), expected, atol=1e-5, rtol=1e-5)


def test_none_starts_from_the_plain_pretrained_student():
    student, facts = start_student(StudentConfig(student="tiny-encoder"), get_task("sst2"), [], 1, "cpu")
    merge_into_weights(student)             # nothing to fold
    plain, _ = models.load_encoder("tiny-encoder")
    assert facts == {} and torch.equal(_query(student.encoder), _query(plain))


def test_initialisers_say_why_they_cannot_start_a_student():
    with pytest.raises(RetriktError, match="arithmetic needs --adapters"):
        start_student(StudentConfig(student="tiny-encoder", init="arithmetic"), get_task("sst2"), [], 1, "cpu")
    with pytest.raises(RetriktError, match="cannot start tiny-encoder, an encoder student"):
        start_student(StudentConfig(student="tiny-encoder", init="parametric"), get_task("sst2"), [], 1, "cpu")
