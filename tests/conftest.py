import os

# Small torch ops slow down badly when the other core is busy; pin threads before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# adapted teachers trained by tests go to a throw-away folder, never the user's cache
if "RETRIKT_TEACHER_CACHE" not in os.environ:
    import tempfile
    os.environ["RETRIKT_TEACHER_CACHE"] = tempfile.mkdtemp(prefix="retrikt-test-teachers-")

import torch  # noqa: E402

torch.set_num_threads(1)
