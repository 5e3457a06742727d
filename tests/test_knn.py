"""KnnIndex against brute-force numpy (float64) on random and Gaussian-mixture data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from minority_core.metrics import knn as knn_module
from minority_core.metrics.knn import KnnIndex


def mixture(n: int, d: int, seed: int, components: int = 8) -> np.ndarray:
    """Gaussian mixture with unequal weights and scales (some components are minorities)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(components, d))
    scales = rng.uniform(0.3, 1.5, size=components)
    weights = rng.dirichlet(np.full(components, 0.7))
    labels = rng.choice(components, size=n, p=weights)
    return (centers[labels] + rng.normal(size=(n, d)) * scales[labels, None]).astype(np.float32)


def random_normal(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


DATASETS = {"random": random_normal, "mixture": mixture}


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Euclidean distances in float64 from direct differences, in row blocks."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    block = max(1, 2**22 // (len(b) * a.shape[1]))
    return np.concatenate(
        [np.sqrt(((a[i : i + block, None, :] - b[None]) ** 2).sum(-1)) for i in range(0, len(a), block)]
    )


def brute_knn(q: np.ndarray, x: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    dist = pairwise(q, x)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, ids, axis=1), ids


def assert_same_neighbours(dist, ids, q, x, ref_dist, ref_ids, exclude_self=False):
    """Distances equal; ids equal except where the true distances tie within float32 rounding."""
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-6)
    assert dist.dtype == np.float32 and ids.dtype == np.int64
    rows, cols = np.nonzero(ids != ref_ids)
    true = np.sqrt(((q[rows].astype(np.float64) - x[ids[rows, cols]].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_allclose(true, ref_dist[rows, cols], rtol=1e-5, atol=1e-6)
    assert len(rows) <= 0.01 * ids.size  # only genuine near-ties
    if exclude_self:
        assert not (ids == np.arange(len(ids))[:, None]).any()
    assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all()  # distinct per row


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_exact_search_matches_brute_force(data):
    x = DATASETS[data](1500, 16, seed=1)
    q = DATASETS[data](300, 16, seed=2)
    index = KnnIndex.build(x, kind="exact")
    dist, ids = index.search(q, 10, batch_size=97)  # several batches, one ragged
    assert index.kind == "exact" and index.measured_recall == 1.0
    assert_same_neighbours(dist, ids, q, x, *brute_knn(q, x, 10))


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_exact_self_search_matches_brute_force(data):
    x = DATASETS[data](1200, 12, seed=3)
    dist, ids = KnnIndex.build(x, kind="exact").self_search(7, batch_size=500)
    assert_same_neighbours(dist, ids, x, x, *brute_knn(x, x, 7, exclude_self=True), exclude_self=True)


def test_distances_are_euclidean_not_squared():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    dist, ids = KnnIndex.build(x, kind="exact").search(np.array([[0.0, 0.0]]), 3)
    np.testing.assert_allclose(dist[0], [0.0, 5.0, 10.0], atol=1e-6)
    assert ids[0].tolist() == [0, 1, 2]


def test_large_offset_data_keeps_exact_neighbours():
    """Features far from the origin (large norms) still give exact neighbours and distances."""
    x = random_normal(800, 32, seed=4) * 0.01 + 1000.0
    q = random_normal(100, 32, seed=5) * 0.01 + 1000.0
    dist, ids = KnnIndex.build(x, kind="exact").search(q, 5)
    assert_same_neighbours(dist, ids, q, x, *brute_knn(q, x, 5))


def test_self_search_keeps_duplicates_like_sklearn():
    rng = np.random.default_rng(6)
    base = rng.normal(size=(400, 6)).astype(np.float32)
    x = np.concatenate([base, base[:50], np.repeat(base[60:61], 9, axis=0)])  # pairs and a 10-copy clump
    k = 5
    dist, ids = KnnIndex.build(x, kind="exact").self_search(k)
    ref_dist, _ = NearestNeighbors(n_neighbors=k, algorithm="kd_tree").fit(x.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=1e-7)
    assert not (ids == np.arange(len(x))[:, None]).any()  # never itself ...
    assert dist[0, 0] == 0.0 and ids[0, 0] == 400  # ... but its duplicate, at exactly 0
    assert (dist[60] == 0).all()  # the clump: all k neighbours are copies


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_meets_recall_target(kind):
    x = mixture(4000, 24, seed=7)
    target, k = 0.95, 10
    index = KnnIndex.build(x, kind=kind, recall_target=target, tune_k=k)
    assert index.kind == kind and index.measured_recall >= target
    assert (index.nprobe if kind == "ivf" else index.ef_search) >= 1
    # Independent check on every row, not just the tuning sample.
    dist, _ = index.self_search(k)
    x64 = x.astype(np.float64)
    sq = (x64**2).sum(1)
    full = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x64 @ x64.T, 0))  # float64: ample here
    np.fill_diagonal(full, np.inf)
    true_kth = np.partition(full, k - 1, axis=1)[:, k - 1 : k]
    recall = np.mean(dist <= true_kth * (1 + 1e-6))
    assert recall >= target - 0.01
    # Returned distances are exact for the returned ids, and sorted.
    q = mixture(300, 24, seed=7)[:50] + 0.05
    d, i = index.search(q, k)
    np.testing.assert_allclose(d, np.sqrt(((q[:, None].astype(float) - x[i].astype(float)) ** 2).sum(-1)), rtol=1e-6)
    assert (np.diff(d, axis=1) >= 0).all()


def test_ivf_reaches_exact_at_full_probe_and_round_trips():
    x = random_normal(2000, 8, seed=8)
    index = KnnIndex.build(x, kind="ivf", recall_target=1.0, tune_k=5)
    assert index.measured_recall == pytest.approx(1.0)
    buf = io.BytesIO()
    index.write_faiss(buf)
    restored = KnnIndex.restore(x, index.config(), buf.getvalue(), device="cpu")
    assert restored.nprobe == index.nprobe and restored.kind == "ivf"
    q = random_normal(50, 8, seed=9)
    for a, b in zip(index.search(q, 5), restored.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_auto_uses_budget(monkeypatch):
    x = random_normal(3000, 8, seed=10)
    assert KnnIndex.build(x, kind="auto").kind == "exact"
    monkeypatch.setattr(knn_module, "EXACT_WORK_BUDGET", 1e6)
    assert KnnIndex.build(x, kind="auto", expected_queries=10).kind == "exact"  # 3000·10·8 < 1e6
    assert KnnIndex.build(x, kind="auto").kind == "ivf"


@pytest.mark.parametrize("inclusive", [False, True])
def test_range_search_matches_brute_force(monkeypatch, inclusive):
    monkeypatch.setattr(knn_module, "RANGE_RESULT_BUDGET", 5000)  # force many small batches
    x = mixture(1000, 10, seed=11)
    q = mixture(200, 10, seed=12)
    radii = np.random.default_rng(13).uniform(0, 3, size=len(q))
    radii[:5] = 0.0
    index = KnnIndex.build(x, kind="exact")
    pairs = set()
    for rows, ids, dist in index.range_search(q, radii, inclusive=inclusive):
        assert len(rows) <= 5000
        true = np.sqrt(((q[rows].astype(np.float64) - x[ids].astype(np.float64)) ** 2).sum(-1))
        np.testing.assert_allclose(dist, true, rtol=1e-6, atol=1e-7)
        pairs.update(zip(rows.tolist(), ids.tolist()))
    full = pairwise(q, x)
    inside = full <= radii[:, None] if inclusive else full < radii[:, None]
    assert pairs == set(zip(*[a.tolist() for a in np.nonzero(inside)]))


def test_range_search_boundary_is_inclusive_or_strict():
    x = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    index = KnnIndex.build(x, kind="exact")
    strict = [ids.tolist() for _, ids, _ in index.range_search(np.array([[0.0]]), [1.0])]
    inclusive = [ids.tolist() for _, ids, _ in index.range_search(np.array([[0.0]]), [1.0], inclusive=True)]
    assert sorted(sum(strict, [])) == [0] and sorted(sum(inclusive, [])) == [0, 1]


def test_gpu_request_without_gpu_is_a_clear_error():
    if knn_module.faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no GPU"):
        KnnIndex.build(random_normal(50, 4, seed=0), kind="exact", device="gpu")


X = random_normal(30, 4, seed=14)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: KnnIndex.build(X[0]), "2-D"),
        (lambda: KnnIndex.build(np.zeros((0, 4))), "empty"),
        (lambda: KnnIndex.build(np.zeros((5, 0))), "empty"),
        (lambda: KnnIndex.build(np.where(np.arange(120).reshape(30, 4) == 37, np.nan, X)), "NaN or inf .*row 9"),
        (lambda: KnnIndex.build(np.where(np.arange(120).reshape(30, 4) == 5, np.inf, X)), "NaN or inf .*row 1"),
        (lambda: KnnIndex.build(X, kind="kd"), "kind='kd'"),
        (lambda: KnnIndex.build(X, device="tpu"), "device='tpu'"),
        (lambda: KnnIndex.build(X, recall_target=1.5), "recall_target"),
        (lambda: KnnIndex.build(X).search(np.zeros((3, 5)), 2), "5 dims but the reference has 4"),
        (lambda: KnnIndex.build(X).search(np.full((2, 4), np.nan), 2), "queries contains NaN"),
        (lambda: KnnIndex.build(X).search(X, 0), "k=0 must be at least 1"),
        (lambda: KnnIndex.build(X).search(X, 31), "k=31 exceeds the 30 indexed rows"),
        (lambda: KnnIndex.build(X).self_search(30), "not its own neighbour"),
        (lambda: KnnIndex.build(X).search(X, 2.5), "must be an integer"),
        (lambda: next(KnnIndex.build(X).range_search(X[:2], [1.0])), "radii must be 2"),
        (lambda: next(KnnIndex.build(X).range_search(X[:1], [-1.0])), "non-negative"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()
