"""Flat config dataclasses -> argparse, with ``--config file.yaml`` and CLI overrides.

Precedence: dataclass defaults < preset file < YAML file < command-line flags. Every field carries a help string
(``field(default=..., metadata={"help": "..."})``), shown by ``--help``. A config class with a ``preset`` field can
name a preset: ``<presets folder>/<name>.yaml``, read like any YAML file and laid under the user's.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from retrikt.io import RetriktError, git_commit

T = TypeVar("T")


def arg(default: Any = None, help: str = "", **kw: Any) -> Any:
    """A dataclass field with a help string; lists get a default factory."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) of an annotation such as ``int``, ``list[int]`` or ``str | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return (typing.get_args(tp) or (str,))[0], True
    return tp, False


def _str2bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, is_list = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              # argparse %-formats help text: a literal "69%" would crash --help
                              "help": f.metadata.get("help", "").replace("%", "%%")}
        if tp is bool:
            kw.update(nargs="?", const=True, type=_str2bool)
        else:
            kw["type"] = tp if tp in (int, float) else str
            if is_list:
                kw["nargs"] = "+"
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kw)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RetriktError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RetriktError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise RetriktError(f"{path}: not UTF-8 text ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RetriktError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build ``cls`` from a dict, refusing unknown keys and values of the wrong type."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    odd = [k for k in data if not isinstance(k, str)]  # YAML reads `~:` or `1:` as a null / int key
    if odd:
        raise RetriktError(f"{source}: option names must be text, got {', '.join(map(repr, odd))}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RetriktError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    clean = {}
    for k, v in data.items():
        tp, is_list = _base_type(hints[k])
        clean[k] = _coerce(v, tp, is_list, f"{source}: option {k}")
    return cls(**clean)


def _coerce(v: Any, tp: Any, is_list: bool, where: str) -> Any:
    if v is None:
        return None
    if is_list:
        if not isinstance(v, (list, tuple)):
            v = [v]
        return [_coerce(x, tp, False, where) for x in v]
    try:
        if tp is bool:
            return v if isinstance(v, bool) else _str2bool(str(v))
        if tp in (int, float):
            if isinstance(v, bool):
                raise ValueError
            out = tp(v)
            if tp is int and float(v) != out:
                raise ValueError
            return out
        if tp is str:
            return str(v)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise RetriktError(f"{where}: expected {tp.__name__}, got {v!r}") from None
    return v


def preset_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def load_preset(cls: type, folder: Path, name: str) -> dict:
    """The options of preset ``name`` (``folder/name.yaml``), checked against ``cls``. A preset file may say
    ``preset: <its own name>``, so that a copy passed with ``--config`` is the same recipe."""
    path = Path(folder) / f"{name}.yaml"
    if not path.exists():
        raise RetriktError(f"unknown preset {name!r}; known: {', '.join(preset_names(folder))} (in {folder})")
    data = load_yaml(path)
    if data.get("preset", name) != name:
        raise RetriktError(f"{path}: says preset {data['preset']!r}, but it is the {name!r} preset")
    from_dict(cls, data, str(path))  # unknown options and wrong types are reported against the preset file
    return data


def parse_config(cls: type[T], argv: list[str] | None = None, description: str = "",
                 smoke: dict | None = None, parser: argparse.ArgumentParser | None = None,
                 presets: Path | None = None) -> T:
    """Parse ``argv`` into ``cls``. ``smoke`` holds overrides applied by ``--smoke`` (before explicit flags);
    ``presets`` is the folder of preset files when ``cls`` has a ``preset`` field."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file of option: value pairs; command-line flags override it")
    if smoke is not None:
        parser.add_argument("--smoke", action="store_true", help="shrink the run to seconds (tiny models, tiny data)")
    add_dataclass_args(parser, cls)
    ns = vars(parser.parse_args(argv))
    config_path = ns.pop("config", None)
    data: dict = load_yaml(config_path) if config_path else {}
    if ns.pop("smoke", False) and smoke:
        data.update(smoke)
    data.update(ns)
    source = str(config_path) if config_path else "command line"
    if presets is not None:
        name = data.get("preset", cls.__dataclass_fields__["preset"].default)
        data = {**load_preset(cls, presets, str(name)), **data}
    cfg = from_dict(cls, data, source)
    git_commit()  # a run starts here: fix the commit its results will record
    return cfg
