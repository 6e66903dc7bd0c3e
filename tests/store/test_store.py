import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from retrikt.io import IntegrityError, RetriktError, sha256_file, write_manifest
from retrikt.store import SCHEMA_VERSION, Store, StoreWriter
from retrikt.store.index import exact_search

DIM = 16
META = {"task": "cb", "teacher": "tiny-causal", "embedder": {"name": "tiny-emb", "dim": DIM, "normalize": True},
        "config": {"samples_per_label": 6}}
ROOT = Path(__file__).resolve().parents[2]


def make_batch(batch_id, n=6, tag=""):
    """Deterministic entries + unit embeddings for one batch (a subprocess rebuilds the same ones)."""
    rng = np.random.default_rng(batch_id)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    entries = [{"fields": {"premise": f"b{batch_id} e{i}{tag}", "hypothesis": "h"}, "label": i % 3,
                "soft_label": [float(p) for p in rng.dirichlet(np.ones(3))], "meta": {"batch": batch_id, "i": i}}
               for i in range(n)]
    return entries, x / np.linalg.norm(x, axis=1, keepdims=True)


def write_store(folder, batches=(2, 0, 3, 1), **finalize_kw):
    with StoreWriter(folder, META) as w:
        for b in batches:
            assert w.add_batch(b, *make_batch(b))
        return w.finalize(**finalize_kw)


@pytest.fixture
def store_dir(tmp_path):
    return write_store(tmp_path / "store")


def expected(batches):
    entries, embs = zip(*(make_batch(b) for b in sorted(batches)))
    return [e for es in entries for e in es], np.concatenate(embs)


def test_round_trip(store_dir):
    store = Store.open(store_dir, expected_embedder="tiny-emb")
    want_entries, want_emb = expected(range(4))
    assert len(store) == 24 and store.dim == DIM and store.task == "cb"
    assert store.entries(range(24)) == want_entries  # batch order, not write order
    np.testing.assert_array_equal(store.embeddings, want_emb)
    m = store.manifest
    assert m["schema_version"] == SCHEMA_VERSION == 1 and m["teacher"] == "tiny-causal"
    assert m["embedder"] == {"name": "tiny-emb", "dim": DIM, "normalize": True} and m["config"] == META["config"]
    assert m["counts"] == {"entries": 24, "batches": 4, "per_label": {"0": 8, "1": 8, "2": 8}}
    assert m["index"]["kind"] == "flat" and m["index"]["params"]["ntotal"] == 24
    assert m["versions"]["torch"] and m["versions"]["transformers"]  # a rebuild under other libraries differs
    assert set(m["files"]) == {"entries.parquet", "embeddings.safetensors", "index.faiss"}
    assert m["files"]["index.faiss"]["sha256"] == sha256_file(store_dir / "index.faiss")
    assert store.checksum == sha256_file(store_dir / "manifest.json")
    assert not (store_dir / ".lock").exists() and not list(store_dir.rglob("*.tmp"))

    scores, ids = store.search(want_emb[[5, 17]], 3)
    s_ref, i_ref = exact_search(want_emb[[5, 17]], want_emb, 3)
    np.testing.assert_array_equal(ids, i_ref)
    np.testing.assert_allclose(scores, s_ref, atol=1e-5)
    assert ids[:, 0].tolist() == [5, 17]
    hits = store.search_entries(want_emb[[5]], 2)
    assert len(hits) == 1 and len(hits[0]) == 2
    assert hits[0][0][1] == want_entries[5] and hits[0][0][0] == pytest.approx(1.0, abs=1e-5)
    assert store.search(want_emb, 100)[1].shape == (24, 24)  # k capped at the store size


def test_query_and_id_refusals(store_dir):
    store = Store.open(store_dir)
    with pytest.raises(RetriktError, match="dim 384.*holds dim 16"):
        store.search(np.ones((2, 384), np.float32), 3)
    with pytest.raises(RetriktError, match="ids 0..23"):
        store.entries([3, 24])
    with pytest.raises(RetriktError, match="k must be >= 1"):
        store.search(store.embeddings[:1], 0)


CRASH = """
import os, sys
from tests.store.test_store import META, make_batch
from retrikt.store import StoreWriter
w = StoreWriter(sys.argv[1], META)
for b in (0, 1, 2):
    w.add_batch(b, *make_batch(b))
open(os.path.join(sys.argv[1], "parts", ".part-000003.parquet.x.tmp"), "wb").write(b"half a part")
os._exit(3)  # killed: no close(), the lock file stays with this (now dead) pid
"""


def test_resume_after_crash_no_duplicates_nothing_lost(tmp_path):
    folder = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(folder)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()[-2000:]
    assert (folder / ".lock").read_text() == str(proc.pid)  # left behind by the dead writer
    with StoreWriter(folder, META) as w:  # takes over the dead process's lock
        assert w.done_batches() == {0, 1, 2}
        np.testing.assert_array_equal(w.accepted_embeddings(), expected(range(3))[1])
        assert w.accepted_entries() == expected(range(3))[0]
        assert not list((folder / "parts").glob("*.tmp"))
        assert w.add_batch(1, *make_batch(1, tag=" regenerated")) is False  # overlapping batch ids are skipped
        written = [w.add_batch(b, *make_batch(b)) for b in (2, 3, 4)]
        assert written == [False, True, True]
        assert len(w.accepted_embeddings()) == 30  # the cache follows add_batch
        w.finalize()
    store = Store.open(folder)
    want_entries, want_emb = expected(range(5))
    assert store.entries(range(len(store))) == want_entries
    np.testing.assert_array_equal(store.embeddings, want_emb)
    premises = [e["fields"]["premise"] for e in want_entries]
    assert len(set(premises)) == len(premises) == 30


def test_same_batch_twice_and_overwrite(tmp_path):
    with StoreWriter(tmp_path, META) as w:
        assert w.add_batch(7, *make_batch(7))
        assert not w.add_batch(7, *make_batch(7))
        assert w.add_batch(8, [], np.zeros((0, DIM), np.float32))  # all filtered out: still done
        assert w.done_batches() == {7, 8} and len(w.accepted_entries()) == 6
        assert w.add_batch(7, *make_batch(7, n=2, tag=" v2"), overwrite=True)
        assert [e["fields"]["premise"] for e in w.accepted_entries()] == ["b7 e0 v2", "b7 e1 v2"]
        w.finalize()
    assert len(Store.open(tmp_path)) == 2


def test_lock_refuses_a_second_live_writer(tmp_path):
    (tmp_path / ".lock").write_text(str(os.getppid()))  # a live process other than us holds the folder
    with pytest.raises(RetriktError, match=f"in use by process {os.getppid()}"):
        StoreWriter(tmp_path, META)
    (tmp_path / ".lock").unlink()
    w = StoreWriter(tmp_path, META)
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    w.close()
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(RetriktError, match="closed"):
        w.add_batch(0, *make_batch(0))


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-100])


def _flip_byte(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit_entries(p):
    """A valid parquet with one label changed: only the sha256 check can notice."""
    table = pq.read_table(p)
    labels = table.column("label").to_pylist()
    labels[0] = 2
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())), p)


def _edit_manifest(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, name", [
    (lambda d: _truncate(d / "index.faiss"), "index.faiss"),
    (lambda d: _flip_byte(d / "entries.parquet"), "entries.parquet"),
    (lambda d: _edit_entries(d / "entries.parquet"), "entries.parquet: .*edited"),
    (lambda d: (d / "embeddings.safetensors").unlink(), "embeddings.safetensors"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
])
def test_corrupted_files_are_refused(store_dir, damage, name):
    damage(store_dir)
    with pytest.raises(IntegrityError, match=name):
        Store.open(store_dir)


def test_unverified_open_still_catches_a_truncated_index(store_dir):
    _truncate(store_dir / "index.faiss")
    with pytest.raises(IntegrityError, match="index.faiss"):
        Store.open(store_dir, verify=False)


def test_row_counts_must_agree(store_dir):
    save_file({"embeddings": expected(range(3))[1]}, str(store_dir / "embeddings.safetensors"))
    m = json.loads((store_dir / "manifest.json").read_text())
    write_manifest(store_dir, {k: v for k, v in m.items() if k != "files"}, list(m["files"]))  # checksums agree
    with pytest.raises(IntegrityError, match="row counts disagree.*embeddings.safetensors 18"):
        Store.open(store_dir)


def test_embedder_and_schema_refusals(store_dir):
    with pytest.raises(RetriktError, match=r"manifest.json.*'tiny-emb' \(dim 16\).*'minilm-l6' \(dim 384\)"):
        Store.open(store_dir, expected_embedder={"name": "minilm-l6", "dim": 384})
    with pytest.raises(RetriktError, match="dim 16.*'tiny-emb' \\(dim 32\\)"):
        Store.open(store_dir, expected_embedder={"name": "tiny-emb", "dim": 32})
    _edit_manifest(store_dir, embedder={"name": "mpnet-base", "dim": DIM, "normalize": True})
    with pytest.raises(RetriktError, match="manifest.json.*'mpnet-base'.*'tiny-emb'"):
        Store.open(store_dir, expected_embedder="tiny-emb")
    _edit_manifest(store_dir, schema_version=2)
    with pytest.raises(RetriktError, match="manifest.json: schema_version 2 is newer"):
        Store.open(store_dir)


def test_writer_validation(tmp_path):
    entries, x = make_batch(0)
    with StoreWriter(tmp_path / "a", META) as w:
        for args, msg in [((entries, x[:, :8]), "dimension 8"), ((entries, x * 2), "L2-normalised"),
                          ((entries[:3], x), "3 entries but 6"),
                          (([dict(entries[0], extra=1)], x[:1]), "entry 0: unknown key.*extra"),
                          (([dict(entries[0], label="yes")], x[:1]), "'label' must be"),
                          (([dict(entries[0], fields={"premise": 3})], x[:1]), "'fields' must be")]:
            with pytest.raises(RetriktError, match=msg):
                w.add_batch(0, *args)
        assert w.done_batches() == set()
        with pytest.raises(RetriktError, match="nothing to finalize"):
            w.finalize()
    with pytest.raises(RetriktError, match="integer 'dim'"):
        StoreWriter(tmp_path / "b", dict(META, embedder="tiny-emb"))
    other = dict(META, embedder={"name": "minilm-l6", "dim": DIM})
    with pytest.raises(RetriktError, match="writer.json.*embedder"):
        StoreWriter(tmp_path / "a", other)
    assert not (tmp_path / "a" / ".lock").exists()  # a refused writer releases the lock


def test_regression_labels_round_trip(tmp_path):
    entries, x = make_batch(0, n=4)
    for i, e in enumerate(entries):
        e.update(label=[0.5, 3, 4.25, None][i], soft_label=[])
    with StoreWriter(tmp_path, dict(META, task="stsb")) as w:
        w.add_batch(0, entries[:2], x[:2])
        w.add_batch(1, entries[2:], x[2:])
        w.finalize()
    store = Store.open(tmp_path)
    assert [e["label"] for e in store.entries(range(4))] == [0.5, 3.0, 4.25, None]
    assert store.entries([1])[0]["soft_label"] == []
    assert store.manifest["counts"]["per_label"] is None and store.manifest["counts"]["label_range"] == [0.5, 4.25]


def test_extend_a_finished_store_and_extra_meta(store_dir):
    before = Store.open(store_dir).checksum
    with StoreWriter(store_dir, META) as w:
        assert w.done_batches() == {0, 1, 2, 3}
        w.add_batch(4, *make_batch(4))
        w.finalize(extra_meta={"stats": {"keep_rate": 0.5}})
    store = Store.open(store_dir)
    assert len(store) == 30 and store.checksum != before and store.manifest["stats"] == {"keep_rate": 0.5}


def test_ivf_store_records_and_applies_tuned_nprobe(tmp_path):
    folder = write_store(tmp_path / "ivf", batches=range(200), index_kind="ivf")
    store = Store.open(folder)
    params = store.manifest["index"]["params"]
    assert params["kind"] == "ivf" and params["nlist"] == 30 and params["tuning"]["value"] == params["nprobe"]
    assert params["tuning"]["recall"] >= 0.95 and store.index.nprobe == params["nprobe"]
    ids = store.search(store.embeddings[:200], 1)[1][:, 0]
    assert (ids == np.arange(200)).mean() >= 0.95


def test_resume_refuses_parts_of_another_draw(tmp_path):
    folder = tmp_path / "store"
    with StoreWriter(folder, {**META, "seed": 1}) as w:  # killed before finalize: parts of draw 0 stay
        w.add_batch(0, *make_batch(0))
    with pytest.raises(RetriktError, match="draw 0 of its seed's samples, not draw 2"):
        StoreWriter(folder, {**META, "seed": 1, "draw": 2})
    with StoreWriter(folder, {**META, "seed": 1, "draw": 0}) as w:  # a state written before --draw reads as 0
        assert w.done_batches() == {0}
