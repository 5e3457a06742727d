"""k-nearest-neighbour search over feature vectors with FAISS: exact, IVF or HNSW, CPU or GPU.

One small API, `KnnIndex`, used by the metrics (docs/DESIGN.md §5): batched kNN queries, self-kNN with
sklearn's convention, and range queries with a radius per query.  Three choices make the answers
trustworthy rather than merely fast:

* The index holds the data shifted by its mean.  FAISS computes squared L2 as
  ||q||² + ||x||² − 2 q·x in float32, whose rounding error grows with the norms; centring keeps
  the norms (and so the error) small.
* Every returned distance is recomputed from the vectors themselves (q − x, summed in float64)
  and the neighbours re-sorted.  The expansion above turns an exact duplicate into a distance of
  ~1e-3 instead of 0, which would wreck LOF's reachability densities.
* Approximate indexes tune their search breadth (IVF nprobe, HNSW efSearch) until recall@k of
  a held-out sample of the data (added only after tuning), against exact search, meets a
  target; the achieved value is kept on the index as `measured_recall`.  Approximate answers
  are only as good as that recall; queries far from the data may fare worse.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FAISS's OpenMP spins 2-4x slower otherwise

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import faiss
import numpy as np

from minority_core.errors import InputError

KINDS = ("auto", "exact", "ivf", "hnsw")
DEVICES = ("auto", "cpu", "gpu")

# "auto" picks exact search while its brute-force work (indexed rows × expected queries × dims)
# stays under this many multiply-adds.  IndexFlatL2 does ~2e10 of them a second on the 2-core
# machine we measured (docs/DESIGN.md §7: 10k queries against 1M×64 in 28 s), so 1e12 is about a minute:
# roughly what training, filling and tuning an IVF index costs by the time exact search gets
# that slow.  Beyond it exact cost grows as N·Q while IVF grows about as N·√N.
EXACT_WORK_BUDGET = 1e12

HNSW_M = 32  # graph degree: FAISS's usual choice; recall 0.97 at efSearch 64 on 200k×64 here
HNSW_EF_MAX = 4096  # efSearch ceiling while tuning
IVF_POINTS_PER_LIST = 40  # k-means training rows per list; FAISS warns below 39
TUNE_SAMPLE = 1000  # indexed rows whose recall is measured while tuning
RANGE_RESULT_BUDGET = 2**24  # worst-case (query, point) pairs one range-search call may return
REFINE_BLOCK = 2**17  # elements gathered at once while recomputing distances (cache-sized: fastest)
REFINE_EXTRA = 8  # extra candidates fetched (at least; k/4 for large k) before exact re-ranking
GPU_MAX_K = 2048  # FAISS GPU indexes cannot select more neighbours (or probe more lists)
_EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------- validation


def as_matrix(x: Any, name: str, dim: int | None = None, dtype: type = np.float32) -> np.ndarray:
    """`x` as a C-contiguous 2-D array of `dtype`, or a one-line ValueError naming what is wrong."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D array (rows, dims), got shape {arr.shape}: "
            "reshape it, e.g. x.reshape(1, -1) for a single row"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {arr.shape}): pass at least one row of at least one feature")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"{name} has dtype {arr.dtype}: pass real numbers (float32 preferred)")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(
            f"{name} has {arr.shape[1]} dims but the reference has {dim}: "
            "use features from the same extractor on both sides"
        )
    arr = np.ascontiguousarray(arr, dtype=dtype)
    # A float64 sum of finite float32/float64 rows cannot overflow here, so it is finite exactly
    # when every element is: one cheap pass instead of an N×d boolean mask.
    if not np.isfinite(arr.sum(dtype=np.float64)):
        row = _first_nonfinite_row(arr)
        raise InputError(
            f"{name} contains NaN or inf (first in row {row}, after conversion to {np.dtype(dtype).name}): "
            "drop or impute those rows first"
        )
    return arr


def _first_nonfinite_row(arr: np.ndarray, block: int = 65536) -> int:
    for start in range(0, len(arr), block):
        bad = ~np.isfinite(arr[start : start + block]).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return -1


def check_k(k: int, n: int, name: str = "k", exclude_self: bool = False) -> int:
    """Validate a neighbour count against `n` indexed rows (`exclude_self`: a row is not its own neighbour)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise InputError(f"{name}={k} must be at least 1")
    if exclude_self and k >= n:
        raise InputError(
            f"{name}={k} needs more than {k} reference rows but there are {n} "
            f"(a row is not its own neighbour): use {name} <= {n - 1} or more rows"
        )
    if k > n:
        raise InputError(f"{name}={k} exceeds the {n} indexed rows: use {name} <= {n} or more rows")
    return k


# ---------------------------------------------------------------- the index


class KnnIndex:
    """A FAISS index plus the vectors it was built from; every distance returned is Euclidean.

    Build with `KnnIndex.build`.  Attributes: `kind` ("exact" | "ivf" | "hnsw"), `vectors`
    (float32, N×d), `measured_recall` (1.0 for exact), `nprobe` (IVF) / `ef_search` (HNSW),
    `on_gpu`.  Memory: the vectors plus the index's own copy, O(N·d).
    """

    def __init__(
        self,
        kind: str,
        vectors: np.ndarray,
        mean: np.ndarray,
        cpu_index: faiss.Index,
        measured_recall: float = 1.0,
        device: str = "auto",
    ) -> None:
        self.kind = kind
        self.vectors = vectors
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.cpu_index = cpu_index
        self.measured_recall = float(measured_recall)
        breadth = int(getattr(*_breadth(cpu_index, kind))) if kind != "exact" else None
        self.nprobe: int | None = breadth if kind == "ivf" else None
        self.ef_search: int | None = breadth if kind == "hnsw" else None
        self.gpu_index = _to_gpu(cpu_index, kind, device)
        self._sq_norm_max = _max_sq_norm(vectors, self.mean)

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def on_gpu(self) -> bool:
        return self.gpu_index is not None

    # ------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        kind: str = "auto",
        recall_target: float = 0.95,
        seed: int = 0,
        device: str = "auto",
        expected_queries: int | None = None,
        tune_k: int = 20,
    ) -> KnnIndex:
        """Index `features`.  "auto" is exact while N·Q·d ≤ EXACT_WORK_BUDGET (Q = `expected_queries`,
        default N: a reference set is self-searched once), else IVF.  Approximate kinds are tuned
        until recall@`tune_k` reaches `recall_target`."""
        vectors = as_matrix(features, "features")
        _check_choice(kind, KINDS, "kind")
        _check_choice(device, DEVICES, "device")
        if not 0.0 < recall_target <= 1.0:
            raise InputError(f"recall_target={recall_target} must be in (0, 1]")
        if isinstance(tune_k, bool) or not isinstance(tune_k, (int, np.integer)) or tune_k < 1:
            raise InputError(f"tune_k={tune_k!r} must be an integer >= 1")
        n, d = vectors.shape
        if kind == "auto":
            queries = n if expected_queries is None else max(1, int(expected_queries))
            kind = "exact" if n * queries * d <= EXACT_WORK_BUDGET else "ivf"
        mean = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
        if kind == "exact" or n < 2:
            index = _filled(faiss.IndexFlatL2(d), vectors, mean)
            return cls("exact", vectors, mean, index, 1.0, device)
        rng = np.random.default_rng(seed)
        if kind == "ivf":
            index = _new_ivf(vectors, mean, rng, seed)
        else:  # an id map, so rows can be added in any order under their own row numbers
            index = faiss.IndexIDMap(faiss.IndexHNSWFlat(d, HNSW_M))
        # Tune on queries the index has not seen (as scored samples will be): hold a sample out,
        # tune against the rest, then add it.  Ids are given explicitly, so they stay row numbers.
        holdout = np.sort(rng.choice(n, size=min(TUNE_SAMPLE, max(1, n // 10)), replace=False))
        _filled(index, vectors, mean, np.setdiff1d(np.arange(n), holdout))
        built = cls(kind, vectors, mean, index, 0.0, device="cpu")  # tune on the CPU, then move
        built._tune(holdout, recall_target, min(tune_k, n - len(holdout)))
        _filled(index, vectors, mean, holdout)
        built.gpu_index = _to_gpu(index, kind, device)
        return built

    def _tune(self, holdout: np.ndarray, target: float, k: int) -> None:
        """Smallest nprobe / efSearch whose recall@k for the held-out rows (not yet in the index)
        against exact search over the indexed rows meets `target`."""
        q = self.vectors[holdout]
        truth = _exact_knn_excluding(self.vectors, holdout, k)
        owner, attr = _breadth(self.cpu_index, self.kind)
        ivf = self.kind == "ivf"
        lo, hi = (1, int(self.cpu_index.nlist)) if ivf else (max(16, k), max(HNSW_EF_MAX, k))

        def recall_at(value: int) -> float:
            setattr(owner, attr, value)
            dist, _ = self._search_block(q, k, exact_fallback=False)
            return _recall(dist, truth)

        value, recall = _smallest_passing(recall_at, lo, hi, target)
        setattr(owner, attr, value)
        self.measured_recall = recall
        self.nprobe = value if ivf else None
        self.ef_search = None if ivf else value
        if recall < target:
            warnings.warn(
                f"{self.kind} index reached recall@{k} {recall:.3f} < target {target} at its widest "
                f"search ({value}); use kind='exact' or 'ivf' for this data",
                stacklevel=3,
            )

    # ------------------------------------------------------------ queries

    def search(self, queries: np.ndarray, k: int, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed rows of each query: (Euclidean distances float32, row ids int64), nearest first."""
        q = as_matrix(queries, "queries", self.dim)
        k = check_k(k, self.n)
        batch = _check_batch(batch_size)
        dist = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), batch):
            dist[start : start + batch], ids[start : start + batch] = self._search_block(q[start : start + batch], k)
        return dist, ids

    def self_search(self, k: int, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of every indexed row, the row itself excluded.

        Like sklearn's `kneighbors()` with X=None only the row itself is dropped (by id), so an
        exact duplicate of a row is still its neighbour at distance 0."""
        k = check_k(k, self.n, exclude_self=True)
        dist = np.empty((self.n, k), dtype=np.float32)
        ids = np.empty((self.n, k), dtype=np.int64)
        batch = _check_batch(batch_size)
        for start in range(0, self.n, batch):
            rows = np.arange(start, min(start + batch, self.n))
            dist[rows], ids[rows] = self._self_knn_rows(rows, k)
        return dist, ids

    def range_search(
        self, queries: np.ndarray, radii: np.ndarray, inclusive: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield chunks of (query row, indexed row id, distance) for every indexed row with
        distance < radius of that query (<= when `inclusive`).

        Queries are processed in order of radius, so each FAISS call's single threshold is tight,
        and in batches of RANGE_RESULT_BUDGET // N, so a call can never return more pairs than
        that budget.  Exact for the exact index (the FAISS threshold is widened by the worst-case
        float32 error, then every candidate is checked with its recomputed distance)."""
        q = as_matrix(queries, "queries", self.dim)
        r = np.asarray(radii, dtype=np.float64)
        if r.shape != (len(q),) or not np.isfinite(r).all() or (r < 0).any():
            raise InputError(f"radii must be {len(q)} finite non-negative numbers, one per query; got shape {r.shape}")
        order = np.argsort(r, kind="stable")
        batch = max(1, RANGE_RESULT_BUDGET // self.n)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            yield self._range_block(q[rows], r[rows], rows, inclusive)

    def _range_block(
        self, q: np.ndarray, r: np.ndarray, rows: np.ndarray, inclusive: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shifted = q - self.mean
        q_norm = float(np.einsum("ij,ij->i", shifted, shifted).max())
        slack = 2.0 * self.dim * _EPS32 * (q_norm + self._sq_norm_max)
        threshold = float(r.max()) ** 2 * (1 + 1e-6) + slack
        lims, approx_sq, found = self.cpu_index.range_search(shifted, threshold)  # no GPU range search
        local = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        near = approx_sq <= r[local] ** 2 * (1 + 1e-6) + slack  # each query's own radius, before refining
        local, found = local[near], found[near].astype(np.int64)
        dist = _exact_pair_distances(q, local, self.vectors, found).astype(np.float32)
        keep = dist <= r[local] if inclusive else dist < r[local]
        return rows[local[keep]], found[keep], dist[keep]

    def _candidates(self, q: np.ndarray, k: int) -> np.ndarray:
        """FAISS's k neighbour ids per query (-1 where an approximate index found fewer)."""
        index = self.gpu_index if self.gpu_index is not None and k <= GPU_MAX_K else self.cpu_index
        _, ids = index.search(q - self.mean, k)
        return ids.astype(np.int64, copy=False)

    def _search_block(self, q: np.ndarray, k: int, exact_fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One block: a few more candidates than asked (FAISS's float32 ranking can swap
        near-ties), distances recomputed, re-sorted, cut to k.  Rows an approximate index could
        not fill are searched exactly instead (unless tuning, where they count as misses)."""
        fetch = min(self.n, k + max(REFINE_EXTRA, k // 4))
        dist, ids = _refine(q, self.vectors, self._candidates(q, fetch))
        dist, ids = dist[:, :k], ids[:, :k]
        short = ids[:, -1] < 0
        if exact_fallback and short.any():
            _, exact = faiss.knn(q[short], self.vectors, fetch)
            exact_dist, exact_ids = _refine(q[short], self.vectors, exact.astype(np.int64))
            dist[short], ids[short] = exact_dist[:, :k], exact_ids[:, :k]
        return dist, ids

    def _self_knn_rows(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self._search_block(self.vectors[rows], k + 1)
        return _drop_self(dist, ids, rows)

    # ------------------------------------------------------------ persistence

    def config(self) -> dict[str, Any]:
        """What `restore` needs besides the vectors (and, for approximate kinds, `write_faiss`'s bytes)."""
        return {
            "kind": self.kind,
            "measured_recall": self.measured_recall,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "mean": [float(v) for v in self.mean],
        }

    def write_faiss(self, fileobj: BinaryIO) -> None:
        """Serialise the CPU index (tuned search breadth included) to a writable binary file."""
        faiss.write_index(self.cpu_index, faiss.PyCallbackIOWriter(fileobj.write))

    @classmethod
    def restore(
        cls, vectors: np.ndarray, config: dict[str, Any], faiss_bytes: bytes | None = None, device: str = "auto"
    ) -> KnnIndex:
        """Rebuild from `config()`: an exact index is refilled from the vectors (cheap); an
        approximate one is read from `faiss_bytes` so it needs no retraining or retuning."""
        vectors = as_matrix(vectors, "vectors")
        mean = np.asarray(config["mean"], dtype=np.float32)
        if config["kind"] == "exact":
            index = _filled(faiss.IndexFlatL2(vectors.shape[1]), vectors, mean)
        else:
            if faiss_bytes is None:
                raise InputError(f"a {config['kind']} index needs its serialised FAISS bytes to be restored")
            index = faiss.deserialize_index(np.frombuffer(faiss_bytes, dtype=np.uint8))
            if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
                raise InputError(
                    f"stored index holds {index.ntotal}×{index.d} but the vectors are {vectors.shape}: save the set again"
                )
        return cls(config["kind"], vectors, mean, index, config["measured_recall"], device)


# ---------------------------------------------------------------- helpers


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _check_batch(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size} must be at least 1")
    return int(batch_size)


def _filled(
    index: faiss.Index, vectors: np.ndarray, mean: np.ndarray, rows: np.ndarray | None = None, block: int = 65536
) -> faiss.Index:
    """Add the mean-shifted vectors (all, or `rows` with their row numbers as ids) in blocks, so
    no full shifted copy exists besides the index's own."""
    if rows is None:
        for start in range(0, len(vectors), block):
            index.add(vectors[start : start + block] - mean)
        return index
    for start in range(0, len(rows), block):
        ids = np.ascontiguousarray(rows[start : start + block], dtype=np.int64)
        index.add_with_ids(vectors[ids] - mean, ids)
    return index


def _breadth(index: faiss.Index, kind: str) -> tuple[Any, str]:
    """(object, attribute) holding the search breadth: IVF nprobe or HNSW efSearch."""
    if kind == "ivf":
        return index, "nprobe"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return inner.hnsw, "efSearch"


def _new_ivf(vectors: np.ndarray, mean: np.ndarray, rng: np.random.Generator, seed: int) -> faiss.Index:
    """IndexIVFFlat with ~4·√N lists, k-means trained on a sample of IVF_POINTS_PER_LIST rows per list."""
    n, d = vectors.shape
    nlist = int(np.clip(round(4 * math.sqrt(n)), 1, max(1, n // IVF_POINTS_PER_LIST)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    sample = np.sort(rng.choice(n, size=min(n, IVF_POINTS_PER_LIST * nlist), replace=False))
    index.train(vectors[sample] - mean)
    return index


def _to_gpu(cpu_index: faiss.Index, kind: str, device: str) -> faiss.Index | None:
    """The index on all visible GPUs when allowed and possible; None keeps it on the CPU."""
    if device == "cpu":
        return None
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        if device == "gpu":
            raise InputError("device='gpu' but FAISS sees no GPU (faiss-cpu build or no CUDA device): use device='cpu'")
        return None
    if kind == "hnsw":  # FAISS has no GPU HNSW
        if device == "gpu":
            warnings.warn("FAISS has no GPU HNSW index: searching on the CPU", stacklevel=3)
        return None
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index)
    except (RuntimeError, AttributeError) as exc:  # e.g. nprobe above the GPU limit
        if device == "gpu":
            raise
        warnings.warn(f"could not move the {kind} index to GPU ({exc}); searching on the CPU", stacklevel=3)
        return None


def _max_sq_norm(vectors: np.ndarray, mean: np.ndarray, block: int = 65536) -> float:
    best = 0.0
    for start in range(0, len(vectors), block):
        shifted = vectors[start : start + block] - mean
        best = max(best, float(np.einsum("ij,ij->i", shifted, shifted).max()))
    return best


def _exact_pair_distances(q: np.ndarray, q_rows: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """||q[q_rows[i]] − vectors[ids[i]]|| for each pair in float64 (float32 differences are exact
    to half an ulp), so rankings hold even between distances equal in float32."""
    out = np.empty(len(ids), dtype=np.float64)
    block = max(1, REFINE_BLOCK // max(1, q.shape[1]))
    for start in range(0, len(ids), block):
        sl = slice(start, start + block)
        diff = vectors[ids[sl]]
        diff -= q[q_rows[sl]]
        diff = diff.astype(np.float64)
        out[sl] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _refine(q: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean distances for candidate ids (row per query; -1 = none), each row sorted nearest first."""
    rows, k = ids.shape
    flat = ids.reshape(-1)
    dist = _exact_pair_distances(q, np.repeat(np.arange(rows), k), vectors, np.maximum(flat, 0)).reshape(rows, k)
    dist[ids < 0] = np.inf  # missing neighbours sort last
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(dist, order, axis=1).astype(np.float32), np.take_along_axis(ids, order, axis=1)


def _drop_self(dist: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 neighbours keep k: drop the row itself; if it is absent drop the first column when
    that is at distance 0 (duplicates crowded it out: sklearn's rule), else the last (an
    approximate search missed it)."""
    n, k1 = ids.shape
    is_self = ids == rows[:, None]
    absent_col = np.where(dist[:, 0] == 0, 0, k1 - 1)
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), absent_col)
    keep = np.ones((n, k1), dtype=bool)
    keep[np.arange(n), drop] = False
    return dist[keep].reshape(n, k1 - 1), ids[keep].reshape(n, k1 - 1)


def _exact_knn_excluding(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact k-NN distances of `rows` to the other rows (all of `rows` excluded), by brute force
    without an index copy: search k + len(rows), then drop every excluded row."""
    q = vectors[rows]
    _, ids = faiss.knn(q, vectors, min(len(vectors), k + len(rows) + REFINE_EXTRA))
    dist, ids = _refine(q, vectors, ids.astype(np.int64))
    keep = ~np.isin(ids, rows)
    keep &= np.cumsum(keep, axis=1) <= k
    return dist[keep].reshape(len(rows), k)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """recall@k by distance: the share of returned neighbours no farther than the true k-th
    (robust to ties, unlike comparing ids)."""
    kth = truth[:, -1:].astype(np.float64)
    hits = found <= kth * (1 + 1e-6) + 1e-12
    return float(hits.sum() / found.size)


def _smallest_passing(score: Callable[[int], float], lo: int, hi: int, target: float) -> tuple[int, float]:
    """Smallest value in [lo, hi] with score >= target, assuming score grows with the value:
    doubling, then bisection to within 1/8.  Returns (hi, score) if even hi fails."""
    failed, value = lo - 1, lo
    result = score(value)
    while result < target and value < hi:
        failed, value = value, min(2 * value, hi)
        result = score(value)
    if result < target:
        return value, result
    while value - failed > max(1, value // 8):
        mid = (value + failed) // 2
        mid_result = score(mid)
        if mid_result >= target:
            value, result = mid, mid_result
        else:
            failed = mid
    return value, result
