"""python -m retrikt.keys: add task-aware keys to a finished store (for --method retrikt --retrieval-keys teacher).

    python -m retrikt.keys --store stores/sst2-qwen-0.5b-s1 --data-dir ../shared/data
    python -m retrikt.keys --store stores/sst2-qwen-0.5b-s1 --embedder mpnet-base --out stores/sst2-mpnet-s1

Runs the store's own labeller (as its manifest records it; an adapted teacher comes from the adapter cache) over the
store's entries and its seed's k-shot examples, and writes teacher_keys.safetensors / teacher_keys.json beside them.
With --embedder and --out: a copy of the store keyed by another sentence embedder (retrikt.pipeline.rekey).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from retrikt.config import arg, parse_config
from retrikt.io import RetriktError
from retrikt.logs import setup_logging


@dataclass
class KeysConfig:
    store: str = arg("", help="finished store folder to add teacher keys to")
    data_dir: str | None = arg(None, help="GLUE / SuperGLUE data folder (the k-shot examples are read from it)")
    device: str = arg("auto", help="auto | cpu | cuda")
    batch_size: int = arg(8, help="examples per forward pass")
    embedder: str = arg("", help="instead of teacher keys: copy the store to --out keyed by this sentence embedder "
                                 "(a short name, e.g. mpnet-base)")
    out: str = arg("", help="with --embedder: the new store's folder")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    try:
        cfg = parse_config(KeysConfig, argv, description=__doc__)
        if not cfg.store:
            raise RetriktError("--store FOLDER is required")
        from retrikt.dist import rank_device
        if bool(cfg.embedder) != bool(cfg.out):
            raise RetriktError("--embedder and --out go together (a re-keyed copy of the store)")
        if cfg.embedder:
            from retrikt.pipeline.rekey import rekey_store
            path = rekey_store(cfg.store, cfg.embedder, cfg.out, rank_device(cfg.device))
        else:
            from retrikt.pipeline.keys import add_teacher_keys
            path = add_teacher_keys(cfg.store, cfg.data_dir, rank_device(cfg.device), cfg.batch_size)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'re-keyed store' if cfg.embedder else 'teacher keys'} written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
