"""python -m retrikt.build: extract a task's knowledge from a teacher LLM into a FAISS knowledge store.

    python -m retrikt.build --task cb --teacher qwen-0.5b --per-label 200 --out stores/cb-qwen0.5b
    python -m retrikt.build --config stores/cb.yaml
    python -m retrikt.build --smoke --task cb
    python -m retrikt.build --config stores/sst2.yaml --seed 3 --min-entries 1000   # grow until 1,000 are kept
    python -m retrikt.build --from-store stores/sst2-a0-s1 --min-agreement 0.7 --out stores/sst2-a07-s1
    accelerate launch --multi_gpu --num_processes 4 -m retrikt.build --task cb --per-label 5000   # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m retrikt.build --smoke --task cb   # no GPU: 2 gloo ranks

Re-running an interrupted build with the same command continues from its last finished batch (each rank from its
own shard). Under accelerate launch, rank 0 tunes the soft prompt while the others wait, every rank generates a
round-robin share of the batches, and rank 0 merges the shards into the store. --min-entries N keeps generating
after the planned samples, in rounds sized by the keep rate so far, until the store keeps N entries (or the samples
reach --max-samples); re-running a finished build with a larger N grows it. --from-store re-applies the
agreement filter to a finished store at a stricter threshold, without generating (retrikt.pipeline.refilter).
"""
from __future__ import annotations

import sys

from retrikt.config import parse_config
from retrikt.dist import configure_logging
from retrikt.io import RetriktError
from retrikt.pipeline.config import SMOKE, BuildConfig
from retrikt.pipeline.run import build_store


def main(argv: list[str] | None = None) -> int:
    rank = configure_logging()
    try:
        cfg = parse_config(BuildConfig, argv, description=__doc__, smoke=SMOKE)
        if "--smoke" in (argv if argv is not None else sys.argv[1:]) and not cfg.out:
            cfg.out = f"stores/smoke-{cfg.task}"
        if cfg.from_store:
            if rank:
                return 0  # one process writes the re-filtered store
            if not cfg.out:
                raise RetriktError("--from-store needs --out (the re-filtered store's folder)")
            from retrikt.pipeline.refilter import refilter_store
            path = refilter_store(cfg.from_store, cfg.min_agreement, cfg.out)
        else:
            path = build_store(cfg)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank:
        return 0  # rank 0 reports the store
    from retrikt.io import read_manifest
    m = read_manifest(path, verify=False)
    s = m.get("stats", {})
    print(f"store {path}: {m['counts']['entries'] if 'counts' in m else '?'} entries; "
          f"parse rate {s.get('parse_rate', 0):.2f}, keep rate {s.get('keep_rate', 0):.2f}, "
          f"teacher agreement {s.get('agreement', 0):.2f}, {s.get('tokens_per_s', 0):.1f} generated tokens/s; "
          f"filters caught {s.get('unfinished', 0)} unfinished, {s.get('label_words', 0)} naming their label, "
          f"{s.get('disagree', 0)} disagreeing with the labeller"
          + (f"; {s['perturbed']} samples made by corruption (--perturb-label)" if s.get("perturbed") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
