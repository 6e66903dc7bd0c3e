"""Peak RAM and wall time of each retrikt stage, each run as its own process.

    python -m benchmarks.peak_ram                      # real models, small sizes (minutes on 2 cores)
    python -m benchmarks.peak_ram --stages parametric  # qwen-1.5b -> qwen-0.5b extraction + a short fine-tune
    python -m benchmarks.peak_ram --smoke              # tiny random models, seconds

Every stage is a ``python -m retrikt...`` command; its peak resident memory is the child's ``ru_maxrss`` from
``os.wait4`` (what ``/usr/bin/time -v`` reports as "Maximum resident set size"). The baseline, measured in the same
run, is a process that only imports retrikt and torch. Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from retrikt.config import arg, parse_config
from retrikt.io import atomic_write_json, atomic_write_text, run_metadata

from benchmarks.common import RESULTS

SMOKE = {"teacher": "tiny-causal", "student": "tiny-encoder", "lm_student": "tiny-causal", "big_teacher": "tiny-causal",
         "embedder": "tiny-encoder", "name": "peak_ram_smoke", "tiny": True}


@dataclass
class PeakRamBench:
    stages: list[str] = arg(["import", "build", "teacher", "finetune", "retrikt"],
                            help="stages to measure: import build teacher finetune retrikt parametric")
    task: str = arg("cb", help="task every stage runs on")
    teacher: str = arg("qwen-0.5b", help="teacher for build / teacher stages")
    big_teacher: str = arg("qwen-1.5b", help="teacher of the parametric stage")
    lm_student: str = arg("qwen-0.5b", help="student of the parametric stage")
    student: str = arg("minilm-l6", help="encoder student")
    embedder: str = arg("minilm-l6", help="store embedder")
    eval_limit: int = arg(16, help="validation examples scored per stage (speed, not the figure measured)")
    tiny: bool = arg(False, help="pass --smoke to every stage (tiny random models; set by --smoke)")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    name: str = arg("peak_ram", help="results file stem")


def commands(cfg: PeakRamBench, work: str) -> dict[str, list[str]]:
    py = [sys.executable, "-m"]
    store = os.path.join(work, "store")
    common = ["--task", cfg.task] + (["--data-dir", cfg.data_dir] if cfg.data_dir else [])
    train = py + ["retrikt.train"] + common + ["--seeds", "1", "--eval-limit", str(cfg.eval_limit),
                                               "--out", os.path.join(work, "runs")]
    smoke = ["--smoke"] if cfg.tiny else []
    return {
        "import": [sys.executable, "-c", "import torch, transformers, peft, faiss, retrikt.student, retrikt.store"],
        "build": py + ["retrikt.build"] + common + ["--teacher", cfg.teacher, "--embedder", cfg.embedder,
                                                    "--per-label", "4", "--shots", "8", "--prompt-epochs", "1",
                                                    "--max-new-tokens", "32", "--out", store] + smoke,
        "teacher": train + ["--method", "teacher", "--teacher", cfg.teacher] + smoke,
        "finetune": train + ["--method", "finetune", "--student", cfg.student, "--epochs", "1"] + smoke,
        "retrikt": train + ["--method", "retrikt", "--student", cfg.student, "--store", store, "--epochs", "1"] + smoke,
        "parametric": train + ["--method", "parametric", "--teacher", cfg.big_teacher, "--student", cfg.lm_student,
                               "--epochs", "1", "--max-steps", "1"] + smoke,
    }


# A child's ru_maxrss counts the memory it had before exec, i.e. its parent's when forked from a big process
# (pytest with torch loaded): a small wrapper forks the command and reports the command's own peak.
_WRAPPER = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execvp(sys.argv[2], sys.argv[2:])\n"
            "_, status, ru = os.wait4(pid, 0)\nopen(sys.argv[1], 'w').write(str(ru.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status) & 255)")


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; its peak RSS (GiB), wall seconds and exit code."""
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile(prefix="retrikt-maxrss-") as out:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, out.name, *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        kib = int(open(out.name).read() or 0)
    stderr = proc.stderr.decode(errors="replace")
    row = {"command": shlex.join(cmd), "peak_rss_gib": kib / 1024 ** 2,
           "wall_s": time.perf_counter() - t0, "exit_code": proc.returncode}
    if proc.returncode:
        row["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
    return row


def table(rows: dict[str, dict]) -> str:
    base = rows.get("import", {}).get("peak_rss_gib")
    lines = ["| stage | peak RSS (GiB) | x import-only | wall (s) | exit |", "|---|---:|---:|---:|---:|"]
    for stage, r in rows.items():
        ratio = f"{r['peak_rss_gib'] / base:.1f}" if base else "-"
        lines.append(f"| {stage} | {r['peak_rss_gib']:.2f} | {ratio} | {r['wall_s']:.0f} | {r['exit_code']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    cfg = parse_config(PeakRamBench, argv, description=__doc__, smoke=SMOKE)
    unknown = [s for s in cfg.stages if s not in commands(cfg, "")]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; known: {sorted(commands(cfg, ''))}")
    if "retrikt" in cfg.stages and "build" not in cfg.stages:
        sys.exit("the retrikt stage trains on the store the build stage writes: add build to --stages")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="retrikt-peakram-") as work:
        cmds = commands(cfg, work)
        for stage in cfg.stages:
            print(f"{stage}: {shlex.join(cmds[stage])}", flush=True)
            rows[stage] = measure(cmds[stage])
            print(f"  peak {rows[stage]['peak_rss_gib']:.2f} GiB, {rows[stage]['wall_s']:.0f} s, "
                  f"exit {rows[stage]['exit_code']}", flush=True)
    meta = run_metadata(config=asdict(cfg), seeds=[1])
    atomic_write_json(RESULTS / f"{cfg.name}.json", {**meta, "stages": rows})
    regen = "python -m benchmarks.peak_ram " + shlex.join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(RESULTS / f"{cfg.name}.md", f"# Peak RAM per stage\n\n{table(rows)}\n\n"
                      f"Peak resident set size of each stage's process (ru_maxrss). Commit `{meta['git_commit']}`. "
                      f"Regenerate: `{regen.strip()}`\n")
    if any(r["exit_code"] for r in rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
