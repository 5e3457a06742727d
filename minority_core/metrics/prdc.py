"""Set-level fidelity and diversity from k-NN balls (docs/DESIGN.md §5): precision/recall
(Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

`prdc` computes all four with one index and one self-kNN per set (the real set's k-NN radii for
both k values come from the same pass); `precision_recall` and `density_coverage` are its
halves.  Ball membership goes through `KnnIndex.ball_pairs`: the exact answers, whichever index
kind, float64 only for the pairs the float32 bound cannot settle, and no N×M matrix is held.
"""

from __future__ import annotations

import numpy as np

from minority_core.metrics.knn import KnnIndex, as_matrix, check_k


def prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5, index: str = "auto") -> dict[str, float]:
    """precision, recall (k_pr, membership d <= radius as the authors' code) and density,
    coverage (k_dc, membership d < radius as the authors' `prdc` code)."""
    return _compute(real, fake, k_pr, k_dc, index, want_pr=True, want_dc=True)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, index: str = "auto") -> dict[str, float]:
    """Kynkäänniemi et al. 2019.  precision: share of fake rows inside some real row's k-NN ball;
    recall: share of real rows inside some fake row's ball.  Radius = distance to the k-th
    neighbour, self excluded; inside means d <= radius, as in the authors' code."""
    return _compute(real, fake, k, None, index, want_pr=True, want_dc=False)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, index: str = "auto") -> dict[str, float]:
    """Naeem et al. 2020.  density = (1/kM) Σ_j Σ_i 1[fake_j ∈ B(real_i, NND_k(real_i))];
    coverage = (1/N) Σ_i 1[∃ j: fake_j ∈ B(real_i, NND_k(real_i))].  Ball membership is
    d < radius, as in the authors' `prdc` code."""
    return _compute(real, fake, None, k, index, want_pr=False, want_dc=True)


def _compute(
    real: np.ndarray, fake: np.ndarray, k_pr: int | None, k_dc: int | None, index: str, want_pr: bool, want_dc: bool
) -> dict[str, float]:
    real = as_matrix(real, "real")
    fake = as_matrix(fake, "fake", real.shape[1])
    for k in (k_pr, k_dc):
        if k is not None:
            check_k(k, min(len(real), len(fake)), "k", exclude_self=True)
    real_knn = KnnIndex.build(real, kind=index, expected_queries=len(real) + len(fake))
    real_dist, _ = real_knn.self_search(max(k for k in (k_pr, k_dc) if k is not None))
    out: dict[str, float] = {}
    if want_pr:
        fake_knn = KnnIndex.build(fake, kind=index, expected_queries=len(fake) + len(real))
        fake_dist, _ = fake_knn.self_search(k_pr)
        fake_in, _ = _ball_hits(real_knn, real_dist[:, k_pr - 1].copy(), fake, inclusive=True)
        real_in, _ = _ball_hits(fake_knn, fake_dist[:, k_pr - 1].copy(), real, inclusive=True)
        out |= {"precision": float(np.mean(fake_in > 0)), "recall": float(np.mean(real_in > 0))}
    if want_dc:
        fake_counts, real_counts = _ball_hits(real_knn, real_dist[:, k_dc - 1].copy(), fake, inclusive=False)
        out |= {"density": float(fake_counts.sum() / (k_dc * len(fake))), "coverage": float(np.mean(real_counts > 0))}
    return out


def _ball_hits(centers: KnnIndex, radii: np.ndarray, points: np.ndarray, inclusive: bool) -> tuple[np.ndarray, np.ndarray]:
    """For balls B(center_i, radius_i): how many balls contain each point, and how many points
    each ball contains."""
    per_point = np.zeros(len(points), dtype=np.int64)
    per_center = np.zeros(centers.n, dtype=np.int64)
    for rows, ids in centers.ball_pairs(points, radii, inclusive=inclusive):
        np.add.at(per_point, rows, 1)
        np.add.at(per_center, ids, 1)
    return per_point, per_center
