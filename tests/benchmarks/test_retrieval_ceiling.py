import numpy as np

from benchmarks.retrieval_ceiling import score_grid
from retrikt.tasks import get_task


class FakeStudent:
    """A student whose own prediction is right on ``student_right`` and whose neighbours all carry the gold label
    (``helpful``) or the wrong one: what the grid makes of them, without training anything."""
    trained_keys = "teacher"  # the space searched first need not be the store's

    def __init__(self, gold, student_right, helpful):
        n = len(gold)
        self.p = np.full((n, 2), 0.4, np.float32)
        for i, y in enumerate(gold):
            self.p[i, y if student_right[i] else 1 - y] = 0.6
        memory_labels = np.array(gold if helpful else [1 - y for y in gold])  # row i: input i's neighbour
        self.teacher_probs = self.conditioned_probs = np.eye(2, dtype=np.float32)[memory_labels]

    def _student_and_neighbours(self, examples, k, keys=None):
        n = len(examples)
        ids = np.repeat(np.arange(n)[:, None], k, 1)
        return self.p, np.ones((n, k), np.float32), ids


def _split(n=40):
    gold = [i % 2 for i in range(n)]
    return [{"sentence": f"s{i}", "label": y} for i, y in enumerate(gold)], gold


def test_the_ceiling_finds_retrieval_where_neighbours_know_better_and_none_where_they_do_not():
    task = get_task("sst2")
    split, gold = _split()
    right = [i % 4 != 0 for i in range(len(gold))]  # the student alone: 75%
    rows = score_grid(FakeStudent(gold, right, helpful=True), task, split)
    alone = [r for r in rows if r["beta"] >= 1]
    assert len(alone) == 1 and alone[0]["main"] == 0.75
    best = max(rows, key=lambda r: (r["main"], r["beta"]))
    assert best["main"] == 1.0 and best["beta"] < 1  # neighbours outvote the student's wrong 0.6
    rows = score_grid(FakeStudent(gold, right, helpful=False), task, split)
    best = max(rows, key=lambda r: (r["main"], r["beta"]))
    assert best["main"] == 0.75 and best["beta"] == 1  # wrong neighbours: nothing beats the student alone
    assert {r["keys"] for r in rows} == {"none", "teacher", "student"}  # alone, the trained space, the student's own
