"""Sharded builds: 2 gloo ranks (spawned processes, as accelerate launch would start them) build the same store as
one process, and a build killed on one rank resumes from each rank's shard."""
import json
import os
import socket
import time

import numpy as np
import pytest
import torch.multiprocessing as mp

from retrikt.io import read_jsonl
from retrikt.store import Store
from retrikt.pipeline import run as B
from retrikt.store.shard import rank_batches, shard_dir
from retrikt.teacher.softprompt import SoftPromptGenerator
from tests.pipeline.test_build import _fake_generate

SHARED = " the good movie 1\nhypothesis: the bad film 2"  # generated in every batch: a duplicate across shards
TIMING = ("generate_seconds", "shard")


def _generate(self, conditions, n_per_condition=1, seed=0, **kw):
    out = _fake_generate(self, conditions, n_per_condition=n_per_condition, seed=seed, **kw)
    return out + [{"condition": conditions[0], "text": SHARED, "tokens": [1] * 8, "finished": True}]


def _cfg(out, min_entries: int = 0) -> B.BuildConfig:
    # 0.95 drops a few near duplicates among the tiny encoder's (similar) embeddings, so their order matters; uniform
    # mix: 6 batches; the random labeller agrees by chance only, so no agreement filter
    return B.BuildConfig(task="cb", teacher="tiny-causal", embedder="tiny-encoder", per_label=4, batch_size=2,
                         shots=8, prompt_epochs=1, label_demos=1, dedup_threshold=0.95, label_mix="uniform",
                         min_agreement=0.0, out=str(out), min_entries=min_entries)


def _rank(rank: int, world: int, port: int, out: str, die_at: int, calls_dir: str, min_entries: int) -> None:
    """One rank of a build, with the environment accelerate launch / torchrun would give it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    SoftPromptGenerator.generate = _generate
    real, calls = B.Filter.__call__, []

    def counting(self, samples, embedder):  # called once per generated batch
        calls.append(1)
        with open(os.path.join(calls_dir, f"rank-{rank}"), "w") as f:
            f.write(str(len(calls)))
        if len(calls) == die_at:
            raise RuntimeError(f"rank {rank} killed")
        return real(self, samples, embedder)

    B.Filter.__call__ = counting
    B.build_store(_cfg(out, min_entries))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, calls_dir, die: dict[int, int] | None = None,
            min_entries: int = 0) -> tuple[list[int], dict[int, int]]:
    """Start a 2-rank build; rank r raises in its ``die[r]``-th batch, and then the other rank is stopped, as a
    launcher does. Returns the exit codes and how many batches each rank generated."""
    calls_dir.mkdir(exist_ok=True)
    for f in calls_dir.iterdir():
        f.unlink()
    port, ctx = _free_port(), mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(out), (die or {}).get(r, 0), str(calls_dir),
                                             min_entries)) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(p.exitcode is None for p in procs) and \
            not any(p.exitcode for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(30)
    return [p.exitcode for p in procs], {int(f.name.split("-")[1]): int(f.read_text()) for f in calls_dir.iterdir()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same build on one process."""
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(SoftPromptGenerator, "generate", _generate)
        return Store.open(B.build_store(_cfg(tmp_path_factory.mktemp("single") / "store")))


def _assert_same_store(got: Store, want: Store) -> None:
    a, b = got.entries(range(len(got))), want.entries(range(len(want)))
    assert [e["fields"] for e in a] == [e["fields"] for e in b]  # same entries in the same order
    assert [e["label"] for e in a] == [e["label"] for e in b] and [e["meta"] for e in a] == [e["meta"] for e in b]
    assert np.allclose([e["soft_label"] for e in a], [e["soft_label"] for e in b], atol=1e-5, rtol=0)
    assert np.allclose(got.embeddings, want.embeddings, atol=1e-6, rtol=0)
    keys = ("generated", "parsed", "copies", "exact_dups", "near_dups", "kept", "agree")
    assert {k: got.manifest["stats"][k] for k in keys} == {k: want.manifest["stats"][k] for k in keys}
    strip = [lambda r: {k: v for k, v in r.items() if k not in TIMING}] * 2
    assert [strip[0](r) for r in read_jsonl(got.folder / "build_log.jsonl")] == \
        [strip[1](r) for r in read_jsonl(want.folder / "build_log.jsonl")]


def test_two_ranks_build_the_same_store_as_one_process(reference, tmp_path):
    out = tmp_path / "store"
    codes, calls = _launch(out, tmp_path / "calls")
    assert codes == [0, 0]
    store = Store.open(out, expected_embedder={"name": "tiny-encoder", "dim": 64})
    _assert_same_store(store, reference)
    assert store.manifest["world_size"] == 2 and reference.manifest["world_size"] == 1
    stats = store.manifest["stats"]
    assert stats["exact_dups"] == 6 + 5  # one repeat within each batch, SHARED in every batch but the first
    assert stats["near_dups"] > 0 and stats["kept"] == len(store)
    plan = B.batch_plan([4, 4, 4], 2)
    for rank in (0, 1):  # each rank generated its round-robin share into its own shard
        log = read_jsonl(shard_dir(out, rank) / "build_log.jsonl")
        assert [r["batch_id"] for r in log] == [b[0] for b in rank_batches(plan, rank, 2)]
        assert calls[rank] == 3


def test_killed_distributed_build_resumes_each_shard(reference, tmp_path):
    out, calls_dir = tmp_path / "store", tmp_path / "calls"
    codes, _ = _launch(out, calls_dir, die={1: 2})  # rank 1 dies in its second batch; rank 0 is stopped
    assert codes[1] == 1 and codes[0] != 0
    assert not (out / "manifest.json").exists()
    done = {r: len(list((shard_dir(out, r) / "parts").glob("part-*.parquet"))) for r in (0, 1)}
    assert done[1] == 1
    codes, calls = _launch(out, calls_dir)
    assert codes == [0, 0]
    assert calls.get(1) == 2 and calls.get(0, 0) == 3 - done[0]  # only the batches the kill lost were redone
    store = Store.open(out)
    _assert_same_store(store, reference)
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2


def test_two_ranks_grow_a_min_entries_store_as_one_process_does(tmp_path):
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(SoftPromptGenerator, "generate", _generate)
        want = Store.open(B.build_store(_cfg(tmp_path / "single", min_entries=18)))
    assert want.manifest["min_entries"]["samples"] > 12  # it did grow past the plan
    codes, _ = _launch(tmp_path / "store", tmp_path / "calls", min_entries=18)
    assert codes == [0, 0]
    got = Store.open(tmp_path / "store")
    _assert_same_store(got, want)
    assert got.manifest["min_entries"] == want.manifest["min_entries"]


def test_a_torn_shard_log_is_repaired_before_appending(tmp_path):
    from retrikt.io import append_jsonl
    from retrikt.store.shard import repair_log
    log = tmp_path / "build_log.jsonl"
    log.write_text('{"batch_id": 0}\n{"batch_id": 1, "gen')  # the rank was killed mid-append
    repair_log(log)
    append_jsonl(log, {"batch_id": 1})
    assert read_jsonl(log) == [{"batch_id": 0}, {"batch_id": 1}]


def test_trl_refinement_is_refused_under_a_launcher_unless_already_saved(tmp_path):
    cfg = _cfg(tmp_path / "store")
    cfg.rl = "grpo"
    with pytest.raises(Exception, match="accelerate launch"):
        B.check_rl_backend(cfg, tmp_path / "store", world=2)
    B.check_rl_backend(cfg, tmp_path / "store", world=1)  # one process: TRL runs as before
    cfg.rl = "ppo"
    B.check_rl_backend(cfg, tmp_path / "store", world=2)  # our PPO needs no other rank
