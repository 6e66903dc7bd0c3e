"""GLUE + SuperGLUE tasks: registry, loaders of the original file formats, k-shot sampling, metrics.

>>> task = get_task("cb")
>>> train = load_split(task, "train")                 # list of dicts: text fields, "label", "idx"
>>> shots = sample_few_shot(train, k_per_label=8, seed=0)
>>> compute_metrics(task, [ex["label"] for ex in train], predictions)   # {"accuracy", "f1_macro", "main"}
"""
from retrikt.tasks.loaders import default_data_dir, find_split_file, load_split
from retrikt.tasks.metrics import compute_metrics
from retrikt.tasks.registry import Task, get_task, list_tasks
from retrikt.tasks.sampling import sample_few_shot

__all__ = ["Task", "compute_metrics", "default_data_dir", "find_split_file", "get_task", "list_tasks",
           "load_split", "sample_few_shot"]
