"""Set-level fidelity and diversity from k-NN balls (docs/DESIGN.md §5): precision/recall
(Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Ball membership is answered by exact range queries in bounded batches, so no N×M distance
matrix is ever held.
"""

from __future__ import annotations

import numpy as np

from minority_core.metrics.knn import KnnIndex, as_matrix, check_k


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
    """Both sets as float32 matrices of the same width, with k valid for the smaller one."""
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
