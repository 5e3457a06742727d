"""The Fréchet distance between Gaussian fits of two feature sets (docs/DESIGN.md §5): FID when the
features are Inception pool3, sFID with the spatial ones.

Statistics accumulate block by block (e.g. one block per shard), so a set never has to fit in
memory at once; the distance follows pytorch-fid's handling of near-singular covariances.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import linalg

from minority_core.errors import InputError
from minority_core.metrics.knn import as_matrix

_STATS_ROW_BLOCK = 65536  # rows per block when one array is accumulated: bounds the float64 copy


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
    for start in range(0, max(len(x), 1), _STATS_ROW_BLOCK):
        yield x[start : start + _STATS_ROW_BLOCK]


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


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (FID for Inception pool3 features)."""
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)
    if len(mu1) != len(mu2):
        raise InputError(f"real has {len(mu1)} dims but fake has {len(mu2)}: use the same feature extractor")
    return frechet_distance(mu1, sigma1, mu2, sigma2)


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
