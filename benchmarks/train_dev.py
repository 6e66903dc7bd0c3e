"""Score saved students on a held-out slice of the *training* split: choosing training settings on training data.

    python -m benchmarks.train_dev --task sst2 --students runs/a/sst2__retrikt__minilm-l6__seed1 ... \
        --labels default default key-align-3 --n 872 --min-words 8 --name train_dev_sst2

The brief's rule is that hyper-parameters are chosen on training data only; a recipe change (a loss weight, a
neighbour count) compared on the validation set would be chosen on the figures it is then reported with. This scores
students saved by ``retrikt.train --save-student`` on up to ``--n`` training examples drawn with a fixed seed,
never one of the 32 k-shot examples of any seed the students were trained with (the labels of the rest are unseen by
every student: generated stores hold generated text; an oracle store's real training inputs are *not* left out, so
do not screen oracle-store students with it). ``--min-words`` keeps the slice like the validation set where the
training split is mostly phrases (SST-2's training examples average 9 words, its validation sentences 20).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from retrikt.config import arg, parse_config
from retrikt.eval import evaluate
from retrikt.eval.__main__ import load_saved
from retrikt.io import RetriktError, atomic_write_json, atomic_write_text, run_metadata
from retrikt.logs import setup_logging
from retrikt.tasks import get_task, load_split, sample_few_shot

from benchmarks.common import RESULTS


@dataclass
class TrainDevBench:
    task: str = arg("", help="task the students were trained on")
    students: list[str] = arg([], help="folders written by retrikt.train --save-student")
    labels: list[str] = arg([], help="one row label per student (the setting it was trained with)")
    n: int = arg(872, help="training examples to score (at most)")
    min_words: int = arg(0, help="keep only examples whose text fields hold at least this many words")
    shots: int = arg(32, help="k-shot size the students were trained with (those examples are left out)")
    sample_seed: int = arg(0, help="seed of the slice's draw")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    name: str = arg("train_dev", help="results file stem")


def dev_slice(task, pool: list[dict], seeds: list[int], cfg: TrainDevBench) -> list[dict]:
    """Up to ``cfg.n`` training examples, none of them in the k-shot set of any of ``seeds``."""
    held = {e["idx"] for s in seeds for e in sample_few_shot(pool, n=cfg.shots, seed=s)}
    keep = [e for e in pool if e["idx"] not in held
            and sum(len(str(e[f]).split()) for f in task.text_fields) >= cfg.min_words]
    random.Random(cfg.sample_seed).shuffle(keep)
    return keep[:cfg.n]


def main(argv=None) -> None:
    setup_logging()
    cfg = parse_config(TrainDevBench, argv, description=__doc__)
    if len(cfg.labels) != len(cfg.students):
        raise RetriktError(f"--labels: {len(cfg.labels)} labels for {len(cfg.students)} students")
    task = get_task(cfg.task)
    info = [json.loads((Path(s) / "student.json").read_text()) for s in cfg.students]
    seeds = sorted({int(i["seed"]) for i in info})
    dev = dev_slice(task, load_split(task, "train", data_dir=cfg.data_dir), seeds, cfg)
    rows = []
    for folder, label, meta in zip(cfg.students, cfg.labels, info):
        res = evaluate(load_saved(Path(folder), task, None, None), task, "train-dev", examples=dev)
        rows.append({"student": folder, "label": label, "seed": int(meta["seed"]), "main": res["main"],
                     "metrics": res["metrics"]})
    meta = run_metadata(config=asdict(cfg), seeds=seeds)
    atomic_write_json(RESULTS / f"{cfg.name}.json", {**meta, "n": len(dev), "rows": rows})
    atomic_write_text(RESULTS / f"{cfg.name}.md", markdown(rows, seeds, len(dev), cfg, meta["git_commit"]))
    print(markdown(rows, seeds, len(dev), cfg, meta["git_commit"]))


def markdown(rows: list[dict], seeds: list[int], n: int, cfg: TrainDevBench, commit: str) -> str:
    lines = [f"# {cfg.task}: students scored on {n} held-out training examples (main metric x100)", "",
             "| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for label in dict.fromkeys(r["label"] for r in rows):
        by_seed = {r["seed"]: 100 * r["main"] for r in rows if r["label"] == label}
        vals = list(by_seed.values())
        spread = f"{np.mean(vals):.1f}" + (f" ± {np.std(vals):.1f}" if len(vals) > 1 else "")
        lines.append(f"| {label} | " + " | ".join(f"{by_seed[s]:.1f}" if s in by_seed else "–" for s in seeds)
                     + f" | {spread} |")
    lines += ["", f"Training examples outside every seed's {cfg.shots}-shot set, ≥ {cfg.min_words} words, drawn with "
              f"seed {cfg.sample_seed}: choosing on these is choosing on training data. Commit `{commit}`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
