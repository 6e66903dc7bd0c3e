"""Data-parallel fit: 2 gloo ranks (spawned processes, as accelerate launch would start them) train the same weights
as one process over the same global batches."""
import json
import os
import socket
import time

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from retrikt.student.encoder import EncoderClassifier
from retrikt.student.trainer import FitConfig, example_loss, fit
from retrikt.tasks import get_task
from tests.student.test_trainer import _toy_sst2
from tests.tiny import tiny_bert, tiny_tokenizer

# 10 examples in batches of 3: 3, 3, 3, 1 -> ranks get 2+1 examples, and 1+0 in each epoch's last batch
CFG = FitConfig(epochs=3, lr=1e-3, head_lr=3e-3, batch_size=3, warmup_ratio=0.2)
VARIANTS = ("default", "loss_fn")


def _student() -> EncoderClassifier:
    tok = tiny_tokenizer()
    student = EncoderClassifier(tiny_bert(tok, seed=3), tok, get_task("sst2"))
    torch.manual_seed(3)
    student.head.reset_parameters()
    for m in student.modules():  # dropout masks are drawn per rank: only without dropout are the runs equal
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return student


def _train(variant: str) -> tuple[dict, list[float]]:
    student = _student()
    # a loss_fn that bypasses forward(), as the retrieval loss does: DDP must still sync its gradients
    loss_fn = (lambda m, b: example_loss(m.head(m.embed(m.tokenize(b))), b, m.task, CFG)) \
        if variant == "loss_fn" else None
    losses = fit(student, _toy_sst2(), CFG, seed=5, loss_fn=loss_fn)
    return {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()}, losses


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    weights, losses = {}, {}
    for variant in VARIANTS:
        state, losses[variant] = _train(variant)
        weights |= {f"{variant}/{k}": v for k, v in state.items()}
    save_file(weights, os.path.join(out, f"rank-{rank}.safetensors"))
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump(losses, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, world: int = 2) -> list[int]:
    ctx, port = mp.get_context("spawn"), _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(p.exitcode is None for p in procs) and not any(p.exitcode for p in procs):
        time.sleep(0.1)
    for p in procs:  # a failed rank: stop the other, as a launcher does
        if p.is_alive():
            p.terminate()
        p.join(30)
    return [p.exitcode for p in procs]


def test_two_ranks_train_the_weights_of_one_process(tmp_path):
    assert _launch(tmp_path) == [0, 0]
    ranks = [load_file(str(tmp_path / f"rank-{r}.safetensors")) for r in (0, 1)]
    rank_losses = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for variant in VARIANTS:
        want, want_losses = _train(variant)
        start = _student().state_dict()
        moved = 0
        for name, w in want.items():
            for r in (0, 1):  # both ranks end with the one-process weights (so with each other's)
                got = ranks[r][f"{variant}/{name}"]
                assert torch.allclose(got, w, atol=2e-6, rtol=0), (variant, name, r, (got - w).abs().max())
            moved += not torch.equal(w, start[name])
        assert moved > 10  # training changed the weights, so the comparison means something
        for r in (0, 1):
            assert len(rank_losses[r][variant]) == 12
            assert all(abs(a - b) < 1e-5 for a, b in zip(rank_losses[r][variant], want_losses)), variant

