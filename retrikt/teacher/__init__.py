"""Everything the teacher LLM does: score labels (zero-shot, in-context, adapted), generate under a soft prompt.

* :mod:`retrikt.teacher.lm` — :class:`LMClassifier`, verbaliser scoring with calibration and fast batched passes;
* :mod:`retrikt.teacher.softprompt` — :class:`SoftPromptGenerator`, the soft-prompt-steered generator;
* :mod:`retrikt.teacher.adapted` — the teacher with a LoRA trained on the seed's k-shot set, cached per seed;
* :mod:`retrikt.teacher.labeller` — which model, in which mode, labels a store.
"""
