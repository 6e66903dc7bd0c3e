"""Fuzzing the inputs users hand us: task files, YAML recipes, stores on disk.

Whatever the bytes, the outcome is either a normal result or a RetriktError (IntegrityError included) whose message
names the file: never a traceback from deep inside a library, never a partial artefact.
"""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrikt.config import from_dict, load_yaml
from retrikt.io import RetriktError
from retrikt.store import Store, StoreWriter
from retrikt.pipeline.config import BuildConfig
from retrikt.tasks import get_task, load_split

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD_CB = json.dumps({"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0})
GOOD_RTE = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"

lines = st.one_of(st.just(GOOD_CB), st.text(max_size=80), st.just("{}"), st.just('{"premise": 1}'),
                  st.just(json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"})),
                  st.just("x" * 5000))


def _load(folder: Path, task: str, rel: str, data: bytes):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        return load_split(get_task(task), "train", data_dir=folder)
    except RetriktError as e:
        assert rel.split("/")[-1] in str(e) or task in str(e), f"error does not name the file: {e}"
        return None


@FAST
@given(st.lists(lines, max_size=6), st.booleans())
def test_jsonl_loader_accepts_or_names_the_file(rows, trailing_newline):
    with tempfile.TemporaryDirectory() as d:
        text = "\n".join(rows) + ("\n" if trailing_newline else "")
        out = _load(Path(d), "cb", "superglue/cb/train.jsonl", text.encode("utf-8", "surrogatepass"))
        assert out is None or all(e["label"] in (0, 1, 2) for e in out)


@FAST
@given(st.binary(max_size=300))
def test_jsonl_loader_on_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        _load(Path(d), "cb", "superglue/cb/train.jsonl", data)


@FAST
@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_characters="\t\n\r"), max_size=12),
                         min_size=1, max_size=6), max_size=5), st.binary(max_size=40))
def test_tsv_loader_on_wrong_columns_and_bytes(rows, junk):
    with tempfile.TemporaryDirectory() as d:
        body = "\n".join("\t".join(r) for r in rows).encode("utf-8", "surrogatepass")
        out = _load(Path(d), "rte", "glue/rte/train.tsv", GOOD_RTE.encode() + body + junk)
        assert out is None or all(e["label"] in (0, 1) for e in out)


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.dictionaries(st.sampled_from(["task", "per_label", "temperature", "rl", "seeds", "bogus"]),
                                 st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                                           st.lists(st.integers(), max_size=3)), max_size=4).map(json.dumps)))
def test_yaml_recipe_accepts_or_names_the_file(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            from_dict(BuildConfig, load_yaml(path), str(path))
        except RetriktError as e:
            assert "recipe.yaml" in str(e)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    entries = [{"fields": {"sentence": f"s{i}"}, "label": i % 2, "soft_label": [0.5, 0.5], "meta": {}}
               for i in range(20)]
    with StoreWriter(folder, {"task": "sst2", "teacher": "t", "embedder": {"name": "e", "dim": 8,
                                                                           "normalize": True}}) as w:
        w.add_batch(0, entries, emb)
        w.finalize(index_kind="flat")
    return folder


def _same_json(data: bytes, path: Path) -> bool:
    try:
        return json.loads(data) == json.loads(path.read_bytes())
    except ValueError:
        return False


@FAST
@given(st.sampled_from(["index.faiss", "entries.parquet", "embeddings.safetensors", "manifest.json"]),
       st.floats(0, 1), st.binary(min_size=1, max_size=16), st.booleans())
def test_corrupted_store_is_refused_naming_the_file(store_dir, name, where, patch, truncate):
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "store"
        shutil.copytree(store_dir, copy)
        path = copy / name
        data = bytearray(path.read_bytes())
        pos = int(where * (len(data) - 1))
        if truncate:
            data = data[:pos]
        else:
            data[pos:pos + len(patch)] = patch
        if bytes(data) == path.read_bytes() or (name == "manifest.json" and _same_json(bytes(data), path)):
            return  # nothing changed, or only whitespace around an identical manifest: rightly accepted
        path.write_bytes(bytes(data))
        with pytest.raises(RetriktError) as e:
            Store.open(copy)
        assert name in str(e.value) or "manifest" in str(e.value)
