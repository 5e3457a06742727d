"""A reference set: features with everything per-sample scoring needs precomputed (docs/DESIGN.md §5).

Per generated sample, against the reference (`ReferenceSet.score`):
  AvgkNN   mean Euclidean distance to the k_avg nearest references;
  LOF      Breunig et al. 2000, equal to sklearn `-LocalOutlierFactor(novelty=True).score_samples`;
  Rarity   min radius over references whose k_rarity-NN ball strictly contains the sample, NaN
           (and `in_support` False) when no ball does.

Reference-side work (self-kNN, radii, LOF densities) is done once in `ReferenceSet.build` and can
be saved to any fsspec URL; scoring is one batched exact kNN query plus, for the few samples whose
rarity the kNN answer cannot settle, a ball scan bounded per sample (only balls with radius
between its k-th distance and its best radius so far, smallest radii first).  Both index kinds
give the exact answers (knn.py); `accuracy` records what was checked against brute force.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from minority_core.errors import InputError, MissingFileError
from minority_core.io.atomic import write_atomic
from minority_core.metrics.knn import KnnIndex, as_matrix, check_k

REFERENCE_FORMAT = "minority-synth/reference-set"
REFERENCE_VERSION = 2  # 2: float64 kNN distances, IVF lists as lists.npy; version 1 exact sets still load
ACCURACY_SAMPLE = 1000  # reference rows re-scored by brute force at build to record the index's error
ORACLE_ELEMENTS = 2**28  # largest N·d the brute-force re-check copies (1 GiB of float32)
LRD_EPS = 1e-10  # sklearn adds this to the mean reachability distance before inverting
_DENSITY_ROW_BLOCK = 65536  # rows per block of the reachability-density pass: bounds its float64 temporaries
_ARRAYS = ("features", "knn_distances", "knn_indices", "lrd")
_SCORES = ("avgknn", "lof", "rarity")


@dataclass
class ReferenceSet:
    """Reference features with their precomputed self-kNN, rarity radii and LOF densities.

    `knn_distances` / `knn_indices`: the max(k_lof, k_rarity) nearest neighbours of every
    reference row, itself excluded (sklearn's convention).  `lrd`: LOF local reachability
    density of every reference row (float64), computed as sklearn does.  `accuracy`: the
    index's per-sample error against brute force on a sample (saved in meta.json, shown by the
    report): {"method", "checked_samples", "max_rel_error": {avgknn, lof, rarity},
    "share_within_1pct", "in_support_agreement"}."""

    index: KnnIndex
    knn_distances: np.ndarray
    knn_indices: np.ndarray
    lrd: np.ndarray
    k_lof: int
    k_rarity: int
    accuracy: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # One array object: the index caches its radius-sorted ball operand per radii array.
        self._radii = np.ascontiguousarray(self.knn_distances[:, self.k_rarity - 1], dtype=np.float64)

    @property
    def features(self) -> np.ndarray:
        return self.index.vectors

    @property
    def radii(self) -> np.ndarray:
        """Rarity radius of every reference row: distance to its k_rarity-th neighbour (float64)."""
        return self._radii

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
        knn = KnnIndex.build(vectors, kind=index, device=device)
        dist, ids = knn.self_search(k_max)
        lrd = _reachability_density(dist[:, :k_lof], ids[:, :k_lof], dist[:, k_lof - 1])
        built = cls(knn, dist, ids, lrd, k_lof, k_rarity)
        built.accuracy = built.check_accuracy(vectors[_sample_rows(n, ACCURACY_SAMPLE)])
        return built

    def check_accuracy(self, queries: np.ndarray, k_avg: int = 5) -> dict[str, Any]:
        """Per-sample error of this set's index against a brute-force (exact kind) scoring of
        `queries`: the figures `accuracy` stores.  The exact kind is the oracle itself."""
        if self.index.kind == "exact" or self.index.n * self.index.dim > ORACLE_ELEMENTS:
            zero = dict.fromkeys(_SCORES, 0.0)
            if self.index.kind != "exact":  # certified by construction; a brute-force copy would not fit
                return {"method": f"{self.index.kind}, certified per query, not re-checked (a brute-force copy of "
                        f"{self.index.n} x {self.index.dim} is over {ORACLE_ELEMENTS} elements)", "checked_samples": 0,
                        "max_rel_error": zero, "share_within_1pct": 1.0, "in_support_agreement": 1.0}
            return {"method": "exact", "checked_samples": 0, "max_rel_error": zero, "share_within_1pct": 1.0,
                    "in_support_agreement": 1.0}
        brute = KnnIndex("exact", self.index.vectors, None, device=self.index.device.type.replace("cuda", "gpu"))
        oracle = ReferenceSet(brute, self.knn_distances, self.knn_indices, self.lrd, self.k_lof, self.k_rarity)
        got, want = self.score(queries, k_avg), oracle.score(queries, k_avg)
        errors = {key: _rel_error(got[key], want[key]) for key in _SCORES}
        within = np.all([err <= 0.01 for err in errors.values()], axis=0)
        return {
            "method": f"{self.index.kind}, certified per query (lists skipped only when their bound exceeds the k-th distance)",
            "checked_samples": len(queries),
            "max_rel_error": {key: float(err.max()) for key, err in errors.items()},
            "share_within_1pct": float(within.mean()),
            "in_support_agreement": float(np.mean(got["in_support"] == want["in_support"])),
        }

    def score(self, queries: np.ndarray, k_avg: int = 5) -> dict[str, np.ndarray]:
        """AvgkNN, LOF and Rarity of each query row (float64), and `in_support` (bool)."""
        q = as_matrix(queries, "queries", self.index.dim)
        k_avg = check_k(k_avg, self.index.n, "k_avg")
        dist, ids = self.index.search64(q, max(k_avg, self.k_lof, self.k_rarity))
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
        contain q with a smaller radius only if D_K <= d < radius_r < best.  Queries where
        best <= D_K or D_K >= max radius are settled; the rest scan only the balls with
        D_K < radius < best, smallest radii first, `best` shrinking as balls are found."""
        radii = self._radii
        contains = dist < radii[ids]
        best = np.where(contains, radii[ids], np.inf).min(axis=1)
        kth = dist[:, -1]
        open_rows = np.flatnonzero((best > kth) & (kth < radii.max()) & (dist.shape[1] < self.index.n))
        if len(open_rows):
            hi = best[open_rows]  # a copy, lowered in place while the scan runs
            for rows, refs in self.index.ball_pairs(q[open_rows], radii, lo=kth[open_rows], hi=hi):
                np.minimum.at(hi, rows, radii[refs])
            best[open_rows] = hi
        return np.where(np.isfinite(best), best, np.nan)

    # ------------------------------------------------------------ persistence

    def save(self, url: str, storage_options: dict | None = None) -> None:
        """Write the set under `url` (any fsspec URL): one .npy per array, `lists.npy` for an
        approximate index, then `meta.json` (k values, format version, sizes and sha256 of every
        file) last, so a set is loadable only once complete.  Each file goes through
        `write_atomic`, so no reader ever sees one half-written."""
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        arrays = {"features": self.features, "knn_distances": self.knn_distances,
                  "knn_indices": self.knn_indices, "lrd": self.lrd}
        files = {}
        for name, arr in arrays.items():
            write = lambda f, a=arr: np.save(f, a, allow_pickle=False)  # noqa: E731
            files[f"{name}.npy"] = write_atomic(fs, f"{root}/{name}.npy", write)
        if self.index.lists is not None:
            write = lambda f: np.save(f, self.index.lists, allow_pickle=False)  # noqa: E731
            files["lists.npy"] = write_atomic(fs, f"{root}/lists.npy", write)
        if self.index.projection is not None:
            write = lambda f: np.save(f, self.index.projection, allow_pickle=False)  # noqa: E731
            files["projection.npy"] = write_atomic(fs, f"{root}/projection.npy", write)
        meta = {
            "format": REFERENCE_FORMAT,
            "version": REFERENCE_VERSION,
            "k_lof": self.k_lof,
            "k_rarity": self.k_rarity,
            "rows": self.index.n,
            "dims": self.index.dim,
            "index": self.index.config(),
            "accuracy": self.accuracy,
            "files": files,
        }
        write_atomic(fs, f"{root}/meta.json", json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, url: str, storage_options: dict | None = None, device: str = "auto") -> ReferenceSet:
        """Read a set written by `save`, checking every file against the sizes and hashes in meta.json."""
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        meta_path = f"{root}/meta.json"
        if not fs.exists(meta_path):
            raise MissingFileError(f"no reference set at {url} (meta.json missing): build and save one first")
        try:
            meta = json.loads(fs.cat_file(meta_path))
            meta = meta if isinstance(meta, dict) else {}
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(f"{url}/meta.json is not valid JSON ({err}; truncated?): rebuild the reference set "
                             "(`minority-synth build-reference --overwrite`)") from None
        old_exact = meta.get("version") == 1 and meta.get("index", {}).get("kind") == "exact"
        if meta.get("format") != REFERENCE_FORMAT or (meta.get("version") != REFERENCE_VERSION and not old_exact):
            raise InputError(
                f"{url} holds format {meta.get('format')!r} version {meta.get('version')!r}, "
                f"this code reads {REFERENCE_FORMAT!r} version {REFERENCE_VERSION}: rebuild the reference set"
            )
        try:
            blobs = {name: _read_checked(fs, f"{root}/{name}", expect, url) for name, expect in meta["files"].items()}
            arrays = {name: np.load(io.BytesIO(blobs.pop(f"{name}.npy")), allow_pickle=False) for name in _ARRAYS}
            lists = np.load(io.BytesIO(blobs["lists.npy"]), allow_pickle=False) if "lists.npy" in blobs else None
            projection = np.load(io.BytesIO(blobs["projection.npy"]), allow_pickle=False) if "projection.npy" in blobs else None
            k_lof, k_rarity = int(meta["k_lof"]), int(meta["k_rarity"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{url} is incomplete or unreadable ({type(err).__name__}: {err}): rebuild the reference set") from None
        # Finite, consistent arrays (checked once here, a scan of each): a NaN lrd makes every LOF NaN.
        n = len(arrays["features"])
        k_min = max(k_lof, k_rarity, 1)
        shapes = {"features": arrays["features"].ndim == 2 and n > k_min, "lrd": arrays["lrd"].shape == (n,),
                  "knn_distances": arrays["knn_distances"].ndim == 2 and arrays["knn_distances"].shape[0] == n and arrays["knn_distances"].shape[1] >= k_min,
                  "knn_indices": arrays["knn_indices"].shape == arrays["knn_distances"].shape and arrays["knn_indices"].dtype.kind in "iu"}
        problems = [f"{name}.npy has shape {arrays[name].shape} ({arrays[name].dtype}), inconsistent with {n} rows and k={k_min}" for name, ok in shapes.items() if not ok]
        if not problems:
            for name in ("features", "knn_distances", "lrd"):
                if arrays[name].dtype.kind != "f" or not np.isfinite(arrays[name]).all():
                    problems.append(f"{name}.npy holds non-finite values (NaN or inf)")
            if not (arrays["lrd"] > 0).all() or not (arrays["knn_distances"] >= 0).all():
                problems.append("lrd.npy or knn_distances.npy holds negative values")
            if ((arrays["knn_indices"] < 0) | (arrays["knn_indices"] >= n)).any():
                problems.append(f"knn_indices.npy points outside the {n} rows")
        if problems:
            raise InputError(f"{problems[0]} in {url}: the reference set is corrupt; rebuild it (`minority-synth build-reference --overwrite`)")
        knn = KnnIndex.restore(arrays["features"], meta["index"], lists, device, projection)
        dist = arrays["knn_distances"].astype(np.float64)
        return cls(knn, dist, arrays["knn_indices"], arrays["lrd"], k_lof, k_rarity, meta.get("accuracy"))


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def _rel_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got / want − 1| per sample; 0 where both are NaN (out of support), inf where only one is."""
    both_nan = np.isnan(got) & np.isnan(want)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(got - want) / np.abs(want)
    err[(got == want) | both_nan] = 0.0
    return np.where(np.isnan(err), np.inf, err)


def _reachability_density(dist: np.ndarray, ids: np.ndarray, k_distance: np.ndarray) -> np.ndarray:
    """lrd = 1 / (mean_b max(k-distance(b), d(a, b)) + 1e-10), in float64, by row blocks."""
    out = np.empty(len(dist), dtype=np.float64)
    for start in range(0, len(dist), _DENSITY_ROW_BLOCK):
        sl = slice(start, start + _DENSITY_ROW_BLOCK)
        reach = np.maximum(dist[sl].astype(np.float64), k_distance[ids[sl]].astype(np.float64))
        out[sl] = 1.0 / (reach.mean(axis=1) + LRD_EPS)
    return out


def _read_checked(fs: fsspec.AbstractFileSystem, path: str, expect: dict[str, Any], url: str) -> bytes:
    """One saved file's bytes, refused unless they match the size and sha256 meta.json recorded."""
    data = fs.cat_file(path)
    if len(data) != expect["bytes"] or hashlib.sha256(data).hexdigest() != expect["sha256"]:
        raise InputError(
            f"{os.path.basename(path)} in {url} does not match meta.json (changed after saving, or a save "
            "was interrupted): save the reference set again"
        )
    return data
