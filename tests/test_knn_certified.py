"""The IVF path's per-sample answers against independent oracles (brute-force numpy, sklearn LOF).

The issue's tolerance is "each sample within 1 % of exact for >= 99 % of samples, the rest
detected"; the certified lists give the exact values, so the tests hold every sample to float
rounding (1e-6), which implies it, on clustered, isotropic and low-intrinsic-dimension data, and
on queries far from all data (which must scan as far as their bound needs, not stop at nprobe).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from minority_core.metrics import ReferenceSet, prdc
from minority_core.metrics import exact as exact_module
from minority_core.metrics import knn as knn_module


def clustered(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Well-separated clusters of unequal size and width (list bounds prune across clusters)."""
    centers = rng.normal(0, 6, size=(12, d))
    labels = rng.choice(12, size=n, p=rng.dirichlet(np.full(12, 0.8)))
    return centers[labels] + rng.normal(size=(n, d)) * rng.uniform(0.3, 1.5, size=12)[labels, None]


def isotropic(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """One Gaussian: no cluster structure, every direction matters (bounds prune least)."""
    return rng.normal(size=(n, d))


def low_dimensional(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Points near a 3-dim subspace plus a little noise, as network features often are."""
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0]
    return rng.normal(size=(n, 3)) * 4 @ basis.T + 0.02 * rng.normal(size=(n, d))


DATA = {"clustered": clustered, "isotropic": isotropic, "low_dimensional": low_dimensional}


def brute(ref: np.ndarray, q: np.ndarray, k_avg: int, k_rarity: int) -> tuple[np.ndarray, np.ndarray]:
    """AvgkNN and Rarity (NaN out of support) from the full float64 distance matrices."""
    r64, q64 = ref.astype(np.float64), q.astype(np.float64)
    cross = np.sqrt(((q64[:, None] - r64[None]) ** 2).sum(-1))
    own = np.sqrt(((r64[:, None] - r64[None]) ** 2).sum(-1))
    np.fill_diagonal(own, np.inf)
    radius = np.sort(own, axis=1)[:, k_rarity - 1]
    inside = cross < radius[None]
    rarity = np.where(inside, radius[None], np.inf).min(axis=1)
    return np.sort(cross, axis=1)[:, :k_avg].mean(axis=1), np.where(inside.any(axis=1), rarity, np.nan)


def assert_scores_match_oracles(got: dict, ref: np.ndarray, q: np.ndarray) -> None:
    """AvgkNN (k=5) and Rarity (k=3) against brute force, LOF (k=10) against sklearn."""
    avgknn, rarity = brute(ref, q, 5, 3)
    lof = -LocalOutlierFactor(n_neighbors=10, novelty=True).fit(ref.astype(np.float64)).score_samples(q.astype(np.float64))
    np.testing.assert_allclose(got["avgknn"], avgknn, rtol=1e-6)
    np.testing.assert_allclose(got["lof"], lof, rtol=1e-4)
    np.testing.assert_array_equal(got["in_support"], ~np.isnan(rarity))
    np.testing.assert_allclose(got["rarity"], rarity, rtol=1e-6)


def queries(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Held-out-like samples (jittered rows), points between rows, and points far from everything."""
    d = ref.shape[1]
    near = ref[rng.choice(len(ref), 200)] + rng.normal(0, 0.2, size=(200, d))
    between = (ref[rng.choice(len(ref), 60)] + ref[rng.choice(len(ref), 60)]) / 2
    far = np.concatenate([rng.normal(0, 1, size=(10, d)) + 200.0, ref[:10] * 25.0])
    return np.concatenate([near, between, far]).astype(np.float32)


@pytest.fixture(autouse=True)
def small_lists(monkeypatch):
    monkeypatch.setattr(knn_module, "IVF_LIST_SIZE", 100)  # 20 lists at 2000 rows
    monkeypatch.setattr(exact_module, "QUERY_BLOCK", 64)


@pytest.mark.parametrize("shape", sorted(DATA))
def test_ivf_scores_every_sample_exactly(shape):
    rng = np.random.default_rng(sorted(DATA).index(shape))
    ref = DATA[shape](2000, 12, rng).astype(np.float32)
    q = queries(ref, rng)
    rs = ReferenceSet.build(ref, k_lof=10, k_rarity=3, index="ivf")
    assert rs.index.kind == "ivf" and rs.index.engine.n_lists == 20
    got = rs.score(q, k_avg=5)

    assert_scores_match_oracles(got, ref, q)
    assert not got["in_support"][-20:].any()  # the far queries: out of support, with exact AvgkNN above
    assert rs.accuracy["share_within_1pct"] == 1.0 and max(rs.accuracy["max_rel_error"].values()) == 0.0


def test_ivf_prdc_matches_exact_kind():
    rng = np.random.default_rng(5)
    real = clustered(1500, 8, rng).astype(np.float32)
    fake = (clustered(1200, 8, np.random.default_rng(5)) * 1.05 + 0.1).astype(np.float32)
    fake = np.concatenate([fake, fake[:5] + 300.0])  # a few fakes far from every real ball
    assert prdc(real, fake, index="ivf") == prdc(real, fake, index="exact")


def wide(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Wide features near a 10-dim subspace (as Inception features are), for the "pca" kind."""
    basis = np.linalg.qr(rng.normal(size=(d, 10)))[0]
    return (rng.normal(size=(n, 10)) * np.linspace(3, 0.5, 10)) @ basis.T + 0.05 * rng.normal(size=(n, d))


@pytest.mark.parametrize("dims", [3, 16])
def test_pca_kind_scores_every_sample_exactly(dims, monkeypatch, tmp_path):
    """The projected coarse search is certified per query: with 3 projected dims (far too few, so
    most queries are widened) and 16, every score equals the brute-force one, far queries included,
    and a saved set (projection.npy) scores the same after loading."""
    monkeypatch.setattr(knn_module, "PCA_DIMS", dims)
    rng = np.random.default_rng(11)
    ref = wide(1200, 96, rng).astype(np.float32)
    q = queries(ref, rng)
    rs = ReferenceSet.build(ref, k_lof=10, k_rarity=3, index="pca")
    assert rs.index.kind == "pca" and rs.index.projection.shape == (dims, 96)
    rs.index.engine.candidates_reranked = 0
    got = rs.score(q, k_avg=5)
    assert_scores_match_oracles(got, ref, q)
    if dims == 16:  # 16 projected dims cover the 10-dim data: few full vectors re-ranked
        assert rs.index.engine.candidates_reranked < len(q) * len(ref) / 4
    assert rs.accuracy["share_within_1pct"] == 1.0 and max(rs.accuracy["max_rel_error"].values()) == 0.0
    rs.save(str(tmp_path / "ref"))
    again = ReferenceSet.load(str(tmp_path / "ref")).score(q, k_avg=5)
    for key, value in got.items():
        np.testing.assert_array_equal(again[key], value)


def test_pca_kind_reranks_memory_mapped_vectors(tmp_path):
    """The full vectors may stay on disk: an index over np.load(mmap_mode="r") answers exactly."""
    rng = np.random.default_rng(12)
    ref = wide(900, 64, rng).astype(np.float32)
    np.save(tmp_path / "features.npy", ref)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    index = knn_module.KnnIndex.build(mapped, kind="pca")
    q = queries(ref, rng)
    dist, ids = index.search64(q, 4)
    cross = np.sqrt(((q.astype(np.float64)[:, None] - ref.astype(np.float64)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, np.sort(cross, axis=1)[:, :4], rtol=1e-6)
    assert not index.vectors.flags.owndata  # no copy of the mapped rows was made
