"""python -m retrikt.compare: every method x task x seed through one harness, then a table and plots.

    python -m retrikt.compare --tasks cb rte copa sst2 cola --methods finetune lora kd retrikt parametric \\
        arithmetic --seeds 1 2 3 --shots 32
    python -m retrikt.compare --tasks sst2 cola rte --methods retrikt retrikt+arithmetic   # a method + an init
    python -m retrikt.compare --config my-recipe.yaml   # a copy of a preset file (retrikt/presets/*.yaml)
    python -m retrikt.compare --smoke        # the whole grid on tiny random models, in minutes
    python -m retrikt.compare --report-only  # the table and plots from the runs already there; runs nothing

Resumable: a (method, task, seed) whose results file exists is not recomputed; stores are built (or resumed) once per
(task, seed), each from that seed's k-shot set, so the kd / retrikt runs of a seed stay k-shot. Methods that are not
available are listed as missing, never silently skipped. What a row needs (a store, the other tasks' lora modules,
one seed only, a causal-LM student) is read from its method's and initialiser's declarations (retrikt.methods,
retrikt.init). A task's training recipe (``train/tasks/<task>.yaml``, retrikt.methods.recipes) sets options chosen
for that task on held-out training data.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from retrikt.config import arg, from_dict, load_preset, parse_config, preset_names
from retrikt.eval import load_results, markdown_table, summarise
from retrikt.eval.paired import DEFAULT_PAIRS, paired_records, paired_table, parse_pairs
from retrikt.eval.results import run_name
from retrikt.io import RetriktError, atomic_write_text, run_metadata
from retrikt.init import INITS, Init
from retrikt.logs import setup_logging
from retrikt.methods import Method, TrainConfig, check_combination, get_method, run_label
from retrikt.methods.recipes import task_options

logger = logging.getLogger("retrikt.compare")

PRESETS = Path(__file__).resolve().parent / "presets"   # <name>.yaml, shipped with the package
MODULE_SOURCE = "lora"  # the row whose saved modules feed rows that need the other tasks' lora modules


@dataclass
class CompareConfig:
    tasks: list[str] = arg(["cb", "rte", "copa", "sst2", "cola"], help="tasks to compare on")
    methods: list[str] = arg(["teacher", "finetune", "lora", "kd", "retrikt", "parametric", "arithmetic"],
                             help="rows to compare: a method, or METHOD+INIT for a method started from an "
                                  "initialiser (e.g. retrikt+arithmetic: the mean of the other tasks' lora modules "
                                  "folded into the retrieval student's encoder)")
    seeds: list[int] = arg([1, 2, 3], help="seeds (each samples its own k-shot set)")
    shots: int = arg(32, help="k-shot training examples per task (total, stratified)")
    preset: str = arg("default", help=f"a preset file of {PRESETS}: {' | '.join(preset_names(PRESETS))} (paper: "
                                      "qwen-1.5b teacher, qwen-0.5b LM student); --config and flags override it",
                      choices=preset_names(PRESETS))
    student: str = arg("minilm-l6", help="encoder student (finetune, lora, kd, retrikt, arithmetic: the mean of the "
                                        "other tasks' lora modules as init)")
    lm_student: str = arg("qwen-0.5b", help="causal-LM student (parametric)")
    teacher: str = arg("qwen-0.5b", help="teacher LLM (store generator and labeller, teacher row)")
    parametric_teacher: str = arg("qwen-1.5b", help="teacher the parametric method extracts from (larger than "
                                                    "--lm-student, same tokenizer)")
    embedder: str = arg("minilm-l6", help="store embedder")
    store_recipes: str = arg("stores", help="folder of build recipes <task>.yaml (retrikt.build options) for the stores "
                                          "compare builds; compare sets task, seed, teacher, embedder, shots, out "
                                          "and data dir, and the three options below when given")
    train_recipes: str = arg("train/tasks", help="folder of per-task training recipes <task>.yaml (method: {option: "
                                                 "value}): a method's options chosen for that task on held-out "
                                                 "training data (e.g. sst2.yaml: kd: {store_prior: kshot}); a run "
                                                 "trained otherwise is redone; not read by the smoke preset")
    per_label: int | None = arg(None, help="generated samples per label when a store must be built (default: the "
                                           "task's recipe, else retrikt.build's)")
    max_new_tokens: int | None = arg(None, help="longest generated store sample (default: the recipe's)")
    max_length: int = arg(256, help="encoder student max tokens per input")
    prompt_epochs: int | None = arg(None, help="soft-prompt tuning epochs when a store must be built (default: the "
                                               "recipe's)")
    min_agreement: float | None = arg(None, help="labeller-agreement threshold when a store must be built (default: "
                                                 "the recipe's)")
    min_entries: int | None = arg(None, help="entries a store must build up to (retrikt.build --min-entries; default: "
                                             "the recipe's, or 0 when --per-label is given: that size, as asked)")
    teacher_calibration: str = arg("content-free", help="teacher rows: none | content-free | batch (on the seed's "
                                                        "k-shot inputs, so the zero-shot row then runs per seed; "
                                                        "see retrikt.train --teacher-calibration)",
                                   choices=["none", "content-free", "batch"])
    retrieval_keys: str = arg("auto", help="retrikt rows: key space of retrieval (store | student | teacher | auto, "
                                            "see retrikt.train --retrieval-keys)",
                              choices=["store", "student", "teacher", "auto"])
    cv_folds: int = arg(4, help="retrikt rows: folds of the cross-validation that chooses k, beta, tau on the k-shot "
                                "set (see retrikt.train --cv-folds); each fold trains a student")
    epochs: int = arg(20, help="training epochs over the k-shot set (encoder students)")
    lm_epochs: int = arg(3, help="training epochs of the causal-LM student (parametric; paper: 3, at lr 3e-4)")
    parametric_seeds: int = arg(32, help="parametric: seed samples for the sensitivity (paper: 32)")
    lm_max_length: int = arg(256, help="causal-LM student max tokens per input (parametric); kept apart from "
                                       "--max-length so shortening the encoders' inputs does not cut the LM's")
    eval_limit: int = arg(0, help="score only the first N validation examples (0 = all)")
    data_dir: str | None = arg(None, help="folder with glue/ and superglue/ data")
    out: str = arg("benchmarks/results/compare", help="results folder (runs/, results.jsonl, table.md, *.png)")
    stores: str = arg("stores", help="folder holding one store per task and seed, <task>-<teacher>-s<seed> (built "
                                     "when missing)")
    paired: list[str] = arg(list(DEFAULT_PAIRS), help="pairs of rows ROW_A:ROW_B compared example by example on "
                                                      "the seeds both have, under the table (difference per seed, "
                                                      "exact McNemar test, paired bootstrap interval); none = no "
                                                      "such section")
    report_only: bool = arg(False, help="run nothing: write the table and plots from the runs already in --out, "
                                        "listing every (method, task) that lacks seeds")


@dataclass(frozen=True)
class Row:
    """A row of the table: a method, started from an initialiser; what it needs, read from their declarations."""
    label: str
    method: Method
    init: Init

    @property
    def needs_store(self) -> bool:
        return self.method.needs_store

    @property
    def needs_lora_modules(self) -> bool:
        return self.method.needs_lora_modules or self.init.needs_lora_modules

    @property
    def lm(self) -> bool:
        """Trains the causal-LM student: neither the method nor the initialiser can take the encoder."""
        kinds = set(self.method.students) & set(self.init.students)   # empty for the teacher rows
        return bool(kinds) and "encoder" not in kinds


def row(label: str) -> Row:
    """``retrikt`` or ``retrikt+arithmetic`` -> its Row (a RetriktError names an unknown method or init)."""
    name, _, init = label.partition("+")
    if (init or "none") not in INITS:
        raise RetriktError(f"unknown init {init!r} in {label!r}; known: {', '.join(INITS)}")
    return Row(label, get_method(name), INITS[init or "none"])


def seeds_of(cfg: CompareConfig, label: str) -> list[int]:
    """The seeds ``label`` runs on: the first only where its result does not depend on the seed."""
    once = row(label).method.runs_once(train_config(cfg, label, cfg.tasks[0], cfg.seeds[0]))
    return cfg.seeds[:1] if once else cfg.seeds


def train_config(cfg: CompareConfig, label: str, task: str, seed: int) -> TrainConfig:
    r = row(label)
    lm = r.lm
    extra = {}
    if label == MODULE_SOURCE:  # its module is a source of the rows that need the other tasks' modules
        extra["save_student"] = True
    if r.needs_lora_modules:
        extra.update(op="merge", adapters=[str(a) for a in source_adapters(cfg, task, seed)])
    if lm:
        extra["parametric_seeds"] = cfg.parametric_seeds
    if r.method.name == "retrikt":
        extra.update(retrieval_keys=cfg.retrieval_keys, cv_folds=cfg.cv_folds)
    if r.method.students == ("teacher",):
        extra["teacher_calibration"] = cfg.teacher_calibration
    fixed = dict(task=task, method=r.method.name, init=r.init.name, student=cfg.lm_student if lm else cfg.student,
                 teacher=cfg.parametric_teacher if lm else cfg.teacher, shots=cfg.shots, seeds=[seed],
                 data_dir=cfg.data_dir, out=str(Path(cfg.out) / "runs"), epochs=cfg.lm_epochs if lm else cfg.epochs,
                 eval_limit=cfg.eval_limit, max_length=cfg.lm_max_length if lm else cfg.max_length,
                 store=str(store_path(cfg, task, seed)) if r.needs_store else None, **extra)
    return TrainConfig(**fixed, **recipe_options(cfg, r, task, fixed))


def recipe_options(cfg: CompareConfig, r: Row, task: str, fixed: dict) -> dict:
    """The row's options from the task's training recipe (none for the smoke preset's random tiny models)."""
    return {} if cfg.preset == "smoke" else task_options(cfg.train_recipes, task, r.method, fixed)


def lora_adapter(cfg: CompareConfig, task: str, seed: int) -> Path:
    return Path(cfg.out) / "runs" / run_name(task, "lora", cfg.student, seed) / "encoder"


def source_adapters(cfg: CompareConfig, task: str, seed: int) -> list[Path]:
    """The arithmetic init of the grid: the mean of the LoRA modules trained (same seed, so same init) on the other
    tasks of the grid, i.e. module addition as transfer from related tasks; then trained by the row's method."""
    return [lora_adapter(cfg, t, seed) for t in cfg.tasks if t != task]


def store_path(cfg: CompareConfig, task: str, seed: int) -> Path:
    """The store of ``task`` built from ``seed``'s k-shot set: a student of another seed would learn from the
    knowledge of training examples outside its own k-shot set."""
    smoke = "-smoke" if cfg.preset == "smoke" else ""
    return Path(cfg.stores) / f"{task}-{cfg.teacher.replace('/', '_')}-s{seed}{smoke}"


def ensure_store(cfg: CompareConfig, task: str, seed: int) -> Path:
    from retrikt.pipeline.run import build_store
    path = store_path(cfg, task, seed)
    if (path / "manifest.json").exists():
        _warn_if_small(path, build_config(cfg, task, seed, path).min_entries)
        return path
    return build_store(build_config(cfg, task, seed, path))


def _warn_if_small(path: Path, want: int) -> None:
    """A reused store built before its recipe asked for a size, or stopped at --max-samples, is used as it is."""
    from retrikt.io import IntegrityError, read_manifest
    try:
        have = read_manifest(path, verify=False).get("counts", {}).get("entries", 0)
    except IntegrityError:
        return  # the student's Store.open names what is wrong with it
    if have < want:
        logger.warning("%s holds %d entries, under min_entries %d; it is used as it is (grow it: re-run its build "
                       "with --min-entries %d and the options its manifest records)", path, have, want, want)


def build_config(cfg: CompareConfig, task: str, seed: int, path: Path):
    """The store's BuildConfig: the task's recipe (``<store_recipes>/<task>.yaml``) if there is one, under what the
    comparison fixes (task, seed, models, shots, where it goes) and the store options given to compare."""
    from retrikt.config import from_dict, load_yaml
    from retrikt.pipeline.config import SMOKE, BuildConfig
    recipe = Path(cfg.store_recipes) / f"{task}.yaml"
    data = load_yaml(recipe) if recipe.exists() and cfg.preset != "smoke" else {}
    data.update(task=task, teacher=cfg.teacher, embedder=cfg.embedder, out=str(path), shots=cfg.shots, seed=seed,
                data_dir=cfg.data_dir)
    if cfg.per_label is not None:
        data["min_entries"] = 0  # a size asked for here is not grown to the recipe's
    data.update({k: getattr(cfg, k) for k in ("per_label", "max_new_tokens", "prompt_epochs", "min_agreement",
                                              "min_entries") if getattr(cfg, k) is not None})
    if cfg.preset == "smoke":  # random tiny models: no format, no end, chance agreement, near-identical embeddings
        data.update({k: SMOKE[k] for k in ("keep_unfinished", "min_agreement", "dedup_threshold", "parse_mode")})
    return from_dict(BuildConfig, data, str(recipe) if recipe.exists() else "compare")


def result_file(cfg: CompareConfig, tc) -> Path:
    student = tc.teacher if row(tc.method).method.students == ("teacher",) else tc.student
    return Path(tc.out) / (run_name(tc.task, run_label(tc), student, tc.seeds[0]) + ".json")


def _same_store(result: Path, store: str | None) -> bool:
    """Whether the result was trained on the store now at ``store`` (its manifest's checksum); a missing store is
    built before the run, so a result without one is not taken as done."""
    from retrikt.io import MANIFEST, sha256_file
    if not store or not (Path(store) / MANIFEST).exists():
        return False
    return json.loads(result.read_text()).get("store_checksum") == sha256_file(Path(store) / MANIFEST)


def _done(cfg: CompareConfig, tc) -> bool:
    from retrikt.teacher.lm import calibration_applies
    from retrikt.tasks import get_task
    path = result_file(cfg, tc)
    if not path.exists():
        return False
    r = row(run_label(tc))
    if r.label == MODULE_SOURCE:  # a result without its saved module (an older run) cannot feed other rows: redo it
        return (lora_adapter(cfg, tc.task, tc.seeds[0]) / "adapter_config.json").exists()
    recorded = json.loads(path.read_text()).get("config", {})
    if r.needs_store and (recorded.get("store") != tc.store or not _same_store(path, tc.store)):
        # trained on another store (before stores were per seed: the seed-1 store for every seed), or on a store
        # since rebuilt at the same path
        logger.info("%s %s seed %d used another store than %s: redoing it", tc.task, r.label, tc.seeds[0], tc.store)
        return False
    if r.needs_lora_modules and recorded.get("adapters") != list(tc.adapters):
        # merged from another set of tasks (the grid grew): its init is not this grid's
        logger.info("%s %s seed %d merged %s, the grid now merges %s: redoing it",
                    tc.task, r.label, tc.seeds[0], recorded.get("adapters"), list(tc.adapters))
        return False
    # a run without the field predates the CV: it chose its settings on a held-out quarter (cv_folds < 2)
    if r.method.name == "retrikt" and recorded.get("cv_folds", 0) != tc.cv_folds:
        logger.info("%s %s seed %d chose its settings by %s, now by %d-fold CV: redoing it", tc.task, r.label,
                    tc.seeds[0], f"{recorded['cv_folds']}-fold CV" if recorded.get("cv_folds", 0) >= 2
                    else "a held-out quarter", tc.cv_folds)
        return False
    for key in recipe_options(cfg, r, tc.task, {}):
        if recorded.get(key) != getattr(tc, key):
            logger.info("%s %s seed %d was trained with %s = %s, the task recipe says %s: redoing it", tc.task,
                        r.label, tc.seeds[0], key, recorded.get(key), getattr(tc, key))
            return False
    if (r.method.students == ("teacher",) and calibration_applies(get_task(tc.task))
            and recorded.get("teacher_calibration", "none") != tc.teacher_calibration):
        logger.info("%s %s was scored with calibration %s, now %s: redoing it", tc.task, r.label,
                    recorded.get("teacher_calibration", "none"), tc.teacher_calibration)
        return False
    return True


def _jobs(cfg: CompareConfig, labels: list[str]) -> list[tuple[str, str, int]]:
    """(row, task, seed) in run order; rows that start from the other tasks' lora modules last, after those."""
    late = [label for label in labels if row(label).needs_lora_modules]
    jobs = [(label, t, s) for t in cfg.tasks for label in labels if label not in late for s in seeds_of(cfg, label)]
    if late:
        jobs += [(MODULE_SOURCE, t, s) for t in cfg.tasks for s in cfg.seeds if (MODULE_SOURCE, t, s) not in jobs]
        jobs += [(label, t, s) for label in late for t in cfg.tasks for s in cfg.seeds]
    return jobs


def check_row(cfg: CompareConfig, label: str) -> None:
    """A RetriktError saying why ``label`` cannot run in this grid (unknown, impossible combination, one task)."""
    check_combination(train_config(cfg, label, cfg.tasks[0], cfg.seeds[0]))
    for task in cfg.tasks[1:]:  # every task's training recipe is read now, not after hours of other rows
        train_config(cfg, label, task, cfg.seeds[0])
    if row(label).needs_lora_modules and len(cfg.tasks) < 2:
        raise RetriktError("merges the lora modules of the other tasks: compare at least two tasks")


def run_grid(cfg: CompareConfig) -> dict[str, str]:
    """Run every missing (row, task, seed); returns {row: reason} for rows that could not run."""
    from retrikt.tasks import get_task, load_split
    from retrikt.train import run_one
    missing: dict[str, str] = {}
    for label in cfg.methods:
        try:
            check_row(cfg, label)
        except RetriktError as e:
            missing[label] = str(e)
    pools: dict[str, tuple] = {}
    for label, task_name, seed in _jobs(cfg, [m for m in cfg.methods if m not in missing]):
        if task_name not in pools:
            task = get_task(task_name)
            pools[task_name] = (task, load_split(task, "train", data_dir=cfg.data_dir))
        task, pool = pools[task_name]
        tc = train_config(cfg, label, task_name, seed)
        if _done(cfg, tc):
            continue
        try:
            if row(label).needs_store:
                ensure_store(cfg, task_name, seed)
            r = run_one(tc, task, pool, seed)
            print(f"{task_name:8s} {label:12s} seed {seed}: {r['main'] * 100:.1f}", flush=True)
        except RetriktError as e:
            missing.setdefault(f"{label} on {task_name}", str(e))
            logger.error("%s on %s (seed %d) failed: %s", label, task_name, seed, e)
        except Exception:  # one broken run must not lose the rest of the grid
            missing.setdefault(f"{label} on {task_name}", traceback.format_exc(limit=3))
            logger.exception("%s on %s (seed %d) crashed", label, task_name, seed)
    return missing


def write_report(cfg: CompareConfig, missing: dict[str, str]) -> str:
    out = Path(cfg.out)
    results = [r for r in load_results(out / "runs") if r["task"] in cfg.tasks and r["method"] in cfg.methods
               and r["seed"] in cfg.seeds]
    atomic_write_text(out / "results.jsonl", "".join(json.dumps({k: v for k, v in r.items() if k != "predictions"},
                                                                sort_keys=True, default=str) + "\n"
                                                     for r in results))
    rows = summarise(results)
    reference = summarise(majority_rows(cfg)) if rows else []
    table = markdown_table(rows + reference, cfg.tasks)
    if missing:
        table += "\n\nMissing:\n" + "\n".join(f"- {m}: {why.strip().splitlines()[-1]}" for m, why in missing.items())
    absent = not_run(cfg, results, skip=missing)
    if absent:
        table += "\n\nNot run (no results in the runs folder):\n" + "\n".join(f"- {a}" for a in absent)
    meta = run_metadata(cfg, seeds=cfg.seeds)
    paired = write_paired(cfg, results, meta)
    atomic_write_text(out / "table.md", f"# retrikt compare ({cfg.preset})\n\n{table}\n\n"
                      f"Main metric per task, mean ± std over seeds {cfg.seeds}, {cfg.shots}-shot.\n"
                      + (f"\n## Paired comparisons\n\n{paired}\n\n" if paired else "")
                      + f"Commit `{meta['git_commit']}`. Regenerate: `{regenerate_command(cfg)}`\n")
    if paired:
        table += "\n\nPaired comparisons:\n\n" + paired
    if rows:
        from retrikt.eval.plots import plot_compare
        plot_compare(rows, cfg.tasks, out)
    return table


def write_paired(cfg: CompareConfig, results: list[dict], meta: dict) -> str:
    """The paired comparisons of ``cfg.paired`` as Markdown, their records in paired.json ("" and no file where no
    pair has runs of both rows)."""
    pairs = [p for p in parse_pairs(cfg.paired) if p[0] in cfg.methods and p[1] in cfg.methods]
    records = paired_records(results, pairs, cfg.tasks)
    if not records:
        (Path(cfg.out) / "paired.json").unlink(missing_ok=True)  # a stale file would read as this report's
        return ""
    atomic_write_text(Path(cfg.out) / "paired.json", json.dumps(meta | {"comparisons": records}, indent=1,
                                                                default=str) + "\n")
    return paired_table(records)


def majority_rows(cfg: CompareConfig) -> list[dict]:
    """The majority-class record of every task that has fixed labels: the floor each row is read against."""
    from retrikt.eval.baselines import majority_record
    return [r for t in cfg.tasks if (r := majority_record(t, cfg.data_dir, cfg.eval_limit)) is not None]


def not_run(cfg: CompareConfig, results: list[dict], skip: dict[str, str]) -> list[str]:
    """Every asked-for (row, task) with seeds that have no results, so a partial grid never reads as complete."""
    have = {(r["method"], r["task"], r["seed"]) for r in results}
    lines = []
    for label in cfg.methods:
        for task in cfg.tasks:
            if label in skip or f"{label} on {task}" in skip:
                continue  # already listed, with its reason
            seeds = [s for s in seeds_of(cfg, label) if (label, task, s) not in have]
            if seeds:
                lines.append(f"{label} on {task}: seeds {' '.join(map(str, seeds))}")
    return lines


def regenerate_command(cfg: CompareConfig) -> str:
    """The command line that reproduces ``cfg``: the preset plus every option that differs from it."""
    base = from_dict(CompareConfig, {**load_preset(CompareConfig, PRESETS, cfg.preset), "preset": cfg.preset})
    parts = ["python -m retrikt.compare", f"--preset {cfg.preset}"]
    for f in dataclasses.fields(CompareConfig):
        value = getattr(cfg, f.name)
        if f.name not in ("preset", "report_only") and value != getattr(base, f.name):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"--{f.name.replace('_', '-')} {shown}")
    return " ".join(parts)


def parse_args(argv: list[str]) -> CompareConfig:
    """defaults < the preset file (--preset, or ``preset:`` in the --config YAML) < the --config YAML < flags."""
    if "--smoke" in argv:  # --smoke is the smoke preset
        argv = [a for a in argv if a != "--smoke"] + ["--preset", "smoke"]
    return parse_config(CompareConfig, argv, description=__doc__, presets=PRESETS)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        parse_pairs(cfg.paired)  # a malformed pair fails before the grid runs, not after
        missing = {} if cfg.report_only else run_grid(cfg)
        table = write_report(cfg, missing)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + table + f"\n\nwritten to {Path(cfg.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
