import numpy as np
import pytest

from retrikt.io import IntegrityError, RetriktError
from retrikt.store.index import (build_index, choose_kind, default_nlist, exact_search, index_params, load_index,
                                 recall_at_k, save_index, set_search_params, to_gpu, tune_search)


def clustered(n, dim, clusters=64, noise=0.6, seed=0):
    """Unit vectors around random cluster centres: neighbours are meaningful, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = clustered(20_500, 32)
    return x[:20_000], x[20_000:]  # keys, held-out queries from the same distribution


def test_exact_search_matches_brute_force_sort_across_chunks():
    rng = np.random.default_rng(1)
    keys, q = rng.standard_normal((1000, 8)), rng.standard_normal((7, 8))
    for metric, score in (("ip", q @ keys.T), ("l2", ((q[:, None] - keys[None]) ** 2).sum(-1))):
        scores, ids = exact_search(q, keys, 5, metric, chunk=97)
        want = np.argsort(-score if metric == "ip" else score, axis=1)[:, :5]
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(scores, np.take_along_axis(score, want, 1), rtol=1e-4, atol=1e-4)
    scores, ids = exact_search(q, keys[:3], 10)  # k larger than the store: capped
    assert ids.shape == (7, 3) and sorted(ids[0]) == [0, 1, 2]


def test_flat_index_equals_exact_search(data):
    keys, q = data
    for metric in ("ip", "l2"):
        index = build_index(keys, "flat", metric)
        d, i = index.search(q, 10)
        s_ref, i_ref = exact_search(q, keys, 10, metric)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_allclose(d, s_ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall_on_held_out_queries(data, kind):
    keys, q = data
    index = build_index(keys, kind)
    truth = exact_search(q, keys, 10)[1]
    found = index.search(q, 10)[1]
    assert recall_at_k(found, truth, 10) >= 0.95
    params = index_params(index)
    assert params["kind"] == kind and params["ntotal"] == len(keys)
    if kind == "ivf":
        assert params["nlist"] == default_nlist(len(keys)) == 20_000 // 39  # ~4*sqrt(n), >= 39 points per list
        assert 1 <= params["nprobe"] < params["nlist"]  # tuned, and cheaper than a full scan
    else:
        assert params["m"] == 32 and params["ef_search"] >= 16


def test_tuning_reaches_target_and_sets_the_index(data):
    keys, q = data
    index = build_index(keys, "ivf", tune=False)
    assert index_params(index)["nprobe"] == 1
    r1 = recall_at_k(index.search(q, 10)[1], exact_search(q, keys, 10)[1], 10)
    report = tune_search(index, keys, target_recall=0.9, margin=0.0)
    assert report["param"] == "nprobe" and report["recall"] >= 0.9 > r1
    assert index_params(index)["nprobe"] == report["value"] > 1
    loose = tune_search(index, keys, target_recall=0.3, margin=0.0)
    assert loose["value"] < report["value"]


def test_explicit_search_params_and_refusals(data):
    keys, _ = data
    index = build_index(keys[:5000], "hnsw", ef_search=77)
    assert index_params(index)["ef_search"] == 77
    with pytest.raises(RetriktError, match="nprobe does not apply to a hnsw"):
        set_search_params(index, nprobe=4)
    with pytest.raises(RetriktError, match="unknown index kind 'annoy'"):
        build_index(keys, "annoy")
    with pytest.raises(RetriktError, match="NaN"):
        build_index(np.full((4, 3), np.nan, np.float32))


def test_auto_kind_and_ivfpq(data):
    keys, q = data
    assert choose_kind(49_999) == "flat" and choose_kind(50_000) == "ivf"
    assert index_params(build_index(keys, "auto"))["kind"] == "flat"
    assert index_params(build_index(keys, "auto", flat_max=1000))["kind"] == "ivf"
    assert default_nlist(1_000_000) == 4000 and default_nlist(100) == 2
    small = keys[:5000]
    pq = build_index(small, "ivfpq", pq_m=8)
    p = index_params(pq)
    assert p["kind"] == "ivfpq" and p["pq_m"] == 8 and p["pq_nbits"] == 8
    assert recall_at_k(pq.search(q, 10)[1], exact_search(q, small, 10)[1], 10) > 0.3  # lossy, but finds neighbours


def test_save_load_round_trip_and_truncation(tmp_path, data):
    keys, q = data
    index = build_index(keys, "ivf", nprobe=7)
    path = save_index(index, tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind
    loaded = load_index(path)
    assert index_params(loaded) == index_params(index)  # nprobe travels with the file
    np.testing.assert_array_equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IntegrityError, match="index.faiss"):
        load_index(path)
    with pytest.raises(IntegrityError, match="missing"):
        load_index(tmp_path / "nope.faiss")


def test_to_gpu_is_a_no_op_without_gpu(data):
    import faiss
    index = build_index(data[0][:100], "flat")
    moved = to_gpu(index)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        assert type(moved).__name__.startswith("Gpu")
        np.testing.assert_array_equal(moved.search(data[1], 5)[1], index.search(data[1], 5)[1])
    else:
        assert moved is index
