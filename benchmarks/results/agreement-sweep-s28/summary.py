"""The agreement-threshold sweep on SST-2 (session 28): one table per threshold from the files the sweep wrote.

    python benchmarks/results/agreement-sweep-s28/summary.py

Reads store_quality_agreement_s28.json (entries, label mix), store_knn_agreement_s28.json (kNN over each store,
validation), train_dev_agreement_s28.json (kd students on 872 held-out *training* sentences: where the threshold is
chosen) and the kd runs' own results under kd/ (validation, read after the choice). Writes
benchmarks/results/agreement_sweep_sst2_s28.{json,md}.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent


def load(name):
    return json.loads((RESULTS / name).read_text())


def threshold_of(path) -> str:
    return re.search(r"sst2-a([0-9.]+)-s(\d)", str(path)).group(1)


def seed_of(path) -> int:
    return int(re.search(r"-s(\d)$", str(path).rstrip("/")).group(1))


def ms(xs, scale=100.0, p=1):
    xs = np.asarray(xs, float) * scale
    return f"{xs.mean():.{p}f} ± {xs.std(ddof=1):.{p}f}" if len(xs) > 1 else f"{xs.mean():.{p}f}"


def main():
    quality = {r["store"]: r for r in load("store_quality_agreement_s28.json")["rows"]}
    knn = {r["store"]: r for r in load("store_knn_agreement_s28.json")["rows"]}
    dev = {(r["label"], r["seed"]): r["main"] for r in load("train_dev_agreement_s28.json")["rows"]}
    val = {}
    for f in sorted((HERE / "kd").glob("a*/sst2__kd__minilm-l6__seed*.json")):
        r = json.loads(f.read_text())
        val[(f.parent.name[1:], int(re.search(r"seed(\d)", f.name).group(1)))] = r["metrics"]["main"]
    rows = []
    for t in sorted({threshold_of(s) for s in quality}, key=float):
        stores = sorted((s for s in quality if threshold_of(s) == t), key=seed_of)
        seeds = [seed_of(s) for s in stores]
        row = {"threshold": float(t), "seeds": seeds,
               "entries": [quality[s]["entries"] for s in stores],
               "negative_share": [quality[s]["labels"].get("0", 0) / quality[s]["entries"] for s in stores],
               "knn_prior_k8": [knn[s]["teacher_prior"]["8"] for s in stores],
               "knn_teacher_k8": [knn[s]["teacher_soft"]["8"] for s in stores],
               "knn_gold_k8": [knn[s]["kshot"]["8"][0] for s in stores],
               "kd_train_dev": [dev.get((f"a{t}", s)) for s in seeds],
               "kd_validation": [val.get((t, s)) for s in seeds]}
        rows.append(row)
    out = {"rows": rows, "sources": ["store_quality_agreement_s28.json", "store_knn_agreement_s28.json",
                                     "train_dev_agreement_s28.json", "agreement-sweep-s28/kd/"]}
    (RESULTS / "agreement_sweep_sst2_s28.json").write_text(json.dumps(out, indent=2) + "\n")
    done = [r for r in rows if None not in r["kd_train_dev"]]
    best = max(done, key=lambda r: np.mean(r["kd_train_dev"])) if done else None
    lines = ["# SST-2: the labeller-agreement threshold, swept on stores built without it (session 28)", "",
             "| min agreement | entries (s1 / s2 / s3) | negative share | store kNN k=8, teacher labels | "
             "store kNN k=8, k-shot prior | gold k-shot kNN k=8 | kd, held-out training sentences | kd, validation |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f = lambda xs: ms(xs) if None not in xs else "–"  # noqa: E731
        mark = " (chosen)" if r is best else ""
        lines.append(f"| {r['threshold']:g}{mark} | {' / '.join(map(str, r['entries']))} | "
                     f"{np.mean(r['negative_share']):.2f} | {f(r['knn_teacher_k8'])} | {f(r['knn_prior_k8'])} | "
                     f"{f(r['knn_gold_k8'])} | {f(r['kd_train_dev'])} | {f(r['kd_validation'])} |")
    old = next((r for r in rows if r["threshold"] == 0.5), None)
    if best is not None and old is not None and best is not old:
        diff = lambda key: " / ".join(f"{100 * (a - b):+.1f}" for a, b in zip(best[key], old[key]))  # noqa: E731
        lines += ["", f"Chosen minus 0.5 (the threshold before), per seed: held-out training sentences "
                      f"{diff('kd_train_dev')}, validation {diff('kd_validation')}."]
    lines += ["", "One SST-2 store per seed built by `stores/sst2.yaml` with `--min-agreement 0` (every parsed, "
              "finished, non-copy sample kept with its labeller's soft label), re-filtered at each threshold by "
              "`retrikt.build --from-store` (the build's own rule). kd: `retrikt.train --method kd --store-prior "
              "kshot` (SST-2's training recipe), one student per store and seed; chosen on the mean over seeds on "
              "872 held-out training sentences (≥ 8 words, no seed's k-shot example; `benchmarks.train_dev`), "
              "validation (n = 872) read after. kNN: `benchmarks.store_knn`, β = 0, τ = 0.1, validation "
              "(a diagnosis, not a choice). Mean ± sample std over seeds (as the "
              "grid tables; `train_dev_agreement_s28.md` gives the population std), x100."]
    (RESULTS / "agreement_sweep_sst2_s28.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
