"""Metrics against independent oracles: sklearn's LOF, and brute-force numpy versions of the
docs/DESIGN.md §5 definitions and of the papers' formulas, written here from full distance matrices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from sklearn.neighbors import LocalOutlierFactor

from minority_core.metrics import (
    ReferenceSet,
    density_coverage,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    prdc,
    precision_recall,
)
from minority_core.metrics import exact as exact_module
from minority_core.metrics import knn as knn_module
from minority_core.metrics.knn import KnnIndex

# ---------------------------------------------------------------- data and oracles


def mixture(n: int, d: int, seed: int, components: int = 6, sample_seed: int | None = None) -> np.ndarray:
    """Gaussian mixture (unequal weights and scales) fixed by `seed`; rows drawn with `sample_seed`."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(components, d))
    scales = rng.uniform(0.3, 1.5, size=components)
    weights = rng.dirichlet(np.full(components, 0.7))
    rng = rng if sample_seed is None else np.random.default_rng(sample_seed)
    labels = rng.choice(components, size=n, p=weights)
    return (centers[labels] + rng.normal(size=(n, d)) * scales[labels, None]).astype(np.float32)


def random_normal(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def with_duplicates(x: np.ndarray) -> np.ndarray:
    """Append copies: 40 rows duplicated once, one row 30 times (more copies than k_lof)."""
    return np.concatenate([x, x[:40], np.repeat(x[50:51], 30, axis=0)])


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    block = max(1, 2**22 // (len(b) * a.shape[1]))
    return np.concatenate([np.sqrt(((a[i : i + block, None] - b[None]) ** 2).sum(-1)) for i in range(0, len(a), block)])


def kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance to the k-th neighbour, self excluded (by index: duplicates count at 0)."""
    dist = pairwise(x, x)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, k - 1]


def brute_scores(ref: np.ndarray, q: np.ndarray, k_avg: int, k_rarity: int) -> tuple[np.ndarray, np.ndarray]:
    """docs/DESIGN.md §5 AvgkNN and Rarity (NaN out of support) from the full distance matrix."""
    dist = pairwise(q, ref)
    avgknn = np.sort(dist, axis=1)[:, :k_avg].mean(axis=1)
    radius = kth_radius(ref, k_rarity)
    inside = dist < radius[None, :]
    rarity = np.where(inside, radius[None, :], np.inf).min(axis=1)
    return avgknn, np.where(inside.any(axis=1), rarity, np.nan)


def sklearn_lof(ref: np.ndarray, q: np.ndarray, k: int, algorithm: str = "auto") -> np.ndarray:
    model = LocalOutlierFactor(n_neighbors=k, novelty=True, algorithm=algorithm).fit(ref.astype(np.float64))
    return -model.score_samples(q.astype(np.float64))


def queries_with_outliers(ref: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Jittered reference rows, points between clusters, and far-away points (out of support)."""
    rng = np.random.default_rng(seed)
    d = ref.shape[1]
    near = ref[rng.choice(len(ref), n // 2)] + rng.normal(0, 0.3, size=(n // 2, d))
    between = (ref[rng.choice(len(ref), n // 4)] + ref[rng.choice(len(ref), n // 4)]) / 2
    far = rng.normal(0, 1, size=(n - n // 2 - n // 4, d)) + 40.0
    return np.concatenate([near, between, far]).astype(np.float32)


# ---------------------------------------------------------------- ReferenceSet scores


@pytest.mark.parametrize(
    "ref, algorithm",
    [
        (random_normal(1200, 16, seed=1), "auto"),
        (mixture(1500, 32, seed=2), "auto"),
        (with_duplicates(mixture(800, 6, seed=3)), "kd_tree"),  # kd-tree distances are exact, like ours
    ],
    ids=["random", "mixture", "duplicates"],
)
def test_scores_match_sklearn_lof_and_brute_force(ref, algorithm):
    q = queries_with_outliers(ref, 300, seed=4)
    if algorithm == "kd_tree":  # also score queries sitting exactly on duplicated rows
        q = np.concatenate([q, ref[[0, 50, 60]]])
    rs = ReferenceSet.build(ref, k_lof=20, k_rarity=3, index="exact")
    scores = rs.score(q, k_avg=5)

    np.testing.assert_allclose(scores["lof"], sklearn_lof(ref, q, 20, algorithm), rtol=1e-4)
    avgknn, rarity = brute_scores(ref, q, k_avg=5, k_rarity=3)
    np.testing.assert_allclose(scores["avgknn"], avgknn, rtol=1e-5)
    np.testing.assert_array_equal(scores["in_support"], ~np.isnan(rarity))
    np.testing.assert_allclose(scores["rarity"], rarity, rtol=1e-5)  # NaNs must line up too
    assert scores["in_support"].dtype == bool
    assert not scores["in_support"][225:300].any()  # the far queries
    assert scores["in_support"][:150].mean() > 0.5


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_rarity_ball_scan_is_exact(monkeypatch, kind):
    """Queries whose rarity the kNN answer cannot settle go through the per-query ball scan,
    which looks only at balls with radius between the query's k-th distance and its best so far."""
    monkeypatch.setattr(exact_module, "REF_BLOCK", 128)  # many radius-sorted blocks to stop early in
    monkeypatch.setattr(knn_module, "IVF_LIST_SIZE", 100)
    ref = mixture(1000, 8, seed=5)
    q = queries_with_outliers(ref, 400, seed=6)
    calls = []
    original = KnnIndex.ball_pairs

    def spy(self, queries, radii, inclusive=False, lo=None, hi=None):
        calls.append(len(queries))
        return original(self, queries, radii, inclusive, lo, hi)

    monkeypatch.setattr(KnnIndex, "ball_pairs", spy)
    scores = ReferenceSet.build(ref, k_lof=2, k_rarity=1, index=kind).score(q, k_avg=1)
    assert calls and 0 < calls[-1] < len(q)
    _, rarity = brute_scores(ref, q, k_avg=1, k_rarity=1)
    np.testing.assert_allclose(scores["rarity"], rarity, rtol=1e-6)


def test_reference_arrays_match_sklearn_fit():
    ref = with_duplicates(mixture(600, 5, seed=7))
    rs = ReferenceSet.build(ref, k_lof=10, k_rarity=3, index="exact")
    model = LocalOutlierFactor(n_neighbors=10, novelty=True, algorithm="kd_tree").fit(ref.astype(np.float64))
    np.testing.assert_allclose(rs.knn_distances[:, :10], model._distances_fit_X_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rs.lrd, model._lrd, rtol=1e-5)
    np.testing.assert_allclose(rs.radii, kth_radius(ref, 3), rtol=1e-6)


def test_ivf_reference_set_gives_the_exact_scores_and_records_it(monkeypatch):
    monkeypatch.setattr(knn_module, "IVF_LIST_SIZE", 200)
    ref = mixture(3000, 16, seed=8)
    q = queries_with_outliers(ref, 400, seed=9)
    exact = ReferenceSet.build(ref, index="exact").score(q)
    ivf_set = ReferenceSet.build(ref, index="ivf")
    assert ivf_set.index.kind == "ivf" and ivf_set.index.engine.n_lists == 15
    for key, value in ivf_set.score(q).items():
        np.testing.assert_allclose(value, exact[key], rtol=1e-12)
    acc = ivf_set.accuracy
    assert acc["checked_samples"] == 1000 and acc["share_within_1pct"] == 1.0
    assert acc["max_rel_error"] == {"avgknn": 0.0, "lof": 0.0, "rarity": 0.0}


# ---------------------------------------------------------------- save / load


def assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_save_load_local(tmp_path, kind):
    ref = mixture(700, 8, seed=10)
    q = queries_with_outliers(ref, 100, seed=11)
    rs = ReferenceSet.build(ref, k_lof=15, k_rarity=4, index=kind)
    for url in (str(tmp_path / "ref"), f"file://{tmp_path}/ref2", f"memory://{tmp_path.name}/ref"):
        rs.save(url)
        loaded = ReferenceSet.load(url)
        assert (loaded.k_lof, loaded.k_rarity, loaded.index.kind) == (15, 4, kind)
        assert loaded.accuracy == rs.accuracy and loaded.accuracy["checked_samples"] == (700 if kind == "ivf" else 0)
        assert_same_scores(rs.score(q), loaded.score(q))
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == sorted(  # no temporaries left
        ["meta.json", "features.npy", "knn_distances.npy", "knn_indices.npy", "lrd.npy"]
        + (["lists.npy"] if kind != "exact" else [])
    )


def test_save_load_moto_s3(s3_bucket):
    bucket, options = s3_bucket
    ref = mixture(700, 8, seed=12)
    q = queries_with_outliers(ref, 100, seed=13)
    for kind in ("exact", "ivf"):
        rs = ReferenceSet.build(ref, index=kind)
        url = f"{bucket}/refs/{kind}"
        rs.save(url, storage_options=options)
        loaded = ReferenceSet.load(url, storage_options=options)
        assert loaded.index.kind == kind and np.array_equal(loaded.index.lists, rs.index.lists)
        assert_same_scores(rs.score(q), loaded.score(q))


def test_load_refuses_missing_or_altered_sets(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json missing"):
        ReferenceSet.load(str(tmp_path / "nothing"))
    rs = ReferenceSet.build(random_normal(100, 4, seed=14), k_lof=5)
    rs.save(str(tmp_path / "ref"))
    np.save(tmp_path / "ref" / "lrd.npy", np.zeros(100))
    with pytest.raises(ValueError, match="lrd.npy .*does not match meta.json"):
        ReferenceSet.load(str(tmp_path / "ref"))


# ---------------------------------------------------------------- precision/recall, density/coverage


def brute_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """The papers' formulas from full matrices: P/R with d <= radius, D/C with d < radius."""
    cross = pairwise(real, fake)  # real × fake
    r_pr, f_pr = kth_radius(real, k_pr), kth_radius(fake, k_pr)
    r_dc = kth_radius(real, k_dc)
    return {
        "precision": float((cross <= r_pr[:, None]).any(axis=0).mean()),
        "recall": float((cross.T <= f_pr[:, None]).any(axis=0).mean()),
        "density": float((cross < r_dc[:, None]).sum() / (k_dc * len(fake))),
        "coverage": float((cross.min(axis=1) < r_dc).mean()),
    }


@pytest.mark.parametrize(
    "real, fake",
    [
        (random_normal(800, 10, seed=15), random_normal(600, 10, seed=16) * 1.3 + 0.2),
        (mixture(900, 12, seed=17), mixture(700, 12, seed=17, sample_seed=18) * 1.1),
        (with_duplicates(mixture(500, 4, seed=19)), with_duplicates(mixture(400, 4, seed=19) + 0.1)),
    ],
    ids=["random", "mixture", "duplicates"],
)
@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_prdc_match_brute_force(real, fake, kind, monkeypatch):
    monkeypatch.setattr(exact_module, "REF_BLOCK", 128)  # several blocks
    monkeypatch.setattr(knn_module, "IVF_LIST_SIZE", 100)
    got = precision_recall(real, fake, k=3, index=kind) | density_coverage(real, fake, k=5, index=kind)
    want = brute_prdc(real, fake, k_pr=3, k_dc=5)
    assert got == pytest.approx(want, abs=1e-12)
    assert prdc(real, fake, k_pr=3, k_dc=5, index=kind) == got
    assert 0 < got["precision"] < 1 or 0 < got["recall"] < 1


def test_prdc_boundary_conventions():
    """A fake exactly on a real ball's boundary counts for precision (<=) but not density (<)."""
    real = np.array([[0.0], [1.0], [5.0], [6.0]], dtype=np.float32)  # every 1-NN radius is 1
    fake = np.array([[2.0], [10.0]], dtype=np.float32)  # 2 is on the boundary of the ball at 1 only
    assert precision_recall(real, fake, k=1)["precision"] == 0.5
    assert density_coverage(real, fake, k=1) == {"density": 0.0, "coverage": 0.0}


# ---------------------------------------------------------------- Fréchet distance


def spd(d: int, seed: int, rank: int | None = None) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(rank or 2 * d, d))
    return a.T @ a / len(a)


def frechet_oracle(mu1, s1, mu2, s2) -> float:
    """tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½), a symmetric PSD root computed with eigh."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_diagonal_analytic():
    rng = np.random.default_rng(20)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    analytic = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(analytic, rel=1e-10)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-10)


def test_frechet_matches_scipy_and_eigen_oracles():
    mu1, mu2 = np.zeros(20), np.full(20, 0.5)
    s1, s2 = spd(20, seed=21), spd(20, seed=22)
    scipy_value = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(scipy_value, rel=1e-8)
    assert got == pytest.approx(frechet_oracle(mu1, s1, mu2, s2), rel=1e-8)
    assert got == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_singular_covariances_use_offset_fallback():
    """Rank-deficient covariances (fewer samples than dims) still give a finite, close answer."""
    s1, s2 = spd(30, seed=23, rank=5), spd(30, seed=24, rank=5)
    mu = np.zeros(30)
    got = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(frechet_oracle(mu, s1, mu, s2), rel=1e-3, abs=1e-3)


def test_feature_statistics_streaming_and_precision():
    x = random_normal(3000, 5, seed=25).astype(np.float64) * 0.01 + 1e4  # large offset, small spread
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)
    mu_s, sigma_s = feature_statistics(iter([x[:700], x[700:701], x[701:]]))
    np.testing.assert_allclose(mu_s, mu, rtol=1e-13)
    np.testing.assert_allclose(sigma_s, sigma, rtol=1e-8, atol=1e-14)


def test_fid_from_features_matches_oracle():
    real = mixture(2000, 8, seed=26).astype(np.float64)
    fake = mixture(1500, 8, seed=27).astype(np.float64)
    want = frechet_oracle(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert fid_from_features(real, fake) == pytest.approx(want, rel=1e-8)
    assert fid_from_features(real, real) == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- bad input

REF = random_normal(40, 3, seed=28)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ReferenceSet.build(REF, k_lof=40), "k_lof=40 needs more than 40 reference rows"),
        (lambda: ReferenceSet.build(REF, k_rarity=0), "k_rarity=0 must be at least 1"),
        (lambda: ReferenceSet.build(np.zeros((0, 3))), "features is empty"),
        (lambda: ReferenceSet.build(np.full((40, 3), np.inf)), "features contains NaN or inf"),
        (lambda: ReferenceSet.build(REF, k_lof=5).score(np.zeros((2, 4))), "queries has 4 dims but the reference has 3"),
        (lambda: ReferenceSet.build(REF, k_lof=5).score(np.array([[np.nan, 0, 0]])), "queries contains NaN"),
        (lambda: ReferenceSet.build(REF, k_lof=5).score(REF, k_avg=41), "k_avg=41 exceeds the 40"),
        (lambda: ReferenceSet.build(REF, k_lof=5).score(REF[0]), "queries must be a 2-D array"),
        (lambda: precision_recall(REF, np.zeros((5, 2))), "fake has 2 dims but the reference has 3"),
        (lambda: precision_recall(REF, REF[:3], k=3), "k=3 needs more than 3 reference rows"),
        (lambda: density_coverage(REF, np.zeros((0, 3))), "fake is empty"),
        (lambda: density_coverage(np.where(REF > 1.5, np.nan, REF), REF), "real contains NaN"),
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "sigma2 must be a 3×3"),
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.full((3, 3), np.nan)), "sigma2 contains NaN"),
        (lambda: frechet_distance(np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1 must be a non-empty 1-D"),
        (lambda: feature_statistics(REF[:1]), "needs at least 2"),
        (lambda: feature_statistics(iter([REF, np.zeros((2, 4))])), "features block 1 has 4 dims"),
        (lambda: fid_from_features(REF, np.zeros((5, 2))), "real has 3 dims but fake has 2"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()
