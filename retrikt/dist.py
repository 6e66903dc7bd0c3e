"""Who am I in a scale-out run: rank, world size and device, from the environment a launcher set.

``accelerate launch --multi_gpu --num_processes N -m retrikt.build ...`` (or ``torchrun --nproc_per_node N``) starts
N copies of a command with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set; :func:`process_state` turns that into an
``accelerate.PartialState`` (NCCL on GPUs, gloo on CPU). A plain ``python -m ...`` gets a one-process state, so the
same code runs both ways.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch

from retrikt.io import RetriktError

logger = logging.getLogger(__name__)

# Ranks wait at barriers while rank 0 tunes the soft prompt (minutes to an hour with RL on a big teacher) or merges
# the shards; torch's default of 30 minutes would kill a healthy run.
DEFAULT_TIMEOUT_S = 4 * 3600.0


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def process_state(timeout_s: float | None = None):
    """The process's ``accelerate.PartialState`` (a singleton: the first call sets the barrier timeout)."""
    from accelerate import PartialState
    # PartialState only forms a multi-CPU (gloo) group when told cpu=True; without CUDA that is the only choice, and
    # `accelerate launch --cpu` (which needs MPI for N > 1) says so through ACCELERATE_USE_CPU.
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    kwargs = {"timeout": timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S)} if _launched() else {}
    return PartialState(cpu=cpu, **kwargs)


def configure_logging() -> int:
    """Log setup of a ``python -m`` entry point: INFO on rank 0, warnings only (tagged) on the others. Returns the
    rank (0 when not launched), read from the environment so that nothing distributed starts yet."""
    rank = int(os.environ.get("RANK", "0") or 0)
    from retrikt.logs import setup_logging
    setup_logging(logging.INFO if rank == 0 else logging.WARNING,
                  f"%(levelname)s {f'[rank {rank}] ' if rank else ''}%(name)s: %(message)s")
    return rank


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    state = process_state()
    return state.process_index, state.num_processes


def rank_device(name: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` -> the device this process should use (``cuda:<local rank>`` in a group)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RetriktError("--device cuda was asked for but no CUDA device is available")
    if name in ("auto", "cuda") and _launched():
        state = process_state()
        if state.num_processes > 1:
            if state.device.type != "cuda":
                if name == "cuda":
                    raise RetriktError("--device cuda: this process group runs on CPU (gloo); launch without --cpu")
                return "cpu"
            return str(state.device)  # one GPU per rank: cuda:<local rank>
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
