"""Re-pick each saved full retrikt student's setting from its own CV grid under a stricter SE margin, and score it on
the held-out training slice (benchmarks.train_dev's) and on validation. usage: margin.py OUT.json STUDENT_DIR..."""
import json, sys
from dataclasses import replace
from pathlib import Path
from retrikt.student.selection import pick_setting
from retrikt.eval import evaluate
from retrikt.eval.__main__ import load_saved
from retrikt.tasks import get_task, load_split
from benchmarks.train_dev import TrainDevBench, dev_slice

task = get_task("sst2")
D = "/work/shared/data"
cfg = TrainDevBench(task="sst2", n=872, min_words=8, data_dir=D)
dev = dev_slice(task, load_split(task, "train", data_dir=D), [1, 2, 3], cfg)
val = load_split(task, "validation", data_dir=D)
out = []
for folder in sys.argv[2:]:
    folder = Path(folder)
    run = json.loads(Path(str(folder) + ".json").read_text())
    rows = run["selection"]["grid"]
    model = load_saved(folder, task, None, None)
    base_settings = model.settings
    done = {}
    for m in (1.0, 1.5, 2.0, 3.0):
        p = pick_setting(rows, se_margin=m)
        key = (p["beta"], p["k"], p["tau"], p["keys"], p["labels"]) if p["beta"] < 1 else ("alone",)
        if key not in done:
            model.settings = (replace(base_settings, beta=1.0) if p["beta"] >= 1 else
                              replace(base_settings, beta=p["beta"], k=p["k"], tau=p["tau"], keys=p["keys"],
                                      labels=p["labels"]))
            done[key] = {split: evaluate(model, task, split, examples=ex)["main"]
                         for split, ex in (("train-dev", dev), ("validation", val))}
        out.append({"student": str(folder), "seed": run["seed"], "margin": m, "setting": list(key), **done[key]})
        print(out[-1], flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
