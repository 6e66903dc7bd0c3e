"""`python -m retrikt.compose`: the CLI round trip writes a verified, loadable PEFT adapter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from retrikt.compose import main
from retrikt.init.arithmetic import SIDECAR
from retrikt.io import read_manifest, sha256_file
from tests.init.test_arithmetic import base_model, input_ids, lora_config, make_adapter

ROOT = Path(__file__).resolve().parent.parent


def test_cli_round_trip_produces_a_loadable_adapter(tmp_path):
    a = make_adapter(tmp_path / "a", lora_config(seq_cls=True), seq_cls=True)
    b = make_adapter(tmp_path / "b", lora_config(seq_cls=True), seq_cls=True, train_seed=2)
    out = tmp_path / "merged"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "retrikt.compose", "--op", "merge", "--adapters", str(a), str(b),
                           "--weights", "0.25", "0.75", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    read_manifest(out)   # every file matches its checksum
    side = json.loads((out / SIDECAR).read_text())
    assert side["composed"]["op"] == "merge" and side["composed"]["weights"] == [0.25, 0.75]
    assert [i["sha256"] for i in side["composed"]["inputs"]] == [sha256_file(p / "adapter_model.safetensors")
                                                                 for p in (a, b)]
    assert side["init_seed"] == 0
    model = PeftModel.from_pretrained(base_model(seq_cls=True), str(out))
    sa, sb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    for k, v in get_peft_model_state_dict(model).items():
        torch.testing.assert_close(v, 0.25 * sa[k] + 0.75 * sb[k], msg=k)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=input_ids()).logits).all()


def test_cli_reports_bad_input(tmp_path, capsys):
    a = make_adapter(tmp_path / "a", lora_config())
    assert main(["--op", "negate", "--adapters", str(a), str(a), "--out", str(tmp_path / "o")]) == 2
    assert "negate 1" in capsys.readouterr().err
    assert main(["--op", "merge", "--adapters", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
