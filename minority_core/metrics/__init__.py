"""Sample-level and set-level metrics in a feature space, never with N×N memory; the
definitions live in docs/DESIGN.md §5.

Per sample, against a stored reference (`reference.ReferenceSet`): AvgkNN, LOF and Rarity, the
scores that tell a minority sample from a typical one. Per set: precision/recall and
density/coverage (`prdc`), and the Fréchet distance between Gaussian fits (`frechet`; FID when
the features are Inception pool3). All of them rest on `knn.KnnIndex` (exact answers from
blocked float32 GEMM with error bounds, `exact.py`, in torch). The images → features step
lives in `features/` and is not imported here.
"""

from minority_core.metrics.frechet import feature_statistics, fid_from_features, frechet_distance
from minority_core.metrics.prdc import density_coverage, prdc, precision_recall
from minority_core.metrics.reference import ReferenceSet

__all__ = [
    "ReferenceSet",
    "density_coverage",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "prdc",
    "precision_recall",
]
