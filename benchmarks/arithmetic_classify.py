"""Experiments 1 and 2 of ``benchmarks.arithmetic`` (see its docstring): merging classification modules trained on
skewed SST-2 subsets (``distribution``) and on two tasks (``multitask``)."""
from __future__ import annotations

import random
import statistics

from retrikt.init.arithmetic import merge
from retrikt.tasks import get_task, load_split

from benchmarks.arithmetic_common import (ArithmeticBench, encoder_module, load_state, module_state, pick, score,
                                          validation)


# ---- 1. distribution generalisation ------------------------------------------------------------------------

def skewed_subsets(train: list[dict], n: int, skew: float, heldout: int, seed: int):
    """Two disjoint subsets (``skew`` positive / ``skew`` negative) and a held-out slice of the rest."""
    rng = random.Random(seed)
    pos, neg = [e for e in train if e["label"] == 1], [e for e in train if e["label"] == 0]
    rng.shuffle(pos)
    rng.shuffle(neg)
    k = round(n * skew)
    s1, s2 = pos[:k] + neg[:n - k], pos[k:k + n - k] + neg[n - k:n - k + k]
    used = {e["idx"] for e in s1 + s2}
    held = rng.sample([e for e in train if e["idx"] not in used], heldout)
    return s1, s2, held


def run_distribution(cfg: ArithmeticBench, seed: int, device, ctx: dict) -> dict:
    task = get_task("sst2")
    val = validation(cfg, task)
    s1, s2, held = skewed_subsets(load_split(task, "train", data_dir=cfg.data_dir), cfg.subset_size, cfg.skew,
                                  cfg.heldout, seed)
    rows = {}
    for ptype in cfg.peft_types:
        students = [encoder_module(cfg, task, s, ptype, seed, device) for s in (s1, s2)]
        inits = {s.encoder.retrikt_init["init_sha256"] for s in students}
        states = [module_state(s) for s in students]
        res = {"subset-1": score(students[0], task, val), "subset-2": score(students[1], task, val)}
        probe = students[0]

        def merged(lam: float, states=states, ptype=ptype) -> dict:
            return merge(states, [lam, 1 - lam], ptype.upper(), head="merge")

        def on_heldout(lam: float, probe=probe, merged=merged) -> float:
            load_state(probe, merged(lam))
            return score(probe, task, held)["main"]

        lam, curve = pick(cfg.lam_grid, on_heldout)
        for label, value in (("merged", lam), ("merged-0.5", 0.5)):
            load_state(probe, merged(value))
            res[label] = {**score(probe, task, val), "lam": value}
        res["merged"]["heldout_curve"] = curve
        res["union"] = score(encoder_module(cfg, task, s1 + s2, ptype, seed, device), task, val)
        res["shared_init"] = len(inits) == 1
        rows[ptype] = res
    return {"rows": rows, "subset_pos_share": [sum(e["label"] for e in s) / len(s) for s in (s1, s2)],
            "heldout_pos_share": sum(e["label"] for e in held) / len(held)}


# ---- 2. multi-task -----------------------------------------------------------------------------------------

def run_multitask(cfg: ArithmeticBench, seed: int, device, ctx: dict) -> dict:
    tasks = [get_task("sst2"), get_task(cfg.second_task)]
    students, helds, vals = [], [], []
    for task in tasks:
        drawn = random.Random(seed).sample(load_split(task, "train", data_dir=cfg.data_dir), cfg.mt_size + cfg.heldout)
        students.append(encoder_module(cfg, task, drawn[:cfg.mt_size], "lora", seed, device))
        helds.append(drawn[cfg.mt_size:])
        vals.append(validation(cfg, task))
    states = [module_state(s) for s in students]
    res = {t.name: {"single": score(s, t, v)} for t, s, v in zip(tasks, students, vals)}

    def load_merged(lam: float) -> None:   # bodies merged, each student keeps its own head
        body = merge(states, [lam, 1 - lam], "LORA", head="none")
        for s in students:
            load_state(s, body)

    def on_heldout(lam: float) -> float:
        load_merged(lam)
        return statistics.fmean(score(s, t, h)["main"] for s, t, h in zip(students, tasks, helds))

    lam, curve = pick(cfg.lam_grid, on_heldout)
    for label, value in (("merged", lam), ("merged-0.5", 0.5)):
        load_merged(value)
        for t, s, v in zip(tasks, students, vals):
            res[t.name][label] = {**score(s, t, v), "lam": value}
    return {"rows": res, "lam": lam, "heldout_curve": curve, "tasks": [t.name for t in tasks],
            "shared_init": len({s.encoder.retrikt_init["init_sha256"] for s in students}) == 1}
