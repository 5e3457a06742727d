"""Sample-level and set-level metrics in a feature space (DESIGN §5), never with N×N memory.

Per generated sample, against a reference set (`ReferenceSet.score`):
  AvgkNN   mean Euclidean distance to the k_avg nearest references;
  LOF      Breunig et al. 2000, equal to sklearn `-LocalOutlierFactor(novelty=True).score_samples`;
  Rarity   min radius over references whose k_rarity-NN ball strictly contains the sample, NaN
           (and `in_support` False) when no ball does.
Per set: precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020), and
the Fréchet distance between Gaussian fits (FID when the features are Inception pool3).

Reference-side work (self-kNN, radii, LOF densities) is done once in `ReferenceSet.build` and can
be saved to any fsspec URL; scoring is one batched kNN query plus an exact range query for the
few samples whose rarity the kNN answer cannot settle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import numpy as np
from scipy import linalg

from minority_core.errors import InputError, MissingFileError
from minority_core.metrics.knn import KnnIndex, as_matrix, check_k

REFERENCE_FORMAT = "minority-synth/reference-set"
REFERENCE_VERSION = 1
LRD_EPS = 1e-10  # sklearn adds this to the mean reachability distance before inverting
_ROW_BLOCK = 65536
_ARRAYS = ("features", "knn_distances", "knn_indices", "lrd")


# ---------------------------------------------------------------- reference set


@dataclass
class ReferenceSet:
    """Reference features with their precomputed self-kNN, rarity radii and LOF densities.

    `knn_distances` / `knn_indices`: the max(k_lof, k_rarity) nearest neighbours of every
    reference row, itself excluded (sklearn's convention).  `lrd`: LOF local reachability
    density of every reference row (float64), computed as sklearn does."""

    index: KnnIndex
    knn_distances: np.ndarray
    knn_indices: np.ndarray
    lrd: np.ndarray
    k_lof: int
    k_rarity: int

    @property
    def features(self) -> np.ndarray:
        return self.index.vectors

    @property
    def radii(self) -> np.ndarray:
        """Rarity radius of every reference row: distance to its k_rarity-th neighbour."""
        return self.knn_distances[:, self.k_rarity - 1]

    @property
    def lof_k_distance(self) -> np.ndarray:
        return self.knn_distances[:, self.k_lof - 1]

    @classmethod
    def build(
        cls, features: np.ndarray, k_lof: int = 20, k_rarity: int = 3, index: str = "auto", device: str = "auto"
    ) -> ReferenceSet:
        """Index `features` and precompute everything scoring needs (one self-kNN pass)."""
        vectors = as_matrix(features, "features")
        n = len(vectors)
        k_lof = check_k(k_lof, n, "k_lof", exclude_self=True)
        k_rarity = check_k(k_rarity, n, "k_rarity", exclude_self=True)
        k_max = max(k_lof, k_rarity)
        knn = KnnIndex.build(vectors, kind=index, device=device, tune_k=k_max)
        dist, ids = knn.self_search(k_max)
        lrd = _reachability_density(dist[:, :k_lof], ids[:, :k_lof], dist[:, k_lof - 1])
        return cls(knn, dist, ids, lrd, k_lof, k_rarity)

    def score(self, queries: np.ndarray, k_avg: int = 5) -> dict[str, np.ndarray]:
        """AvgkNN, LOF and Rarity of each query row (float64), and `in_support` (bool)."""
        q = as_matrix(queries, "queries", self.index.dim)
        k_avg = check_k(k_avg, self.index.n, "k_avg")
        dist, ids = self.index.search(q, max(k_avg, self.k_lof, self.k_rarity))
        rarity = self._rarity(q, dist, ids)
        return {
            "avgknn": dist[:, :k_avg].mean(axis=1, dtype=np.float64),
            "lof": self._lof(dist[:, : self.k_lof], ids[:, : self.k_lof]),
            "rarity": rarity,
            "in_support": ~np.isnan(rarity),
        }

    def _lof(self, dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """LOF(q) = mean lrd of q's neighbours / lrd(q): sklearn's `-score_samples` in novelty mode."""
        lrd_q = _reachability_density(dist, ids, self.lof_k_distance)
        return self.lrd[ids].mean(axis=1) / lrd_q

    def _rarity(self, q: np.ndarray, dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact min radius of the balls containing each query, NaN outside every ball.

        A ball of r contains q when d(q, r) < radius_r.  From the K nearest refs we get the best
        radius so far.  Unexamined refs lie at d >= D_K (the K-th distance), so one can still
        contain q with a smaller radius only if D_K <= d < radius_r < best, and only if
        d < max radius.  Queries where best <= D_K or D_K >= max radius are therefore settled;
        the rest get one range query for refs with d < min(best, max radius), which contains
        every ref that could improve the answer.  Exact with the exact index."""
        radii = self.radii.astype(np.float64)
        contains = dist < radii[ids]
        best = np.where(contains, radii[ids], np.inf).min(axis=1)
        max_radius = float(radii.max())
        kth = dist[:, -1].astype(np.float64)
        open_rows = np.flatnonzero((best > kth) & (kth < max_radius) & (dist.shape[1] < self.index.n))
        if len(open_rows):
            bound = np.minimum(best[open_rows], max_radius)
            for rows, refs, d in self.index.range_search(q[open_rows], bound):
                inside = d < radii[refs]
                np.minimum.at(best, open_rows[rows[inside]], radii[refs[inside]])
        return np.where(np.isfinite(best), best, np.nan)

    # ------------------------------------------------------------ persistence

    def save(self, url: str, storage_options: dict | None = None) -> None:
        """Write the set under `url` (any fsspec URL): one .npy per array, `index.faiss` for an
        approximate index, then `meta.json` (k values, format version, sizes and sha256 of every
        file) last, so a set is loadable only once complete.  Each file is written whole:
        locally to a temporary name then renamed, elsewhere uploaded from a local temporary file
        in one put (a multipart upload too only appears when complete)."""
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        arrays = {"features": self.features, "knn_distances": self.knn_distances,
                  "knn_indices": self.knn_indices, "lrd": self.lrd}
        files = {}
        for name, arr in arrays.items():
            write = lambda f, a=arr: np.save(f, a, allow_pickle=False)  # noqa: E731
            files[f"{name}.npy"] = _write_file(fs, f"{root}/{name}.npy", write)
        if self.index.kind != "exact":
            files["index.faiss"] = _write_file(fs, f"{root}/index.faiss", self.index.write_faiss)
        meta = {
            "format": REFERENCE_FORMAT,
            "version": REFERENCE_VERSION,
            "k_lof": self.k_lof,
            "k_rarity": self.k_rarity,
            "rows": self.index.n,
            "dims": self.index.dim,
            "index": self.index.config(),
            "files": files,
        }
        _write_file(fs, f"{root}/meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))

    @classmethod
    def load(cls, url: str, storage_options: dict | None = None, device: str = "auto") -> ReferenceSet:
        """Read a set written by `save`, checking every file against the sizes and hashes in meta.json."""
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        meta_path = f"{root}/meta.json"
        if not fs.exists(meta_path):
            raise MissingFileError(f"no reference set at {url} (meta.json missing): build and save one first")
        meta = json.loads(fs.cat_file(meta_path))
        if meta.get("format") != REFERENCE_FORMAT or meta.get("version") != REFERENCE_VERSION:
            raise InputError(
                f"{url} holds format {meta.get('format')!r} version {meta.get('version')!r}, "
                f"this code reads {REFERENCE_FORMAT!r} version {REFERENCE_VERSION}: rebuild the reference set"
            )
        blobs = {name: _read_checked(fs, f"{root}/{name}", expect, url) for name, expect in meta["files"].items()}
        arrays = {name: np.load(io.BytesIO(blobs.pop(f"{name}.npy")), allow_pickle=False) for name in _ARRAYS}
        knn = KnnIndex.restore(arrays["features"], meta["index"], blobs.get("index.faiss"), device)
        return cls(knn, arrays["knn_distances"], arrays["knn_indices"], arrays["lrd"], meta["k_lof"], meta["k_rarity"])


def _reachability_density(dist: np.ndarray, ids: np.ndarray, k_distance: np.ndarray) -> np.ndarray:
    """lrd = 1 / (mean_b max(k-distance(b), d(a, b)) + 1e-10), in float64, by row blocks."""
    out = np.empty(len(dist), dtype=np.float64)
    for start in range(0, len(dist), _ROW_BLOCK):
        sl = slice(start, start + _ROW_BLOCK)
        reach = np.maximum(dist[sl].astype(np.float64), k_distance[ids[sl]].astype(np.float64))
        out[sl] = 1.0 / (reach.mean(axis=1) + LRD_EPS)
    return out


class _HashingWriter:
    """A write-only file wrapper counting bytes and hashing them on the way through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self.raw.write(view)


def _write_file(fs: fsspec.AbstractFileSystem, path: str, writer: Callable[[BinaryIO], Any]) -> dict[str, Any]:
    """Write one file so readers never see it half-written; returns its size and sha256.
    Locally: a temporary name beside it, renamed over it.  Elsewhere: a local temporary file,
    then one upload (an object appears only once its put, or multipart upload, completes)."""
    local = "file" in fs.protocol or "local" in fs.protocol
    token = uuid.uuid4().hex
    name = f"{path}.tmp-{token}" if local else os.path.join(tempfile.gettempdir(), f"refset-{token}")
    try:
        with open(name, "xb") as f:
            out = _HashingWriter(f)
            writer(out)
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.replace(name, path)
        else:
            fs.put_file(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)
    return {"bytes": out.size, "sha256": out.sha256.hexdigest()}


def _read_checked(fs: fsspec.AbstractFileSystem, path: str, expect: dict[str, Any], url: str) -> bytes:
    data = fs.cat_file(path)
    if len(data) != expect["bytes"] or hashlib.sha256(data).hexdigest() != expect["sha256"]:
        raise InputError(
            f"{os.path.basename(path)} in {url} does not match meta.json (changed after saving, or a save "
            "was interrupted): save the reference set again"
        )
    return data


# ---------------------------------------------------------------- precision/recall, density/coverage


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, index: str = "auto") -> dict[str, float]:
    """Kynkäänniemi et al. 2019.  precision: share of fake rows inside some real row's k-NN ball;
    recall: share of real rows inside some fake row's ball.  Radius = distance to the k-th
    neighbour, self excluded; inside means d <= radius, as in the authors' code."""
    real, fake = _paired(real, fake, k)
    real_knn, real_radii = _manifold(real, k, index, len(fake))
    fake_knn, fake_radii = _manifold(fake, k, index, len(real))
    fake_hits, _ = _ball_hits(real, real_radii, fake_knn, inclusive=True)
    real_hits, _ = _ball_hits(fake, fake_radii, real_knn, inclusive=True)
    return {"precision": float(np.mean(fake_hits > 0)), "recall": float(np.mean(real_hits > 0))}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, index: str = "auto") -> dict[str, float]:
    """Naeem et al. 2020.  density = (1/kM) Σ_j Σ_i 1[fake_j ∈ B(real_i, NND_k(real_i))];
    coverage = (1/N) Σ_i 1[∃ j: fake_j ∈ B(real_i, NND_k(real_i))].  Ball membership is
    d < radius, as in the authors' `prdc` code."""
    real, fake = _paired(real, fake, k)
    _, real_radii = _manifold(real, k, index, len(fake))
    fake_knn = KnnIndex.build(fake, kind=index, expected_queries=len(real), tune_k=k)
    fake_counts, real_counts = _ball_hits(real, real_radii, fake_knn, inclusive=False)
    return {
        "density": float(fake_counts.sum() / (k * len(fake))),
        "coverage": float(np.mean(real_counts > 0)),
    }


def _paired(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    real = as_matrix(real, "real")
    fake = as_matrix(fake, "fake", real.shape[1])
    check_k(k, min(len(real), len(fake)), "k", exclude_self=True)
    return real, fake


def _manifold(x: np.ndarray, k: int, index: str, other_rows: int) -> tuple[KnnIndex, np.ndarray]:
    """Index of `x` and every row's k-NN radius (self excluded)."""
    knn = KnnIndex.build(x, kind=index, expected_queries=len(x) + other_rows, tune_k=k)
    dist, _ = knn.self_search(k)
    return knn, dist[:, -1].astype(np.float64)


def _ball_hits(
    centers: np.ndarray, radii: np.ndarray, points: KnnIndex, inclusive: bool
) -> tuple[np.ndarray, np.ndarray]:
    """For balls B(center_i, radius_i): how many balls contain each indexed point, and how many
    points each ball contains.  Exact range queries in bounded batches, no N×M matrix."""
    per_point = np.zeros(points.n, dtype=np.int64)
    per_center = np.zeros(len(centers), dtype=np.int64)
    for rows, ids, _ in points.range_search(centers, radii, inclusive=inclusive):
        np.add.at(per_point, ids, 1)
        np.add.at(per_center, rows, 1)
    return per_point, per_center


# ---------------------------------------------------------------- Fréchet distance


def feature_statistics(features: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, like np.cov) in float64 of an array or of an iterable of
    row blocks (e.g. one per shard), accumulated around the first block's mean so large offsets
    cost no precision."""
    blocks = _row_blocks(features) if isinstance(features, np.ndarray) else iter(features)
    n, shift, s1, s2, dim = 0, None, None, None, None
    for i, block in enumerate(blocks):
        x = as_matrix(block, f"features block {i}" if dim else "features", dim, dtype=np.float64)
        if shift is None:
            dim, shift = x.shape[1], x.mean(axis=0)
            s1, s2 = np.zeros(dim), np.zeros((dim, dim))
        y = x - shift
        n += len(y)
        s1 += y.sum(axis=0)
        s2 += y.T @ y
    if n < 2:
        raise InputError(f"features have {n} rows: a covariance needs at least 2")
    mu = shift + s1 / n
    sigma = (s2 - np.outer(s1, s1) / n) / (n - 1)
    return mu, (sigma + sigma.T) / 2


def _row_blocks(x: np.ndarray) -> Iterable[np.ndarray]:
    if x.ndim != 2:
        yield x  # as_matrix reports the shape
        return
    for start in range(0, max(len(x), 1), _ROW_BLOCK):
        yield x[start : start + _ROW_BLOCK]


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 − mu2||² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) in float64.

    As pytorch-fid: when the square root of Σ1Σ2 fails (non-finite, or inaccurate because the
    product is singular) retry with eps·I added to both covariances; drop the imaginary part
    rounding leaves, and fail if it is not negligible."""
    mu1, mu2 = _vector(mu1, "mu1"), _vector(mu2, "mu2")
    sigma1, sigma2 = _covariance(sigma1, "sigma1", len(mu1)), _covariance(sigma2, "sigma2", len(mu1))
    if len(mu1) != len(mu2):
        raise InputError(f"mu1 has {len(mu1)} dims but mu2 has {len(mu2)}: compare statistics of the same features")
    covmean = _sqrtm_product(sigma1, sigma2)
    if covmean is None:
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm_product(sigma1 + offset, sigma2 + offset, strict=False)
        if not np.isfinite(covmean).all():
            raise InputError("sqrt(sigma1 @ sigma2) is not finite even with an eps offset: check the covariances")
    if np.iscomplexobj(covmean):
        imag = float(np.abs(np.diagonal(covmean).imag).max())
        if imag > 1e-3:
            raise InputError(f"sqrt(sigma1 @ sigma2) has an imaginary part of {imag:.3g}: the covariances are not valid")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm_product(a: np.ndarray, b: np.ndarray, strict: bool = True) -> np.ndarray | None:
    """sqrtm(a @ b); with `strict`, None when it is non-finite or its residual is large."""
    product = a @ b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(product)
    if not strict:
        return root
    if not np.isfinite(root).all():
        return None
    scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    return root if np.linalg.norm(root @ root - product) / scale < 1e-6 else None


def _vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0:
        raise InputError(f"{name} must be a non-empty 1-D mean vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf: recompute the statistics from finite features")
    return arr


def _covariance(x: Any, name: str, dim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (dim, dim):
        raise InputError(f"{name} must be a {dim}×{dim} covariance to match the mean, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf: recompute the statistics from finite features")
    return arr


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (FID for Inception pool3 features)."""
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)
    if len(mu1) != len(mu2):
        raise InputError(f"real has {len(mu1)} dims but fake has {len(mu2)}: use the same feature extractor")
    return frechet_distance(mu1, sigma1, mu2, sigma2)
