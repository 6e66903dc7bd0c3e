"""retrikt.dist outside a launcher: one process, devices as before."""
import pytest
import torch

from retrikt.dist import process_state, rank_device, world
from retrikt.io import RetriktError


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == (0, 1)
    assert process_state().is_main_process


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_devices_without_cuda(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_device("auto") == "cpu" and rank_device("cpu") == "cpu"
    with pytest.raises(RetriktError, match="no CUDA"):
        rank_device("cuda")
