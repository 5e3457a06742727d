"""The run layer at scale: commits, commit-log size, resume planning, over 1k / 10k / 100k shards.

A stand-in worker writes tiny real shards (one samples row, one features row) through the real
`ShardStore`, and the real `ManifestCommitter` commits them, so what is measured is the commit,
plan and store code alone (the model costs nothing). Each size runs in a fresh subprocess, so
its peak RSS is its own. Printed per size:

- shards/s of the write + commit loop, and of the commits alone;
- bytes written per commit: the largest loose commit and the mean including compaction and the
  final snapshot (what a run pays per shard, amortised);
- the commit log mid-run (segment + loose bytes, and how many loose commits a reader must open:
  bounded by the compaction interval) and manifest.json at the end;
- resume planning of the finished run: seconds, shard bytes read (must be 0), peak RSS growth;
and the fitted growth exponent (log-log slope, first to last size) of each: ≈ 1 for totals,
≈ 0 for per-shard costs. The baseline, run in the same process at small sizes: the previous
design's whole-manifest rewrite per commit (its exponent is ≈ 2).

    python benchmarks/scale.py                     # 1k, 10k, 100k shards (~10 min on 2 cores)
    python benchmarks/scale.py --sizes 1000 4000   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - first: env defaults before pyarrow / torch (docs/DESIGN.md §7)
import numpy as np

from minority_core.io import Manifest, ShardStore, features_table, samples_table
from minority_core.runs.commit import ManifestCommitter
from minority_core.runs.plan import SAMPLES, plan_run, shard_specs

FEATURES = "features/stand-in"


def identity(shards: int) -> dict:
    return {"model": "stand-in", "num_samples": shards, "shard_size": 1, "seed": 0, "extractor": "stand-in"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(root: str, shards: int) -> dict:
    """Write and commit `shards` one-row shards; returns the commit figures."""
    store = ShardStore(root)
    image = np.zeros((1, 2, 2, 1), np.uint8)
    written: list[tuple[str, int]] = []
    write_text = store.write_text
    store.write_text = lambda rel, text: (written.append((rel, len(text.encode()))), write_text(rel, text))[1]  # type: ignore[method-assign]
    manifest = Manifest(config=identity(shards))
    committer = ManifestCommitter(store, manifest, total=shards)
    commit_seconds, log_peak, loose_peak = 0.0, 0, 0
    start = time.perf_counter()
    for k in range(shards):
        records = [store.write_shard(FEATURES, k, features_table([f"{k:05d}-000000"], np.ones((1, 4), np.float32))),
                   store.write_shard(SAMPLES, k, samples_table(image, k, 0))]
        t0 = time.perf_counter()
        committer.commit_records(records)
        commit_seconds += time.perf_counter() - t0
        if k % 251 == 0 or k == shards - 2:
            files = list(Path(root, "commits").glob("*"))
            log_peak = max(log_peak, sum(f.stat().st_size for f in files))
            loose_peak = max(loose_peak, sum(f.name.startswith("0") for f in files))
    loop_seconds = time.perf_counter() - start
    loose = [size for rel, size in written if rel.startswith("commits/0")]
    return {
        "shards": shards, "loop_seconds": loop_seconds, "commit_seconds": commit_seconds,
        "commit_max_bytes": max(loose), "commit_mean_bytes": sum(size for _, size in written) / shards,
        "log_peak_bytes": log_peak, "loose_peak": loose_peak, "manifest_bytes": Path(root, "manifest.json").stat().st_size,
        "left_in_log": len(list(Path(root, "commits").glob("*"))) if Path(root, "commits").is_dir() else 0,
    }


def plan(root: str, shards: int) -> dict:
    """Resume planning of the finished run: time, shard bytes read, RSS it added."""
    store = ShardStore(root)
    reads: list[str] = []
    get = store._get
    store._get = lambda rel: (reads.append(rel), get(rel))[1]  # type: ignore[method-assign]
    before = peak_rss_mb()
    start = time.perf_counter()
    result = plan_run(store, identity(shards), shard_specs(shards, 1, 0), FEATURES)
    seconds = time.perf_counter() - start
    assert len(result.pending) == 0, "the finished run planned work"
    return {"plan_seconds": seconds, "plan_shard_reads": sum(r.endswith(".parquet") for r in reads), "plan_rss_mb": peak_rss_mb() - before}


def baseline(shards: int) -> float:
    """Seconds the previous design spent committing: the whole manifest rewritten per commit."""
    with tempfile.TemporaryDirectory() as root:
        store = ShardStore(root)
        record = store.write_shard(FEATURES, 0, features_table(["00000-000000"], np.ones((1, 4), np.float32)))
        manifest = Manifest(config=identity(shards))
        start = time.perf_counter()
        for k in range(shards):
            manifest.add(record.__class__(FEATURES, k, f"{FEATURES}/shard-{k:05d}.parquet", 1, record.sha256, record.bytes))
            manifest.add(record.__class__(SAMPLES, k, f"{SAMPLES}/shard-{k:05d}.parquet", 1, record.sha256, record.bytes))
            store.write_text("manifest.json", manifest.to_json())
        return time.perf_counter() - start


def child(shards: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        figures = build(root, shards)
        figures.update(plan(root, shards))
        figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures))


def slope(xs: list[float], ys: list[float]) -> float:
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0]) if ys[0] > 0 and ys[-1] > 0 and xs[-1] != xs[0] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="shard counts")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[250, 500, 1000], help="shard counts for the whole-rewrite baseline")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if any(s < 2 for s in args.sizes):
        parser.error("--sizes must be at least 2 shards each")
    rows = []
    for shards in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(shards)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{shards:>7} shards: {shards / r['loop_seconds']:7.0f} shards/s (write+commit), {shards / r['commit_seconds']:7.0f} commits/s; "
              f"commit ≤ {r['commit_max_bytes']} B, {r['commit_mean_bytes']:.0f} B/commit amortised; log ≤ {r['log_peak_bytes'] / 1e6:.2f} MB "
              f"(≤ {r['loose_peak']} loose commits), "
              f"manifest {r['manifest_bytes'] / 1e6:.1f} MB, {r['left_in_log']} log files left; resume plan {r['plan_seconds']:.2f} s, "
              f"{r['plan_shard_reads']} shard reads, +{r['plan_rss_mb']:.0f} MB; peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    xs = [r["shards"] for r in rows]
    print("\ngrowth exponents (first → last size; ≈1 totals, ≈0 per-shard costs):")
    for name, key, per_shard in (("commit time, total", "commit_seconds", False), ("commit bytes, amortised per shard", "commit_mean_bytes", True),
                                 ("largest commit", "commit_max_bytes", True), ("loose commits a reader lists", "loose_peak", True),
                                 ("commit log (segments + loose)", "log_peak_bytes", False),
                                 ("manifest snapshot", "manifest_bytes", False), ("resume planning time", "plan_seconds", False)):
        print(f"  {name:<36} {slope(xs, [r[key] for r in rows]):5.2f}" + ("   (per shard: target 0)" if per_shard else "   (target 1)"))
    base = [(n, baseline(n)) for n in args.baseline_sizes]
    ours = {r["shards"]: r["commit_seconds"] for r in rows}
    print("\nbaseline (whole manifest rewritten per commit, this process):")
    for n, seconds in base:
        print(f"  {n:>6} shards: {seconds:6.2f} s ({seconds / n * 1e3:.2f} ms/commit)")
    exponent = slope([n for n, _ in base], [s for _, s in base])
    print(f"  growth exponent {exponent:.2f}; extrapolated to {xs[-1]} shards: "
          f"{base[-1][1] * (xs[-1] / base[-1][0]) ** exponent / 3600:.1f} h vs ours {ours[xs[-1]]:.1f} s "
          f"(ratio {base[-1][1] * (xs[-1] / base[-1][0]) ** exponent / ours[xs[-1]]:.0f}×)")


if __name__ == "__main__":
    main()
