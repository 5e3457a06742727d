"""Scoring and reporting at scale: throughput on 1 vs 2 Ray score actors, and peak memory of `score`
and `report` as the run grows (docs/DESIGN.md §8: memory that does not grow with the run).

Runs are built without a model: a numpy stand-in writes random 8×8 grey images (samples shards)
and 64-d features from a Gaussian mixture (features shards) through `ShardStore` and the real
committer, `--shard-size` samples a shard, against one reference set of `--reference-rows` rows.
Then, each in a fresh child process (so no measurement inherits another's memory or Ray):

  score, W actors   ScorePool(W) + commit_scores, the code `minority-synth score --workers W` runs;
                    throughput = samples scored / seconds from the first shard submitted to the
                    last commit (Ray start-up and the actors' reference-set load, once per run,
                    are printed apart as "start");
  score, in-process `--workers 0`: everything in one process, so its peak RSS is the whole cost;
  report            runs.results.arm_result + report.build_report + write_report, the `report` flow.

Peak RSS is the child's own `ru_maxrss` (actors: their VmHWM). The growth exponent is the
log-log slope over the sizes: ≈ 0 means it does not grow with the run; the target is the 100k
run within 1.5× of the 1k run. Prefect is left out: the flows add a constant per run, not per shard.

    python benchmarks/scale_scoring.py                        # 1k, 10k, 100k samples
    python benchmarks/scale_scoring.py --sizes 1000,10000 --shard-size 250
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - before numpy: env defaults before ray / faiss / torch (docs/DESIGN.md §7)
import numpy as np

DIM = 64
TARGET_RSS_GROWTH = 1.5  # the largest run's peak RSS over the smallest's
TARGET_SPEEDUP = 1.6  # 2 actors over 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated run sizes in samples")
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--reference-rows", type=int, default=20000, help="rows of the reference set (sets the kNN work per shard)")
    p.add_argument("--workers", default="1,2", help="actor counts whose throughput is compared")
    p.add_argument("--keep", action="store_true", help="keep the runs (printed) instead of deleting them")
    p.add_argument("--child", choices=("score", "report"), help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        p.error("--sizes and --workers must be comma-separated integers")
    if not args.sizes or min(args.sizes) < 1 or args.shard_size < 1 or args.reference_rows < 10 or not args.workers or min(args.workers) < 1:
        p.error("sizes, --shard-size and --workers must be ≥ 1, --reference-rows ≥ 10")
    return args


# ---------------------------------------------------------------- the stand-in runs


def mixture(rng: np.random.Generator, rows: int, centres: np.ndarray) -> np.ndarray:
    """Rows from a Gaussian mixture around `centres` (a few far out: rare samples)."""
    picks = rng.integers(0, len(centres), rows)
    return (centres[picks] + rng.normal(0.0, 1.0, (rows, DIM))).astype(np.float32)


def build_reference(root: str, rows: int) -> str:
    from minority_core.io import ShardStore, features_table, sample_id
    from minority_core.metrics import ReferenceSet

    rng = np.random.default_rng(1)
    features = mixture(rng, rows, np.random.default_rng(0).normal(0.0, 4.0, (10, DIM)))
    ShardStore(f"{root}/pixels").write_shard("features", 0, features_table([sample_id(0, i) for i in range(rows)], features))
    ReferenceSet.build(features, k_lof=20, k_rarity=3).save(f"{root}/pixels/index")
    return root


def build_run(url: str, samples: int, shard_size: int, seed: int = 0) -> None:
    """A committed, unscored run written the way workers write one: features, then samples, per shard."""
    from minority_core.io import Manifest, ShardStore, features_table, sample_id, samples_table
    from minority_core.runs.commit import ManifestCommitter

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0.0, 4.0, (12, DIM))  # two more clusters than the reference: rare ones
    shards = math.ceil(samples / shard_size)
    store = ShardStore(url)
    config = {"model": "stand-in", "extractor": "pixels", "arm": "stand-in", "num_samples": samples, "shard_size": shard_size, "seed": seed}
    committer = ManifestCommitter(store, Manifest(config=config, code_version="benchmark"), shards)
    for k in range(shards):
        rows = min(shard_size, samples - k * shard_size)
        ids = [sample_id(k, r) for r in range(rows)]
        features = store.write_shard("features/pixels", k, features_table(ids, mixture(rng, rows, centres)))
        images = rng.integers(0, 256, (rows, 8, 8, 1), dtype=np.uint8)
        committed = store.write_shard("samples", k, samples_table(images, k, seed=k, arm="stand-in"))
        committer.commit_records([features, committed])
    committer.finish()


# ---------------------------------------------------------------- children (one measurement each)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def actor_peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_score(run: str, reference: str, workers: int) -> dict:
    from minority_core.runs.scoring import commit_scores, open_run, unscored
    from tasks.ray_pool import call
    from tasks.score_pool import ScorePool

    start = time.perf_counter()
    store, manifest = open_run(run, {})
    todo, _ = unscored(store, manifest)
    worker = dict(run=run, reference_index=f"{reference}/pixels/index", extractor="pixels", k_avg=5, storage_options={})
    pool = ScorePool(worker, workers)
    pids = [call(actor, "ping") for actor in pool.actors] if workers else []
    ready = time.perf_counter()
    scored = commit_scores(store, manifest, pool.scored(todo))
    seconds = time.perf_counter() - ready
    actors = [actor_peak_rss_mb(pid) for pid in pids]
    pool.shutdown()
    return {"start_s": ready - start, "seconds": seconds, "shards": scored, "samples": sum(r.rows for r in todo),
            "rss_mb": peak_rss_mb(), "actor_rss_mb": max((a for a in actors if a), default=None)}


def child_report(run: str, reference: str) -> dict:
    import fsspec

    from minority_core.report import build_report, write_report
    from minority_core.runs.reference import load_reference_features
    from minority_core.runs.results import arm_result

    start = time.perf_counter()
    arm = arm_result(run, load_reference_features(reference, "pixels", {}), {})
    built = build_report([arm], "scale benchmark")
    write_report(built, fsspec.filesystem("file"), f"{run}-report")
    return {"seconds": time.perf_counter() - start, "rss_mb": peak_rss_mb(), "images_decoded": len(arm.images), "samples": arm.summary["samples"]}


def in_child(*argv: str) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table


def slope(sizes: list[int], values: list[float]) -> float | None:
    """Growth exponent: the log-log least-squares slope (None with fewer than two sizes)."""
    if len(sizes) < 2 or any(v is None or v <= 0 for v in values):
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main() -> None:
    args = parse_args()
    if args.child == "score":
        print(json.dumps(child_score(args.run, args.reference, args.child_workers)))
        return
    if args.child == "report":
        print(json.dumps(child_report(args.run, args.reference)))
        return

    root = tempfile.mkdtemp(prefix="scale-scoring-")
    print(f"runs under {root}; shards of {args.shard_size}; reference set of {args.reference_rows} rows × {DIM}; {os.cpu_count()} CPUs")
    reference = build_reference(f"{root}/reference", args.reference_rows)
    rows = []
    try:
        for size in args.sizes:
            base = f"{root}/run-{size}"
            t = time.perf_counter()
            build_run(base, size, args.shard_size)
            row = {"samples": size, "shards": math.ceil(size / args.shard_size), "build_s": time.perf_counter() - t}
            for workers in args.workers:
                run = f"{base}-w{workers}"
                shutil.copytree(base, run)
                result = in_child("--child", "score", "--run", run, "--reference", reference, "--child-workers", str(workers))
                row[f"w{workers}"] = result
            local = f"{base}-w0"
            shutil.copytree(base, local)
            row["w0"] = in_child("--child", "score", "--run", local, "--reference", reference, "--child-workers", "0")
            row["report"] = in_child("--child", "report", "--run", local, "--reference", reference)
            row["load"] = os.getloadavg()[0]
            rows.append(row)
            print_row(row, args.workers)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_summary(rows, args.workers)


def print_row(row: dict, workers: list[int]) -> None:
    parts = [f"{row['samples']:>7,} samples / {row['shards']:>4} shards (built in {row['build_s']:.1f} s; "
             f"load average {row['load']:.1f}: other processes share these CPUs):"]
    for w in workers:
        r = row[f"w{w}"]
        parts.append(f"{w} actor(s) {r['samples'] / r['seconds']:,.0f} samples/s (start {r['start_s']:.1f} s, driver {r['rss_mb']:.0f} MB, actor {r['actor_rss_mb'] or 0:.0f} MB)")
    parts.append(f"in-process score {row['w0']['rss_mb']:.0f} MB in {row['w0']['seconds']:.1f} s")
    parts.append(f"report {row['report']['rss_mb']:.0f} MB in {row['report']['seconds']:.1f} s ({row['report']['images_decoded']} images decoded)")
    print("\n    ".join(parts), flush=True)


def print_summary(rows: list[dict], workers: list[int]) -> None:
    if not rows:
        return
    sizes = [r["samples"] for r in rows]
    print("\nsamples   " + "  ".join(f"{w}-actor samples/s" for w in workers) + "  speedup  score RSS MB (in-process / driver / actor)  report RSS MB")
    lo, hi = workers[0], workers[-1]
    for r in rows:
        speed = [r[f"w{w}"]["samples"] / r[f"w{w}"]["seconds"] for w in workers]
        ratio = speed[-1] / speed[0] if len(speed) > 1 else float("nan")
        print(f"{r['samples']:>7,}   " + "  ".join(f"{s:>17,.0f}" for s in speed) + f"  {ratio:>6.2f}×  "
              f"{r['w0']['rss_mb']:>6.0f} / {r[f'w{hi}']['rss_mb']:>4.0f} / {r[f'w{hi}']['actor_rss_mb'] or 0:>4.0f}"
              f"                     {r['report']['rss_mb']:>6.0f}")
    fits = {
        "score peak RSS (in-process)": [r["w0"]["rss_mb"] for r in rows],
        f"score peak RSS (driver, {hi} actors)": [r[f"w{hi}"]["rss_mb"] for r in rows],
        f"score peak RSS (one actor of {hi})": [r[f"w{hi}"]["actor_rss_mb"] for r in rows],
        "report peak RSS": [r["report"]["rss_mb"] for r in rows],
        f"score seconds ({lo} actor)": [r[f"w{lo}"]["seconds"] for r in rows],
        "report seconds": [r["report"]["seconds"] for r in rows],
    }
    print("\ngrowth exponent (log-log slope over the sizes; ≈ 0: does not grow, ≈ 1: linear)")
    for name, values in fits.items():
        s = slope(sizes, values)
        growth = values[-1] / values[0] if values[0] else float("nan")
        note = f"   largest/smallest {growth:.2f}×" + (f" (target ≤ {TARGET_RSS_GROWTH}×)" if "RSS" in name else "")
        print(f"  {name:<38} {'n/a' if s is None else f'{s:+.3f}'}{note}")
    if len(workers) > 1:
        best = max(rows, key=lambda r: r["samples"])
        ratio = (best[f"w{hi}"]["samples"] / best[f"w{hi}"]["seconds"]) / (best[f"w{lo}"]["samples"] / best[f"w{lo}"]["seconds"])
        print(f"\nscoring throughput {lo} → {hi} actors at {best['samples']:,} samples: {ratio:.2f}× (target ≥ {TARGET_SPEEDUP}×)")


if __name__ == "__main__":
    main()
