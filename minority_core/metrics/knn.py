"""k-nearest-neighbour search over feature vectors: exact answers, brute force or certified IVF, CPU or GPU.

One small API, `KnnIndex`, used by the metrics (docs/DESIGN.md §5): batched kNN queries, self-kNN with
sklearn's convention, and ball membership (`ball_pairs`).  The work is `exact.Engine`'s: blocked
float32 GEMM on mean-centred data with a rigorous rounding bound per query, float64 recomputation
of only the candidates the bound cannot settle.  Two kinds:

* "exact": every reference block is scanned (the brute-force floor: one sgemm of N·Q·d).
* "ivf": references in k-means lists of ~IVF_LIST_SIZE (2048) rows; a query scans lists nearest first
  until every unscanned list's lower bound ‖q − c‖ − ρ exceeds its k-th distance.  The answers
  are the exact ones (certified per query, not tuned on mean recall); only the work shrinks, by
  how well the data clusters.  A query far from all data simply scans more lists.
* "pca": for wide features (2048-d): the coarse search runs on a PCA projection to PCA_DIMS
  (exact or IVF there), every answer re-ranked on the full vectors (which may be memory-mapped)
  and certified by the projection being a contraction (`projected.py`).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FAISS's OpenMP spins 2-4x slower otherwise

from typing import Any

import faiss
import numpy as np

from minority_core.errors import InputError
from minority_core.metrics import exact
from minority_core.metrics.exact import Engine, torch_device
from minority_core.metrics.projected import ProjectedEngine, fit_projection, project

KINDS = ("auto", "exact", "ivf", "pca")
DEVICES = ("auto", "cpu", "gpu", "cuda")  # and cuda:N; gpu = cuda

# "auto" scans everything while the brute-force work (indexed rows × expected queries × dims) stays
# under this many multiply-adds: ~10 s of sgemm on the 2-core machine; beyond it the IVF bounds pay
# for k-means and list bookkeeping (docs/DESIGN.md §7).
EXACT_WORK_BUDGET = 1e12
IVF_LIST_SIZE = 2048  # rows per k-means list: big enough for efficient GEMM blocks, small enough to prune
IVF_TRAIN_PER_LIST = 40  # k-means training rows per list; FAISS warns below 39
IVF_ITERATIONS = 10
PCA_DIMS = 64  # projected dimensions of the "pca" kind's coarse search


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
    """Reference vectors ready for exact kNN and ball queries; every distance returned is Euclidean.

    Build with `KnnIndex.build`.  Attributes: `kind` ("exact" | "ivf"), `vectors` (float32, N×d),
    `lists` (IVF: the list of every row, int32; None for exact), `on_gpu`.  Memory: the vectors
    plus one float32 GEMM copy, about 2·N·d·4 bytes."""

    def __init__(
        self, kind: str, vectors: np.ndarray, lists: np.ndarray | None, device: str = "auto",
        projection: np.ndarray | None = None,
    ) -> None:
        self.kind = kind
        self.vectors = vectors
        self.lists = lists
        self.projection = projection
        _check_device(device)
        self.device = torch_device(device)
        self.mean = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
        if kind != "pca":
            self.engine = _engine(vectors, self.mean, lists, self.device)
            return
        z, z_error = project(vectors, self.mean, projection)
        if lists is None and len(z) ** 2 * z.shape[1] > EXACT_WORK_BUDGET:
            self.lists = lists = _kmeans_lists(z, 0)  # IVF in the projected space
        inner = _engine(z, np.zeros(z.shape[1], dtype=np.float32), lists, self.device)
        self.engine = ProjectedEngine(vectors, self.mean, projection, inner, z_error)

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def build(
        cls, features: np.ndarray, kind: str = "auto", seed: int = 0, device: str = "auto", expected_queries: int | None = None
    ) -> KnnIndex:
        """Index `features`.  "auto" is "exact" while N·Q·d <= EXACT_WORK_BUDGET (Q =
        `expected_queries`, default N: a reference set is self-searched once), else "ivf".
        Both give the exact answers."""
        vectors = as_matrix(features, "features")
        _check_choice(kind, KINDS, "kind")
        _check_device(device)
        n, d = vectors.shape
        if kind == "auto":
            queries = n if expected_queries is None else max(1, int(expected_queries))
            kind = "exact" if n * queries * d <= EXACT_WORK_BUDGET else "ivf"
        lists = _kmeans_lists(vectors, seed) if kind == "ivf" else None
        projection = fit_projection(vectors, min(PCA_DIMS, d), seed=seed) if kind == "pca" else None
        return cls(kind, vectors, lists, device, projection)

    # ------------------------------------------------------------ queries

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed rows of each query: (Euclidean distances float32, row ids int64),
        nearest first, ties by row id."""
        dist, ids = self.search64(queries, k)
        return dist.astype(np.float32), ids

    def search64(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` with float64 distances (what ball tests compare against radii)."""
        q = as_matrix(queries, "queries", self.dim)
        return self.engine.knn(q, check_k(k, self.n))

    def self_search(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of every indexed row, the row itself excluded (float64 distances).

        Like sklearn's `kneighbors()` with X=None only the row itself is dropped (by id), so an
        exact duplicate of a row is still its neighbour at distance 0."""
        k = check_k(k, self.n, exclude_self=True)
        return self.engine.knn(self.vectors, k, self_ids=np.arange(self.n))

    def ball_pairs(self, queries: np.ndarray, radii: np.ndarray, inclusive: bool = False, lo=None, hi=None):
        """Yield (query rows, indexed row ids) of every pair with ‖q − x‖ < radii[x] (<= when
        `inclusive`), exactly; `lo`/`hi` (per query) restrict to balls with lo < radius < hi."""
        q = as_matrix(queries, "queries", self.dim)
        r = np.asarray(radii, dtype=np.float64)
        if r.shape != (self.n,) or not np.isfinite(r).all() or (r < 0).any():
            raise InputError(f"radii must be {self.n} finite non-negative numbers, one per indexed row; got shape {r.shape}")
        return self.engine.ball_pairs(q, r, inclusive, lo, hi)

    # ------------------------------------------------------------ persistence

    def config(self) -> dict[str, Any]:
        """What `restore` needs besides the vectors and `lists`."""
        return {"kind": self.kind, "lists": None if self.lists is None else int(self.lists.max()) + 1,
                "projected_dims": None if self.projection is None else len(self.projection)}

    @classmethod
    def restore(
        cls, vectors: np.ndarray, config: dict[str, Any], lists: np.ndarray | None = None, device: str = "auto",
        projection: np.ndarray | None = None,
    ) -> KnnIndex:
        """Rebuild from `config()`, the vectors, (IVF) the saved list of every row and (PCA) the
        projection: no k-means or PCA again.  `vectors` may be memory-mapped."""
        vectors = as_matrix(vectors, "vectors")
        kind = config["kind"]
        if kind == "ivf" and (lists is None or lists.shape != (len(vectors),)):
            raise InputError(f"an ivf index needs the list of each of its {len(vectors)} rows to be restored: save the set again")
        if kind == "pca" and (projection is None or projection.ndim != 2 or projection.shape[1] != vectors.shape[1]):
            raise InputError(f"a pca index needs its projection (p × {vectors.shape[1]}) to be restored: save the set again")
        return cls(kind, vectors, None if kind == "exact" else lists, device, projection if kind == "pca" else None)


# ---------------------------------------------------------------- helpers


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _check_device(device: str) -> None:
    if not (isinstance(device, str) and (device in DEVICES or re.fullmatch(r"cuda:\d+", device))):
        raise InputError(f"device={device!r} is not one of {', '.join(DEVICES)} or cuda:N")


def _engine(vectors: np.ndarray, mean: np.ndarray, lists: np.ndarray | None, device) -> Engine:
    if lists is None:  # every list is scanned; k-means only orders the rows, so that lists (tiles) are compact
        tile = exact.REF_TILE
        rows = np.argsort(_kmeans_lists(vectors, 0, tile), kind="stable")
        blocks = [rows[s : s + tile] for s in range(0, len(rows), tile)]
        return Engine(vectors, mean, blocks, None, device)
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(int(lists.max()) + 2))
    members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    centroids = np.stack([(vectors[ids] - mean).mean(axis=0, dtype=np.float64) for ids in members])
    return Engine(vectors, mean, members, centroids, device)


def _kmeans_lists(vectors: np.ndarray, seed: int, list_size: int | None = None) -> np.ndarray:
    """k-means list (int32) of every row: ~`list_size` (IVF_LIST_SIZE) rows a list, trained on a sample."""
    n, d = vectors.shape
    nlist = max(1, round(n / (list_size or IVF_LIST_SIZE)))
    if nlist == 1:
        return np.zeros(n, dtype=np.int32)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
    km = faiss.Kmeans(d, nlist, niter=IVF_ITERATIONS, seed=seed, verbose=False)
    km.train(np.ascontiguousarray(vectors[sample]))
    _, assigned = km.index.search(vectors, 1)
    return assigned[:, 0].astype(np.int32)
