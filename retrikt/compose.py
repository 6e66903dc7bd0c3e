"""Add, negate or analogise saved PEFT adapters (LoRA, (IA)^3) with no training; writes a PEFT adapter folder.

Examples:
  python -m retrikt.compose --op merge --adapters a b --weights 0.5 0.5 --out merged
  python -m retrikt.compose --op negate --adapters toxic --out detox
  python -m retrikt.compose --op analogy --adapters cls_src lm_tgt lm_src --lam 0.5 --out transferred
"""
from __future__ import annotations

import argparse
import sys

from retrikt.config import parse_config
from retrikt.init.arithmetic import ArithmeticConfig, compose_adapters
from retrikt.io import RetriktError
from retrikt.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m retrikt.compose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        cfg = parse_config(ArithmeticConfig, argv, parser=parser)
        out = compose_adapters(cfg)
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
