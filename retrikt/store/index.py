"""FAISS indexes for the knowledge store: build, tune for recall, move to GPU, save and load atomically.

Embeddings are L2-normalised float32, so the default metric is inner product (= cosine). Small stores use an
exact flat index; large ones an approximate index whose search breadth (``nprobe`` for IVF, ``efSearch`` for
HNSW) is tuned until recall@k against exact search reaches a target, and recorded in the store manifest.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from retrikt.io import IntegrityError, RetriktError, atomic_path

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
FLAT_MAX = 50_000  # below this an exact scan costs < ~1 ms/query at dim 384, so approximation buys nothing
_ADD_CHUNK = 65_536
_GPU_RESOURCES: dict[int, object] = {}


def choose_kind(n: int, flat_max: int = FLAT_MAX) -> str:
    """The index ``auto`` builds for ``n`` vectors: exact below ``flat_max``, IVF above.

    IVF rather than HNSW: on synthetic MiniLM-sized data (benchmarks/results/faiss_recall.md, 1 thread) IVF
    reached recall@10 0.98 at 1M vectors, 87x the flat query rate, in a 6-minute build, while HNSW (M=32,
    efConstruction=40) took 15 minutes and stayed at 0.93 recall even at efSearch 2048. IVF also moves
    to GPU, which HNSW does not.
    """
    return "flat" if n < flat_max else "ivf"


def default_nlist(n: int) -> int:
    """About 4*sqrt(n) inverted lists, but at least 39 training points per centroid (FAISS's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def _as_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on GPU
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise RetriktError(f"{name}: expected a [n, dim] matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise RetriktError(f"{name}: dimension {x.shape[1]} does not match the index dimension {dim}")
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(embeddings, kind: str = "auto", metric: str = "ip", **kwargs) -> faiss.Index:
    """Build an index over ``embeddings`` [n, dim] (float32); see :func:`build_index_report` for the options."""
    return build_index_report(embeddings, kind, metric, **kwargs)[0]


def build_index_report(embeddings, kind: str = "auto", metric: str = "ip", *, m: int = 32,
                       ef_construction: int = 40, nlist: int | None = None, pq_m: int | None = None,
                       nprobe: int | None = None, ef_search: int | None = None, tune: bool = True,
                       target_recall: float = 0.95, k: int = 10, tune_queries: int = 1000,
                       points_per_centroid: int = 64, niter: int = 10, flat_max: int = FLAT_MAX,
                       seed: int = 0) -> tuple[faiss.Index, dict | None]:
    """Build an index over ``embeddings``; return it with the tuning report (None if nothing was tuned).

    ``kind``: ``flat`` (exact), ``hnsw`` (M=``m``), ``ivf`` (``nlist`` lists, default ~4*sqrt(n)), ``ivfpq``
    (IVF with ``pq_m`` 8-bit sub-quantizers, default dim/8; for stores too big for RAM, recall is capped by
    the compression) or ``auto`` (:func:`choose_kind`). An explicit ``nprobe`` / ``ef_search`` is used as
    given; otherwise, with ``tune``, it is raised until recall@``k`` reaches ``target_recall``: the last
    ``tune_queries`` vectors (at most a tenth) are added only after tuning and serve as its queries, because
    a vector already in the index is an easy query (HNSW links it to its own neighbours) and overstates recall.
    """
    x = _as_matrix(embeddings, "embeddings")
    n, d = x.shape
    if n == 0:
        raise RetriktError("build_index: no embeddings to index")
    if not np.isfinite(x).all():
        raise RetriktError("build_index: embeddings contain NaN or infinite values")
    if kind not in KINDS:
        raise RetriktError(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
    if metric not in METRICS:
        raise RetriktError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    kind = choose_kind(n, flat_max) if kind == "auto" else kind
    mt = METRICS[metric]
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, m, mt)
        index.hnsw.efConstruction = ef_construction
    else:
        index = _ivf(x, kind, mt, nlist or default_nlist(n), pq_m, points_per_centroid, niter, seed)
    explicit = nprobe is not None or ef_search is not None
    held = min(tune_queries, n // 10) if kind != "flat" and tune and not explicit else 0
    _add(index, x[:n - held])  # ids stay row positions: the held-out tail is added last
    report = None
    if explicit:
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    elif held:
        report = tune_search(index, x[:n - held], queries=x[n - held:], target_recall=target_recall, k=k)
        report["queries"] = f"last {held} vectors, added after tuning"
    elif kind != "flat" and tune:  # too few vectors to hold any out
        report = tune_search(index, x, target_recall=target_recall, k=k, seed=seed)
    _add(index, x[n - held:])
    logger.info("built %s index over %d x %d: %s", kind, n, d, index_params(index))
    return index, report


def _ivf(x: np.ndarray, kind: str, mt: int, nlist: int, pq_m: int | None, points_per_centroid: int,
         niter: int, seed: int) -> faiss.Index:
    n, d = x.shape
    nlist = max(1, min(nlist, n))
    quantizer = faiss.IndexFlatIP(d) if mt == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
    if kind == "ivfpq":
        pq_m = pq_m or next(c for c in (d // 8, d // 4, d // 2, d, 1) if c >= 1 and d % c == 0)
        if d % pq_m:
            raise RetriktError(f"ivfpq: pq_m={pq_m} must divide the dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, mt)
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, mt)
    # k-means on a subsample: 64 points per centroid gives the same recall as FAISS's 256 at 1/4 the cost
    index.cp.max_points_per_centroid = points_per_centroid
    index.cp.niter = niter
    index.cp.seed = seed
    index.cp.spherical = mt == faiss.METRIC_INNER_PRODUCT
    logger.info("training %s with %d lists on up to %d of %d vectors", kind, nlist,
                min(n, nlist * points_per_centroid), n)
    index.train(x)
    return index


def _add(index: faiss.Index, x: np.ndarray) -> None:
    chunks = range(0, len(x), _ADD_CHUNK)
    for start in tqdm(chunks, desc="indexing", unit="chunk", disable=len(chunks) < 4, leave=False):
        index.add(x[start:start + _ADD_CHUNK])


def index_kind(index: faiss.Index) -> str:
    name = type(index).__name__.removeprefix("Gpu")
    for cls, kind in (("IndexIVFPQ", "ivfpq"), ("IndexIVFFlat", "ivf"), ("IndexHNSW", "hnsw"), ("IndexFlat", "flat")):
        if name.startswith(cls):
            return kind
    return name


def index_params(index: faiss.Index) -> dict:
    """The parameters that define ``index`` and its search breadth, JSON-able (for the store manifest)."""
    out = {"kind": index_kind(index), "metric": "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
           "dim": int(index.d), "ntotal": int(index.ntotal)}
    if out["kind"] in ("ivf", "ivfpq"):
        out.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        if out["kind"] == "ivfpq":
            out.update(pq_m=int(index.pq.M), pq_nbits=int(index.pq.nbits))
    elif out["kind"] == "hnsw":
        out.update(m=int(index.hnsw.nb_neighbors(1)), ef_search=int(index.hnsw.efSearch),
                   ef_construction=int(index.hnsw.efConstruction))
    return out


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set IVF ``nprobe`` / HNSW ``efSearch`` (on CPU or GPU indexes); refuse one the index does not have."""
    kind = index_kind(index)
    gpu = type(index).__name__.startswith("Gpu")
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name, value, kinds in (("nprobe", nprobe, ("ivf", "ivfpq")), ("efSearch", ef_search, ("hnsw",))):
        if value is None:
            continue
        if kind not in kinds:
            raise RetriktError(f"{name} does not apply to a {kind} index (only to {' / '.join(kinds)})")
        if int(value) < 1:
            raise RetriktError(f"{name} must be >= 1, got {value}")
        space.set_index_parameter(index, name, int(value))


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-``k`` ids that appear in the found top-``k`` ids."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def _drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own id from its result row, keeping the first ``k`` others."""
    out = np.empty((len(ids), k), dtype=np.int64)
    for i, (row, s) in enumerate(zip(ids, self_ids)):
        out[i] = row[row != s][:k]
    return out


def tune_search(index: faiss.Index, keys, *, target_recall: float = 0.95, k: int = 10, n_queries: int = 1000,
                queries=None, margin: float = 0.01, seed: int = 0) -> dict:
    """Raise ``nprobe`` (IVF) or ``efSearch`` (HNSW) until recall@``k`` reaches ``target_recall + margin``.

    ``queries`` should not be in the index. Without them, ``n_queries`` stored vectors serve, each excluded
    from its own results; that overstates recall for HNSW, whose graph links a stored vector to its
    neighbours. The margin absorbs the sampling error of the queries. Stops early when IVF-PQ's recall
    plateaus (its compression caps it). Returns what it measured; the index keeps the setting.
    """
    kind = index_kind(index)
    if kind == "flat":
        return {"param": None, "value": None, "recall": 1.0, "k": k, "target": target_recall}
    keys = _as_matrix(keys, "keys", index.d)
    exclude = queries is None
    if exclude:
        sample = np.random.default_rng(seed).choice(len(keys), min(n_queries, len(keys)), replace=False)
        q, extra = keys[sample], 1
    else:
        q, sample, extra = _as_matrix(queries, "queries", index.d), None, 0
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    kk = min(k + extra, len(keys))
    truth = exact_search(q, keys, kk, metric)[1]
    if exclude:
        truth = _drop_self(truth, sample, kk - 1)
    if kind == "hnsw":
        name, grid = "efSearch", [v for v in (16, 32, 64, 128, 256, 512, 1024, 2048) if v >= kk]
    else:
        name, grid = "nprobe", sorted({min(2 ** i, index.nlist) for i in range(int(math.log2(index.nlist)) + 2)})
    best, trace = None, []
    for value in grid:
        set_search_params(index, **{"nprobe" if name == "nprobe" else "ef_search": value})
        found = index.search(q, kk)[1]
        if exclude:
            found = _drop_self(found, sample, kk - 1)
        r = recall_at_k(found, truth, truth.shape[1])
        trace.append((value, round(r, 4)))
        plateau = kind == "ivfpq" and len(trace) > 1 and r - trace[-2][1] < 0.002
        if plateau:
            value, r = trace[-2]
            set_search_params(index, **{"nprobe" if name == "nprobe" else "ef_search": value})
        best = (value, r)
        if r >= target_recall + margin or plateau:
            break
    if best[1] < target_recall:
        logger.warning("%s index: recall@%d reaches only %.3f (target %.2f) at %s=%d", kind, k, best[1],
                       target_recall, name, best[0])
    logger.info("tuned %s=%d: recall@%d %.4f (trace %s)", name, best[0], k, best[1], trace)
    return {"param": name, "value": int(best[0]), "recall": round(float(best[1]), 4), "k": k,
            "target": target_recall, "margin": margin, "n_queries": len(q),
            "queries": "stored vectors, self excluded" if exclude else "given"}


def exact_search(queries, keys, k: int, metric: str = "ip", chunk: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` in numpy, for checking indexes: (scores [q, k], ids [q, k]).

    ``ip``: largest inner products first; ``l2``: smallest squared distances first (as FAISS reports them).
    Equal scores are ordered by id. Keys are scanned in chunks so memory stays near 64 MB whatever the store size.
    """
    q = _as_matrix(queries, "queries")
    keys = _as_matrix(keys, "keys", q.shape[1])
    if metric not in METRICS:
        raise RetriktError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    k = min(int(k), len(keys))
    if k < 1:
        raise RetriktError(f"exact_search: k must be >= 1 and keys non-empty (k={k}, {len(keys)} keys)")
    chunk = chunk or max(1024, (1 << 24) // max(1, len(q)))
    best_s = np.empty((len(q), 0), dtype=np.float32)  # larger is better for both metrics (l2 negated)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    qn = (q * q).sum(1, keepdims=True)
    for start in range(0, len(keys), chunk):
        block = keys[start:start + chunk]
        s = q @ block.T
        if metric == "l2":
            s = -(qn - 2 * s + (block * block).sum(1)[None, :])
        top = _top_k(s, k)
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        top = _top_k(best_s, k)
        best_s, best_i = np.take_along_axis(best_s, top, 1), np.take_along_axis(best_i, top, 1)
    order = np.lexsort((best_i, -best_s), axis=1)
    scores = np.take_along_axis(best_s, order, 1)
    return (scores if metric == "ip" else -scores).astype(np.float32), np.take_along_axis(best_i, order, 1)


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest values of each row (unordered)."""
    if s.shape[1] <= k:
        return np.broadcast_to(np.arange(s.shape[1]), s.shape)
    return np.argpartition(-s, k - 1, axis=1)[:, :k]


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    """A GPU copy of ``index`` when FAISS has GPU support and a GPU is present; otherwise ``index`` unchanged.

    Kinds FAISS cannot run on GPU (HNSW) stay on CPU with a warning.
    """
    if not gpu_available() or type(index).__name__.startswith("Gpu"):
        return index
    params = index_params(index)
    try:
        res = _GPU_RESOURCES.setdefault(device, faiss.StandardGpuResources())  # kept alive with the indexes
        gpu = faiss.index_cpu_to_gpu(res, device, index)
    except RuntimeError as e:
        logger.warning("keeping the %s index on CPU: FAISS cannot move it to GPU (%s)", params["kind"],
                       str(e).splitlines()[0])
        return index
    if "nprobe" in params:
        set_search_params(gpu, nprobe=params["nprobe"])
    return gpu


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if type(index).__name__.startswith("Gpu") else index


def save_index(index: faiss.Index, path: str | os.PathLike) -> Path:
    """Write ``index`` (moved to CPU if needed) to ``path`` atomically: a temp file, fsynced, then renamed."""
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(to_cpu(index), str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


def load_index(path: str | os.PathLike) -> faiss.Index:
    path = Path(path)
    if not path.exists():
        raise IntegrityError(f"{path}: index file is missing")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        raise IntegrityError(f"{path}: not a readable FAISS index (truncated or corrupted: "
                             f"{msg[-1] if msg else e})") from None
