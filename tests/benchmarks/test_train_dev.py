"""The training-data slice that recipe settings are chosen on: never a k-shot example, as long as asked."""
from benchmarks.train_dev import TrainDevBench, dev_slice, markdown
from retrikt.tasks import get_task, sample_few_shot


def _pool():
    return [{"idx": i, "sentence": " ".join(["w"] * (3 + i % 10)), "label": i % 2} for i in range(400)]


def test_the_slice_leaves_out_every_seed_s_k_shot_examples_and_short_texts():
    task, pool = get_task("sst2"), _pool()
    cfg = TrainDevBench(task="sst2", n=1000, min_words=8, shots=32)
    dev = dev_slice(task, pool, [1, 2], cfg)
    shots = {e["idx"] for s in (1, 2) for e in sample_few_shot(pool, n=32, seed=s)}
    assert len(shots) > 32 and not shots & {e["idx"] for e in dev}
    assert all(len(e["sentence"].split()) >= 8 for e in dev)
    long_enough = sum(len(e["sentence"].split()) >= 8 for e in pool)
    assert len(dev) == long_enough - len({i for i in shots if len(pool[i]["sentence"].split()) >= 8})
    small = dev_slice(task, pool, [1, 2], TrainDevBench(task="sst2", n=10, min_words=8))
    assert len(small) == 10 and small == dev_slice(task, pool, [1, 2], TrainDevBench(task="sst2", n=10, min_words=8))


def test_markdown_shows_each_setting_by_seed_with_its_spread():
    rows = [{"label": "a", "seed": 1, "main": 0.8}, {"label": "a", "seed": 2, "main": 0.7},
            {"label": "b", "seed": 1, "main": 0.9}]
    md = markdown(rows, [1, 2], 500, TrainDevBench(task="sst2"), "abc").splitlines()
    assert "| a | 80.0 | 70.0 | 75.0 ± 5.0 |" in md and "| b | 90.0 | – | 90.0 |" in md
