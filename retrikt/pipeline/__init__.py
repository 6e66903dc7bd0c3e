"""The store build, as one orchestrator over the teacher, RL and storage layers.

``config`` (BuildConfig and the reuse keys; imports no stage) < ``plan`` (samples per label, batches) < ``prompt``
(tune, RL-refine via ``refine``, share the soft prompt) < ``filters`` / ``oracle`` < ``run`` (build_store: generate or
draw -> filter -> label -> write). :mod:`retrikt.store` keeps storage only; :mod:`retrikt.rl` the RL algorithms.
"""
