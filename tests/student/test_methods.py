import numpy as np
import torch

from retrikt.init.adapters import load_adapter
from retrikt.student.encoder import load_student
from retrikt.methods import TrainConfig, run_method
from retrikt.tasks import get_task

DATA = [{"idx": i, "sentence": s, "label": y} for i, (s, y) in
        enumerate([("good film", 1), ("bad film", 0), ("great movie", 1), ("terrible movie", 0)])]


def test_lora_module_init_depends_on_the_seed_only_and_the_saved_student_reloads(tmp_path):
    cfg = TrainConfig(method="lora", student="tiny-encoder", epochs=1)
    a, _ = run_method(cfg, get_task("sst2"), DATA, seed=3)
    b, _ = run_method(cfg, get_task("cola"), [dict(e) for e in DATA], seed=3)
    assert a.encoder.retrikt_init == b.encoder.retrikt_init      # another task, the same recorded init
    c, _ = run_method(cfg, get_task("sst2"), DATA, seed=4)
    assert c.encoder.retrikt_init["init_sha256"] != a.encoder.retrikt_init["init_sha256"]
    a.save(tmp_path / "s", meta={"base": "tiny-encoder"})
    adapter = load_adapter(tmp_path / "s" / "encoder")
    assert adapter.sidecar["init_seed"] == 3 and adapter.sidecar["task"] == "sst2"
    again = load_student(tmp_path / "s", get_task("sst2"))
    torch.manual_seed(0)
    np.testing.assert_allclose(again.predict_proba(DATA), a.predict_proba(DATA), atol=1e-5)
