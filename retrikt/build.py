"""python -m retrikt.build: extract a task's knowledge from a teacher LLM into a FAISS knowledge store.

    python -m retrikt.build --task cb --teacher qwen-0.5b --per-label 200 --out stores/cb-qwen0.5b
    python -m retrikt.build --config stores/cb.yaml
    python -m retrikt.build --smoke --task cb

Re-running an interrupted build with the same command continues from its last finished batch.
"""
from __future__ import annotations

import logging
import sys

from retrikt.config import parse_config
from retrikt.io import RetriktError
from retrikt.store.build import SMOKE, BuildConfig, build_store


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(BuildConfig, argv, description=__doc__, smoke=SMOKE)
        if "--smoke" in (argv if argv is not None else sys.argv[1:]) and not cfg.out:
            cfg.out = f"stores/smoke-{cfg.task}"
        path = build_store(cfg)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from retrikt.io import read_manifest
    m = read_manifest(path, verify=False)
    s = m.get("stats", {})
    print(f"store {path}: {m['counts']['entries'] if 'counts' in m else '?'} entries; "
          f"parse rate {s.get('parse_rate', 0):.2f}, keep rate {s.get('keep_rate', 0):.2f}, "
          f"teacher agreement {s.get('agreement', 0):.2f}, {s.get('tokens_per_s', 0):.1f} generated tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
