"""Per-task training options for compare's rows: ``<folder>/<task>.yaml`` maps a method to options of its Config.

    # train/tasks/sst2.yaml
    kd:
      store_prior: kshot
    retrikt:
      store_prior: kshot

Some options are worth different values on different tasks (re-weighting the store's labels to the k-shot prior
helps kd on SST-2 and not on CB; a heavier pull onto the labeller's keys helps retrikt on SST-2 and hurts it on CB); a
task recipe holds what was chosen for that task on held-out training data
(``benchmarks.train_dev``), so that ``retrikt.compare`` trains every task's row the way it was chosen. compare keeps
what makes rows comparable (task, seed, student, teacher, shots, store, epochs, ...): a recipe may set only options
of the method's own Config that compare does not set itself.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from retrikt.config import from_dict, load_yaml
from retrikt.io import RetriktError


def task_options(folder: str | Path | None, task: str, method, fixed: dict) -> dict:
    """The options ``<folder>/<task>.yaml`` gives ``method`` (a Method), checked against its Config ({} when the
    folder, the file or the method's section is absent). ``fixed``: the options compare sets for the row, which a
    recipe must not change (a RetriktError names the file and the option)."""
    if not folder:
        return {}
    path = Path(folder) / f"{task}.yaml"
    if not path.exists():
        return {}
    data = load_yaml(path)
    for name, section in data.items():
        if not isinstance(section, dict):
            raise RetriktError(f"{path}: expected method: {{option: value}}, got {name}: {section!r}")
    from retrikt.methods import get_method
    for name in data:
        try:
            get_method(name)
        except RetriktError as e:
            raise RetriktError(f"{path}: {e}") from None
    options = dict(data.get(method.name) or {})
    own = {f.name for f in dataclasses.fields(method.config_cls)}
    unknown = sorted(set(options) - own)
    if unknown:
        raise RetriktError(f"{path}: {method.name} has no option {', '.join(unknown)} (see python -m retrikt.train "
                           f"--method {method.name} --help)")
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise RetriktError(f"{path}: {', '.join(clash)} is set by retrikt.compare for every row (pass it to "
                           "compare instead); a task recipe holds only a method's own options")
    # the types are checked here, before any run: a typo must not surface after hours of other rows
    checked = from_dict(method.config_cls, options, str(path))
    return {k: getattr(checked, k) for k in options}
