"""KnnIndex (exact and certified IVF) against brute-force numpy (float64) on random and Gaussian-mixture data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from minority_core.metrics import exact as exact_module
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


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and lists much smaller than the data, so every path (several lists, query blocks,
    query chunks, IVF rounds) runs at test sizes."""
    monkeypatch.setattr(exact_module, "REF_BLOCK", 256)
    monkeypatch.setattr(exact_module, "REF_TILE", 64)  # several tiles per list, several lists per merge
    monkeypatch.setattr(exact_module, "QUERY_BLOCK", 64)
    monkeypatch.setattr(exact_module, "QUERY_CHUNK", 200)
    monkeypatch.setattr(exact_module, "LB_ELEMENTS", 2000)
    monkeypatch.setattr(knn_module, "IVF_LIST_SIZE", 100)


@pytest.mark.parametrize("kind", ["exact", "ivf"])
@pytest.mark.parametrize("data", sorted(DATASETS))
def test_search_matches_brute_force(data, kind, small_blocks):
    x = DATASETS[data](1500, 16, seed=1)
    q = DATASETS[data](300, 16, seed=2)
    index = KnnIndex.build(x, kind=kind)
    dist, ids = index.search(q, 10)
    assert index.kind == kind and (index.lists is None) == (kind == "exact")
    assert_same_neighbours(dist, ids, q, x, *brute_knn(q, x, 10))


@pytest.mark.parametrize("kind", ["exact", "ivf"])
@pytest.mark.parametrize("data", sorted(DATASETS))
def test_self_search_matches_brute_force(data, kind, small_blocks):
    x = DATASETS[data](1200, 12, seed=3)
    dist, ids = KnnIndex.build(x, kind=kind).self_search(7)
    assert_same_neighbours(dist.astype(np.float32), ids, x, x, *brute_knn(x, x, 7, exclude_self=True), exclude_self=True)


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


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_self_search_keeps_duplicates_like_sklearn(kind, small_blocks):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(400, 6)).astype(np.float32)
    x = np.concatenate([base, base[:50], np.repeat(base[60:61], 39, axis=0)])  # pairs and a 40-copy clump
    k = 5
    dist, ids = KnnIndex.build(x, kind=kind).self_search(k)
    ref_dist, _ = NearestNeighbors(n_neighbors=k, algorithm="kd_tree").fit(x.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6, atol=1e-7)
    assert not (ids == np.arange(len(x))[:, None]).any()  # never itself ...
    assert dist[0, 0] == 0.0 and ids[0, 0] == 400  # ... but its duplicate, at exactly 0
    assert (dist[60] == 0).all()  # the clump: all k neighbours are copies


def test_pool_overflow_is_widened_not_cut(small_blocks):
    """A query with more exact ties than its pool holds (60 copies at one distance, k = 3)
    still gets exact neighbours: the pool is widened, never silently cut."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(size=(500, 5)), np.zeros((60, 5))]).astype(np.float32)
    q = np.full((3, 5), 0.01, dtype=np.float32)
    dist, ids = KnnIndex.build(x, kind="exact").search(q, 3)
    np.testing.assert_allclose(dist, np.sqrt(5 * 0.01**2), rtol=1e-6)
    assert (ids >= 500).all()


def test_far_query_is_exact_with_ivf(small_blocks):
    """Queries far from every list scan as many lists as their bound needs: still exact."""
    x = mixture(2000, 8, seed=8)
    q = np.concatenate([x[:5] + 500.0, x[5:10] * 30.0, -x[10:15]])
    dist, ids = KnnIndex.build(x, kind="ivf").search(q, 4)
    assert_same_neighbours(dist, ids, q, x, *brute_knn(q, x, 4))


def test_ivf_round_trips(small_blocks):
    x = random_normal(2000, 8, seed=8)
    index = KnnIndex.build(x, kind="ivf")
    restored = KnnIndex.restore(x, index.config(), index.lists, device="cpu")
    assert restored.kind == "ivf" and restored.engine.n_lists == index.engine.n_lists > 1
    q = random_normal(50, 8, seed=9)
    for a, b in zip(index.search(q, 5), restored.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_auto_uses_budget(monkeypatch):
    x = random_normal(3000, 8, seed=10)
    assert KnnIndex.build(x, kind="auto").kind == "exact"
    monkeypatch.setattr(knn_module, "EXACT_WORK_BUDGET", 1e6)
    assert KnnIndex.build(x, kind="auto", expected_queries=10).kind == "exact"  # 3000·10·8 < 1e6
    assert KnnIndex.build(x, kind="auto").kind == "ivf"


@pytest.mark.parametrize("kind", ["exact", "ivf"])
@pytest.mark.parametrize("inclusive", [False, True])
def test_ball_pairs_match_brute_force(inclusive, kind, small_blocks):
    x = mixture(1000, 10, seed=11)
    q = np.concatenate([mixture(200, 10, seed=12), x[:20]])  # some queries exactly on indexed rows
    radii = np.random.default_rng(13).uniform(0, 3, size=len(x))
    radii[:5] = 0.0
    full = pairwise(q, x)
    radii[5:10] = full[200 + np.arange(5, 10) - 5, np.arange(5, 10) + 1].astype(np.float32)  # balls through a point
    index = KnnIndex.build(x, kind=kind)
    pairs = set()
    for rows, ids in index.ball_pairs(q, radii, inclusive=inclusive):
        pairs.update(zip(rows.tolist(), ids.tolist()))
    inside = full <= radii[None, :] if inclusive else full < radii[None, :]
    assert pairs == set(zip(*[a.tolist() for a in np.nonzero(inside)]))
    assert len(pairs) > 100


def test_ball_boundary_is_inclusive_or_strict():
    x = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    index = KnnIndex.build(x, kind="exact")
    radii = np.array([1.0, 1.0, 1.0])
    strict = sorted(ids.tolist() for _, ids in index.ball_pairs(np.array([[0.0]]), radii))
    inclusive = sorted(ids.tolist() for _, ids in index.ball_pairs(np.array([[0.0]]), radii, inclusive=True))
    assert sum(strict, []) == [0] and sorted(sum(inclusive, [])) == [0, 1]


@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:0"])
def test_gpu_request_without_gpu_is_a_clear_error(device):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    message = f"device='{device}' but torch sees no CUDA device \\(.*\\): use device='cpu' or 'auto'"
    with pytest.raises(ValueError, match=message):
        KnnIndex.build(random_normal(50, 4, seed=0), kind="exact", device=device)
    x = random_normal(300, 4, seed=0)
    auto = KnnIndex.build(x, kind="exact", device="auto")  # auto falls back quietly, same answers
    assert not auto.on_gpu and auto.device.type == "cpu"
    np.testing.assert_array_equal(auto.search(x[:20], 5)[1], KnnIndex.build(x, kind="exact", device="cpu").search(x[:20], 5)[1])


def test_lowered_matmul_precision_is_refused():
    """bf16/TF32 matmuls would void the float32 error bound: refused with the fix, not wrong answers."""
    torch.set_float32_matmul_precision("medium")
    try:
        with pytest.raises(ValueError, match="set_float32_matmul_precision"):
            KnnIndex.build(random_normal(50, 4, seed=0), kind="exact")
    finally:
        torch.set_float32_matmul_precision("highest")


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
        (lambda: KnnIndex.build(X, device="cuda:x"), "device='cuda:x' is not one of auto, cpu, gpu, cuda or cuda:N"),
        (lambda: KnnIndex("exact", X, None, device="tpu"), "device='tpu' is not one of"),
        (lambda: KnnIndex.build(X).search(np.zeros((3, 5)), 2), "5 dims but the reference has 4"),
        (lambda: KnnIndex.build(X).search(np.full((2, 4), np.nan), 2), "queries contains NaN"),
        (lambda: KnnIndex.build(X).search(X, 0), "k=0 must be at least 1"),
        (lambda: KnnIndex.build(X).search(X, 31), "k=31 exceeds the 30 indexed rows"),
        (lambda: KnnIndex.build(X).self_search(30), "not its own neighbour"),
        (lambda: KnnIndex.build(X).search(X, 2.5), "must be an integer"),
        (lambda: KnnIndex.build(X).ball_pairs(X[:2], [1.0]), "radii must be 30"),
        (lambda: KnnIndex.build(X).ball_pairs(X[:1], -np.ones(30)), "non-negative"),
        (lambda: KnnIndex.build(X, kind="hnsw"), "kind='hnsw' is not one of auto, exact, ivf"),
        (lambda: KnnIndex.restore(X, {"kind": "ivf", "lists": 2}), "needs the list of each"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()
