"""AvgkNN + LOF + Rarity for Q queries against N reference rows: ours vs sklearn and raw FAISS, and vs the sgemm floor.

The floor: this machine's float32 GEMM rate (measured here, torch.mm on cache-sized blocks at
width d+1) applied to the distance work, 2·N·N·d flops for the build (self-kNN) and 2·Q·N·d for
scoring.  Ours ("exact": every block scanned; "ivf": k-means lists skipped when their bound
exceeds the query's k-th distance, same exact answers) is printed as a multiple of the floor,
build and score separately.  Raw FAISS: `IndexFlatL2` self-kNN (k_lof+1) and query kNN, no
LOF/Rarity logic at all.  sklearn: the way one would write it with sklearn alone:
`LocalOutlierFactor(novelty=True).fit(ref)`, then per query `score_samples` (LOF), `kneighbors`
(AvgkNN) and `radius_neighbors` up to the largest rarity radius, filtered (Rarity).

sklearn runs on `--sklearn-queries` queries and the time is scaled linearly to Q; where N is
above `--sklearn-fit-max` its fit (dominated by the N-row self-kNN) is timed on that many rows
and scaled linearly to N.  Every scaled number is marked "extrapolated".  `--scale` runs only
ours (ivf) at N = 1M / Q = 100k by default and prints time and peak RSS per phase.

Memory: peak resident set (VmHWM from /proc/self/status, reset before each phase through
/proc/self/clear_refs) minus the resident set when the phase starts.

Data: isotropic mixture components by default (every direction matters: the hardest case for
list bounds); `--intrinsic-dim m` puts each component near an m-dim subspace, closer to real
network features.

    python benchmarks/knn_metrics.py                                   # 50k x 64 / 10k queries
    python benchmarks/knn_metrics.py --device cuda                     # the same on a GPU (torch CUDA)
    python benchmarks/knn_metrics.py --scale --refs 1000000 --queries 100000
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401 - first: env defaults before faiss / torch (docs/DESIGN.md §7)
import faiss
import numpy as np
import torch
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

from minority_core.metrics import ReferenceSet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refs", type=int, nargs="+", default=[50_000], help="reference set sizes N")
    p.add_argument("--queries", type=int, default=10_000, help="query count Q")
    p.add_argument("--dims", type=int, nargs="+", default=[64], help="feature dimensions d")
    p.add_argument("--components", type=int, default=32, help="Gaussian-mixture components")
    p.add_argument("--intrinsic-dim", type=int, default=None,
                   help="each component near a subspace of this dimension (default: isotropic, full d)")
    p.add_argument("--k-avg", type=int, default=5)
    p.add_argument("--k-lof", type=int, default=20)
    p.add_argument("--k-rarity", type=int, default=3)
    p.add_argument("--kinds", nargs="+", default=["exact", "ivf"], choices=["exact", "ivf"], help="our index kinds to run")
    p.add_argument("--sklearn-queries", type=int, default=2000, help="queries sklearn really runs")
    p.add_argument("--sklearn-fit-max", type=int, default=50_000, help="largest N sklearn's LOF is really fitted on")
    p.add_argument("--no-sklearn", action="store_true", help="skip sklearn")
    p.add_argument("--no-faiss", action="store_true", help="skip raw FAISS IndexFlatL2")
    p.add_argument("--scale", action="store_true", help="ours only (the kinds given), time and peak RSS per phase")
    p.add_argument("--sklearn-sizes", type=int, nargs="*", default=[],
                   help="with --scale: N values sklearn really runs at (Q = --queries), for a fitted growth to N")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where our GEMMs run (cuda: torch CUDA)")
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


# ---------------------------------------------------------------- the floor


def sgemm_rate(d: int, device: str) -> float:
    """float32 GEMM flop/s of torch.mm on (8192 x d+1) @ (d+1 x 512) blocks, the shape our scans
    use: the best of several repeats (the machine is shared)."""
    dev = torch.device(device)
    a = torch.randn(8192, d + 1, device=dev)
    b = torch.randn(512, d + 1, device=dev)
    out = torch.empty(8192, 512, device=dev)
    best = float("inf")
    for _ in range(7):
        _sync(device)
        start = time.perf_counter()
        for _ in range(20):
            torch.mm(a, b.T, out=out)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 20)
    return 2 * 8192 * 512 * (d + 1) / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the implementations


def ours(ref: np.ndarray, q: np.ndarray, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    device = "gpu" if args.device == "cuda" else "cpu"
    rs, build_s, build_mib = measure(
        lambda: ReferenceSet.build(ref, k_lof=args.k_lof, k_rarity=args.k_rarity, index=kind, device=device)
    )
    scores, score_s, score_mib = measure(lambda: rs.score(q, k_avg=args.k_avg))
    return {"set": rs, "scores": scores, "build_s": build_s, "score_s": score_s, "mib": max(build_mib, score_mib),
            "build_mib": build_mib, "score_mib": score_mib}


def faiss_flat(ref: np.ndarray, q: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Raw FAISS exact kNN: the self-kNN a build needs and the query kNN scoring needs, nothing else
    (on the GPU with --device cuda where this FAISS build has GPU support)."""
    index = faiss.IndexFlatL2(ref.shape[1])
    if args.device == "cuda" and faiss_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(ref)
    _, build_s, _ = measure(lambda: index.search(ref, args.k_lof + 1))
    _, score_s, _ = measure(lambda: index.search(q, args.k_lof))
    return {"build_s": build_s, "score_s": score_s}


def faiss_gpus() -> int:
    """GPUs this FAISS build can use (0 for faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


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


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    return float(np.max(np.abs(a[both] / b[both] - 1))) if both.any() else 0.0


def same_answers(ours_scores: dict[str, np.ndarray], other: dict[str, np.ndarray], rows: int) -> str:
    parts = [f"AvgkNN max rel diff {max_rel_diff(ours_scores['avgknn'][:rows], other['avgknn'][:rows]):.1e}"]
    if other["lof"] is not None:
        parts.append(f"LOF {max_rel_diff(ours_scores['lof'][:rows], other['lof'][:rows]):.1e}")
    rarity, other_rarity = ours_scores["rarity"][:rows], other["rarity"][:rows]
    parts.append(
        f"Rarity {max_rel_diff(rarity, other_rarity):.1e}, in-support identical "
        f"{np.array_equal(np.isnan(rarity), np.isnan(other_rarity))}"
    )
    return ", ".join(parts) + f" (on {rows:,} queries)"


# ---------------------------------------------------------------- main


def row(name: str, build_s: float, score_s: float, floor: tuple[float, float], sk_total: float | None, note: str) -> None:
    total = build_s + score_s
    speedup = f"{sk_total / total:7.1f}x" if sk_total else "       -"
    print(f"  {name:<13} {build_s:9.2f} {build_s / floor[0]:7.1f}x {score_s:9.2f} {score_s / floor[1]:7.1f}x "
          f"{total:9.2f} {speedup}   {note}")


def bench(n: int, d: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    model = mixture_model(d, args.components, args.intrinsic_dim, rng)
    ref = sample(model, n, rng)
    q = sample(model, args.queries, rng, outliers=0.02)
    shape = f"intrinsic dim {args.intrinsic_dim}" if model["bases"] is not None else "isotropic"
    rate = sgemm_rate(d, args.device)
    floor = (2 * n * n * d / rate, 2 * len(q) * n * d / rate)
    print(f"\n== N={n:,} reference rows, Q={len(q):,} queries, d={d}, {args.components}-component Gaussian mixture "
          f"({shape}); sgemm {rate / 1e9:.0f} GFLOP/s on {args.device} -> floor build {floor[0]:.2f}s, score {floor[1]:.2f}s ==")
    runs = {kind: ours(ref, q, kind, args) for kind in args.kinds}
    fl = None if args.no_faiss else faiss_flat(ref, q, args)
    sk = None if args.no_sklearn else sklearn_run(ref, q, next(iter(runs.values()))["set"].radii, args)
    sk_total = sk["seconds"] if sk else None
    print(f"  {'method':<13} {'build_s':>9} {'/floor':>8} {'score_s':>9} {'/floor':>8} {'total_s':>9} {'vs_sk':>8}"
          "   notes (vs_sk = sklearn time / ours)")
    if sk:
        row("sklearn", sk["fit_s"], sk["query_s"], floor, None,
            f"fit {sk['fit_note']}, queries {sk['query_note']}, peak {sk['mib']:.0f} MiB")
    if fl:
        row("faiss flat", fl["build_s"], fl["score_s"], floor, sk_total, "IndexFlatL2 self-kNN + query kNN only")
    for kind, run in runs.items():
        lists = run["set"].index.engine.n_lists
        row(f"ours {kind}", run["build_s"], run["score_s"], floor, sk_total,
            f"{lists} lists, peak {run['build_mib']:.0f} / {run['score_mib']:.0f} MiB (build / score)")
    base = next(iter(runs.values()))
    for kind, run in list(runs.items())[1:]:
        print(f"  ours {kind} vs ours {next(iter(runs))}: {same_answers(run['scores'], base['scores'], len(q))}")
    if sk:
        print(f"  ours vs sklearn: {same_answers(base['scores'], sk['scores'], sk['rows'])}")
    for kind, run in runs.items():
        acc = run["set"].accuracy
        print(f"  accuracy stored with the {kind} set: {acc['checked_samples']} samples, max rel error "
              f"{acc['max_rel_error']}, share within 1 % {acc['share_within_1pct']}")


def scale(n: int, d: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    model = mixture_model(d, args.components, args.intrinsic_dim, rng)
    (ref, q), gen_s, _ = measure(lambda: (sample(model, n, rng), sample(model, args.queries, rng, outliers=0.02)))
    print(f"\n== scale: N={n:,}, Q={len(q):,}, d={d} (data made in {gen_s:.0f}s) ==")
    totals = {}
    for kind in args.kinds:
        run = ours(ref, q, kind, args)
        totals[kind] = run["build_s"] + run["score_s"]
        print(f"  ours {kind}: build {run['build_s']:.1f}s (+{run['build_mib']:.0f} MiB), score {run['score_s']:.1f}s "
              f"(+{run['score_mib']:.0f} MiB), total {totals[kind]:.1f}s, "
              f"{run['set'].index.engine.n_lists} lists; peak RSS {_status_kib('VmHWM') / 2**20:.2f} GiB")
        del run
        gc.collect()
    if len(args.sklearn_sizes) >= 2:
        sk = sklearn_growth(ref, q, sorted(args.sklearn_sizes), n, args)
        print("  " + ", ".join(f"{kind} {sk / t:.1f}x" for kind, t in totals.items()) + " (sklearn extrapolated / ours)")


def sklearn_growth(ref: np.ndarray, q: np.ndarray, sizes: list[int], n: int, args: argparse.Namespace) -> float:
    """sklearn's total (fit + Q queries) measured at `sizes` reference rows, a power law fitted
    through the two largest, extrapolated to n."""
    times = []
    for m in sizes:
        sub = ref[:m]
        lof = LocalOutlierFactor(n_neighbors=args.k_lof, novelty=True).fit(sub)
        radii = lof._distances_fit_X_[:, args.k_rarity - 1].astype(np.float64)
        run = sklearn_run(sub, q, radii, args)
        times.append(run["seconds"])
        print(f"  sklearn at N={m:,}: {run['seconds']:.1f}s (fit {run['fit_s']:.1f}s, queries {run['query_s']:.1f}s, {run['query_note']})")
    exponent = math.log(times[-1] / times[-2]) / math.log(sizes[-1] / sizes[-2])
    projected = times[-1] * (n / sizes[-1]) ** exponent
    print(f"  sklearn growth exponent {exponent:.2f} -> {projected:.0f}s extrapolated to N={n:,}")
    return projected


def warm_up(device: str) -> None:
    """Start the thread pools and buffers once, so no phase pays for them."""
    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    ReferenceSet.build(x, index="exact", device="gpu" if device == "cuda" else "cpu").score(x[:100])
    LocalOutlierFactor(novelty=True).fit(x).score_samples(x[:100])
    NearestNeighbors().fit(x).radius_neighbors(x[:100], radius=1.0)
    faiss.knn(x[:100], x, 5)


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda but torch {torch.__version__} sees no CUDA device: run it on a GPU machine "
              "with a CUDA build of torch, or drop --device cuda", file=sys.stderr)
        sys.exit(2)
    warm_up(args.device)
    print(f"kNN metrics benchmark: k_avg={args.k_avg} k_lof={args.k_lof} k_rarity={args.k_rarity}, "
          f"{os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads; peak = VmHWM growth during the phase")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda}; raw FAISS baseline on "
              f"{'the GPU' if faiss_gpus() else 'the CPU (faiss-cpu build)'}")
    for d in args.dims:
        for n in args.refs:
            (scale if args.scale else bench)(n, d, args)


if __name__ == "__main__":
    main()
