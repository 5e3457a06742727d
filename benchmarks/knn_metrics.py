"""AvgkNN + LOF + Rarity for Q queries against N reference rows: ours vs sklearn (docs/DESIGN.md §6).

Ours: `ReferenceSet.build` (index, self-kNN, radii, LOF densities) + `score` with the exact
index and with "auto" (IVF once exact search gets expensive).  sklearn: the way one would
write it with sklearn alone: `LocalOutlierFactor(novelty=True).fit(ref)`, then per query
`score_samples` (LOF), `kneighbors` (AvgkNN) and `radius_neighbors` up to the largest rarity
radius, filtered (Rarity); the rarity radii come from the LOF fit's own self-kNN, at no extra cost.

sklearn runs on `--sklearn-queries` queries and the time is scaled linearly to Q; where N is
above `--sklearn-fit-max` its fit (dominated by the N-row self-kNN) is timed on that many rows
of the self-kNN and scaled linearly to N.  Every scaled number is marked "extrapolated".

Memory: peak resident set (VmHWM from /proc/self/status, reset before each phase through
/proc/self/clear_refs) minus the resident set when the phase starts.  It sees FAISS's and
BLAS's native allocations, which tracemalloc would not.  The data arrays are allocated before
and not counted.

Data: isotropic mixture components by default (every direction matters: the hardest case for
IVF/HNSW); `--intrinsic-dim m` puts each component near an m-dim subspace, closer to real
network features.  `--no-exact` skips our exact index where it would take hours.

    python benchmarks/knn_metrics.py                       # issue defaults (a long run)
    python benchmarks/knn_metrics.py --refs 20000 --queries 5000 --dims 64
    python benchmarks/knn_metrics.py --refs 200000 --queries 20000 --dims 64 --intrinsic-dim 16 --no-exact
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401 - first: env defaults before faiss / torch (docs/DESIGN.md §7)
import numpy as np
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from minority_core.metrics import ReferenceSet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refs", type=int, nargs="+", default=[200_000, 1_000_000], help="reference set sizes N")
    p.add_argument("--queries", type=int, default=100_000, help="query count Q")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 512], help="feature dimensions d")
    p.add_argument("--components", type=int, default=32, help="Gaussian-mixture components")
    p.add_argument("--intrinsic-dim", type=int, default=None,
                   help="each component near a subspace of this dimension (default: isotropic, full d)")
    p.add_argument("--k-avg", type=int, default=5)
    p.add_argument("--k-lof", type=int, default=20)
    p.add_argument("--k-rarity", type=int, default=3)
    p.add_argument("--sklearn-queries", type=int, default=2000, help="queries sklearn really runs")
    p.add_argument("--sklearn-fit-max", type=int, default=50_000, help="largest N sklearn's LOF is really fitted on")
    p.add_argument("--no-exact", action="store_true", help="skip our exact index (hours at 1M rows on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ---------------------------------------------------------------- data


def mixture_model(d: int, components: int, intrinsic: int | None, rng: np.random.Generator) -> dict[str, Any]:
    """Centres spread over a few unit scales, unequal widths, Zipf-like weights (minority modes).
    With `intrinsic` < d each component lies near its own random `intrinsic`-dim subspace (plus
    5 % isotropic noise), as network features do; otherwise components are isotropic: the
    hardest case for approximate search."""
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    m = d if intrinsic is None or intrinsic >= d else intrinsic
    bases = None if m == d else np.stack([np.linalg.qr(rng.normal(size=(d, m)))[0] for _ in range(components)])
    return {
        "centers": rng.normal(0, 3.0, size=(components, d)).astype(np.float32),
        "scales": rng.uniform(0.5, 1.5, size=components).astype(np.float32),
        "weights": weights / weights.sum(),
        "bases": None if bases is None else (bases * np.sqrt(d / m)).astype(np.float32),  # same total variance
    }


def sample(model: dict[str, Any], n: int, rng: np.random.Generator, outliers: float = 0.0) -> np.ndarray:
    """n rows of the mixture, a share `outliers` of them from a much wider Gaussian; built in blocks."""
    d = model["centers"].shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        labels = rng.choice(len(model["weights"]), size=rows, p=model["weights"])
        if model["bases"] is None:
            block = rng.standard_normal((rows, d), dtype=np.float32)
        else:
            block = 0.05 * rng.standard_normal((rows, d), dtype=np.float32)
            for c in np.unique(labels):
                mine = labels == c
                low = rng.standard_normal((int(mine.sum()), model["bases"].shape[2]), dtype=np.float32)
                block[mine] += low @ model["bases"][c].T
        block *= model["scales"][labels, None]
        block += model["centers"][labels]
        wide = rng.random(rows) < outliers
        block[wide] = rng.normal(0, 8.0, size=(int(wide.sum()), d))
        out[start : start + rows] = block
    return out


# ---------------------------------------------------------------- measuring


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak RSS growth in MiB during the call)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (_status_kib("VmHWM") - before) / 1024


# ---------------------------------------------------------------- the two implementations


def ours(ref: np.ndarray, q: np.ndarray, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    def run() -> tuple[ReferenceSet, dict[str, np.ndarray], float]:
        t0 = time.perf_counter()
        rs = ReferenceSet.build(ref, k_lof=args.k_lof, k_rarity=args.k_rarity, index=kind)
        built = time.perf_counter() - t0
        return rs, rs.score(q, k_avg=args.k_avg), built

    (rs, scores, build_s), seconds, mib = measure(run)
    return {"set": rs, "scores": scores, "seconds": seconds, "build_s": build_s, "mib": mib}


def sklearn_scores(
    lof: LocalOutlierFactor | None, nn: NearestNeighbors, q: np.ndarray, radii: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """AvgkNN, LOF and Rarity with sklearn calls only.  Without a fitted LOF (fit extrapolated)
    only the dominant cost of `score_samples`, the k_lof-neighbour query, is run and timed."""
    if lof is not None:
        lof_scores = -lof.score_samples(q)
    else:
        nn.kneighbors(q, n_neighbors=args.k_lof)
        lof_scores = None
    dist, _ = nn.kneighbors(q, n_neighbors=args.k_avg)
    ball_dist, ball_ids = nn.radius_neighbors(q, radius=float(radii.max()))
    rarity = np.full(len(q), np.nan)
    for i, (d, ids) in enumerate(zip(ball_dist, ball_ids)):
        inside = d < radii[ids]
        if inside.any():
            rarity[i] = radii[ids[inside]].min()
    return {"avgknn": dist.mean(axis=1), "lof": lof_scores, "rarity": rarity, "kth": dist[:, -1]}


def sklearn_run(ref: np.ndarray, q: np.ndarray, exact_radii: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """sklearn timings: fit measured or scaled from a row subsample, queries scaled from a subsample."""
    n = len(ref)
    q_sub = q[: min(args.sklearn_queries, len(q))]
    nn, nn_s, nn_mib = measure(lambda: NearestNeighbors().fit(ref))  # for AvgkNN and radius queries
    if n <= args.sklearn_fit_max:
        lof, lof_s, fit_mib = measure(lambda: LocalOutlierFactor(n_neighbors=args.k_lof, novelty=True).fit(ref))
        fit_s = nn_s + lof_s
        radii = lof._distances_fit_X_[:, args.k_rarity - 1].astype(np.float64)  # the fit's own self-kNN
        fit_note = "measured"
    else:
        # LOF.fit = neighbour-structure setup (as nn's) + kneighbors(X=None) over all N rows:
        # time the self-kNN on m rows and scale to N (its cost per row is constant).
        m = args.sklearn_fit_max
        lof = None
        _, knn_s, fit_mib = measure(lambda: nn.kneighbors(ref[:m], n_neighbors=args.k_lof + 1))
        fit_s = 2 * nn_s + knn_s * n / m
        radii = exact_radii.astype(np.float64)
        fit_note = f"extrapolated from a {m:,}-row self-kNN"
    scores, query_s, query_mib = measure(lambda: sklearn_scores(lof, nn, q_sub, radii, args))
    scale = len(q) / len(q_sub)
    return {
        "seconds": fit_s + query_s * scale,
        "fit_s": fit_s,
        "query_s": query_s * scale,
        "mib": max(nn_mib, fit_mib, query_mib),
        "fit_note": fit_note,
        "query_note": "measured" if scale == 1 else f"extrapolated from {len(q_sub):,} queries",
        "scores": scores,
        "rows": len(q_sub),
    }


# ---------------------------------------------------------------- comparisons


def recall_vs_exact(exact: ReferenceSet, approx: ReferenceSet, q: np.ndarray, k: int) -> float:
    """Share of the approximate index's k neighbours no farther than the exact k-th neighbour."""
    true_dist, _ = exact.index.search(q, k)
    found, _ = approx.index.search(q, k)
    return float(np.mean(found <= true_dist[:, -1:] * (1 + 1e-6)))


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    return float(np.max(np.abs(a[both] / b[both] - 1))) if both.any() else 0.0


def same_answers(ours_scores: dict[str, np.ndarray], sk: dict[str, Any]) -> str:
    rows = sk["rows"]
    parts = [f"AvgkNN max rel diff {max_rel_diff(ours_scores['avgknn'][:rows], sk['scores']['avgknn']):.1e}"]
    if sk["scores"]["lof"] is not None:
        parts.append(f"LOF {max_rel_diff(ours_scores['lof'][:rows], sk['scores']['lof']):.1e}")
    rarity, sk_rarity = ours_scores["rarity"][:rows], sk["scores"]["rarity"]
    parts.append(
        f"Rarity {max_rel_diff(rarity, sk_rarity):.1e}, in-support identical "
        f"{np.array_equal(np.isnan(rarity), np.isnan(sk_rarity))}"
    )
    return ", ".join(parts) + f" (on {rows} queries)"


# ---------------------------------------------------------------- main


def line(name: str, seconds: float, baseline: float | None, mib: float, note: str) -> None:
    ratio = f"{baseline / seconds:8.1f}x" if baseline else "        -"
    print(f"  {name:<14} {seconds:10.2f} {ratio} {mib:12.0f}   {note}")


def bench(n: int, d: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    model = mixture_model(d, args.components, args.intrinsic_dim, rng)
    ref = sample(model, n, rng)
    q = sample(model, args.queries, rng, outliers=0.02)
    shape = f"intrinsic dim {args.intrinsic_dim}" if model["bases"] is not None else "isotropic"
    print(f"\n== N={n:,} reference rows, Q={len(q):,} queries, d={d}, "
          f"{args.components}-component Gaussian mixture ({shape}) ==")
    exact = None if args.no_exact else ours(ref, q, "exact", args)
    auto = ours(ref, q, "auto", args)
    sk = sklearn_run(ref, q, (exact or auto)["set"].radii, args)
    print(f"  {'method':<14} {'time_s':>10} {'speedup':>9} {'peak_MiB':>12}   notes (speedup = sklearn time / ours)")
    line("sklearn", sk["seconds"], None, sk["mib"],
         f"fit {sk['fit_s']:.2f}s ({sk['fit_note']}), queries {sk['query_s']:.2f}s ({sk['query_note']})")
    if exact:
        line("ours exact", exact["seconds"], sk["seconds"], exact["mib"], f"build {exact['build_s']:.2f}s")
    index = auto["set"].index
    tuned = {"ivf": f"nprobe={index.nprobe}", "hnsw": f"efSearch={index.ef_search}"}.get(index.kind, "")
    line("ours auto", auto["seconds"], sk["seconds"], auto["mib"],
         f"build {auto['build_s']:.2f}s, index={index.kind} {tuned} tuned recall@{args.k_lof}={index.measured_recall:.3f}")
    if exact and index.kind != "exact":
        e, a = exact["scores"], auto["scores"]
        print(
            f"  auto vs exact: recall@{args.k_lof} {recall_vs_exact(exact['set'], auto['set'], q, args.k_lof):.4f}, "
            f"recall@{args.k_avg} {recall_vs_exact(exact['set'], auto['set'], q, args.k_avg):.4f}, "
            f"in-support agreement {np.mean(e['in_support'] == a['in_support']):.4f}, "
            f"LOF median rel diff {np.median(np.abs(a['lof'] / e['lof'] - 1)):.1e}"
        )
    elif exact:
        print("  auto vs exact: auto chose the exact index (recall 1)")
    elif index.kind != "exact":
        rows = sk["rows"]
        found, _ = index.search(q[:rows], args.k_avg)
        true_kth = sk["scores"]["kth"][:, None]
        print(f"  auto vs sklearn's exact kNN: recall@{args.k_avg} {np.mean(found <= true_kth * (1 + 1e-6)):.4f} "
              f"(on {rows:,} queries)")
    print(f"  answers, ours {'exact' if exact else 'auto'} vs sklearn: {same_answers((exact or auto)['scores'], sk)}")


def warm_up() -> None:
    """Start FAISS's and BLAS's thread pools and buffers once, so no phase pays for them."""
    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    ReferenceSet.build(x, index="exact").score(x[:100])
    LocalOutlierFactor(novelty=True).fit(x).score_samples(x[:100])
    NearestNeighbors().fit(x).radius_neighbors(x[:100], radius=1.0)


def main() -> None:
    args = parse_args()
    warm_up()
    print(f"kNN metrics benchmark: k_avg={args.k_avg} k_lof={args.k_lof} k_rarity={args.k_rarity}, "
          f"{os.cpu_count()} CPUs; peak_MiB = VmHWM growth during the phase (includes native FAISS/BLAS memory)")
    for d in args.dims:
        for n in args.refs:
            bench(n, d, args)


if __name__ == "__main__":
    main()
