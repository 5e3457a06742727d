"""Orchestration overhead: the synthesis flow (Prefect + Ray + Parquet) vs the same work in a plain loop (docs/DESIGN.md §6).

(a) Plain loop, one process, no Prefect, no Ray: per shard `generate` → labels → `samples_table`
    → features → `ShardStore.write_shard` for the features and the samples shard: what a Ray
    actor (`minority_core.runs.worker.ShardWorker`) does per shard, with the same sampler config,
    extractor and shard seeds as the flow. Run with 2 torch threads and with 1.
(b) `flows.synthesize.synthesize` with 1 and 2 Ray CPU actors. Each actor has `num_cpus=1`,
    so Ray gives it one OMP/torch thread: the 1-worker flow is like for like with the
    1-thread plain loop; the 2-worker flow uses the machine's 2 cores as the 2-thread loop does,
    but as two processes instead of intra-op threads.

Fixed start-up costs are shown separately: the Prefect ephemeral server (a no-op flow, first
in the process), `ray.init` (once per process), and a warm-up flow run (one shard). The timed
flow runs then write into fresh outputs; each still starts its actors and loads the model in
them (the "pool start" column), which a run of a few minutes amortises.

Target (docs/DESIGN.md §6): overhead ≤ 10 % of wall time at a run of a few minutes; throughput scales
with workers.

    python benchmarks/pipeline_overhead.py                          # bundled:digits, 1024 samples, 100 steps
    python benchmarks/pipeline_overhead.py --model diffusers:/tmp/unet --extractor pixels --num-samples 256 --steps 20
"""

from __future__ import annotations

import os

from _common import check_model, private_prefect_home  # first: env defaults before prefect / ray / torch (docs/DESIGN.md §7)

private_prefect_home("bench-prefect-home-")

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

TARGET_OVERHEAD = 0.10  # docs/DESIGN.md §6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled:digits", help="any load_model spec: bundled:digits, diffusers:PATH, adm:PATH")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts to time")
    p.add_argument("--extractor", default=None, help="feature extractor (default: the model preset's; use pixels for a random model)")
    p.add_argument("--guidance-scale", type=float, default=None, help="w (default: the model preset's; 0 = unguided)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the output folders (printed) instead of deleting them")
    args = p.parse_args()
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        p.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs counts ≥ 1 (0 would be the in-process pool, not Ray)")
    for name in ("num_samples", "shard_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    return args


def make_config(args, out: str, workers: int, num_samples: int | None = None):
    from minority_core.config import SynthesisConfig

    return SynthesisConfig.from_options(
        model=args.model, num_samples=num_samples or args.num_samples, shard_size=args.shard_size, out=out,
        steps=args.steps, guidance_scale=args.guidance_scale, extractor=args.extractor, workers=workers, seed=args.seed,
    )


# ---------------------------------------------------------------- (a) the plain loop


def plain_loop(config, threads: int) -> dict:
    """The actor's per-shard work, in this process, shard after shard; no Prefect, no Ray, no manifest."""
    from minority_core.demo.labeling import label_samples
    from minority_core.io import ShardStore, features_table, sample_id, samples_table
    from minority_core.io.images import to_uint8_nhwc
    from minority_core.metrics.features import get_extractor
    from minority_core.models import load_model
    from minority_core.runs.generate import generate
    from minority_core.runs.plan import shard_seed

    torch.set_num_threads(threads)
    start = time.perf_counter()
    loaded = load_model(config.model.spec, "cpu")
    extractor = get_extractor(config.output.extractor, device="cpu")
    sampler = config.sampler
    store = ShardStore(config.output.out)
    setup = time.perf_counter() - start
    scale = 0.0 if sampler.guidance is None else sampler.guidance.scale
    records = {}
    start = time.perf_counter()
    for k in range(-(-config.output.num_samples // config.output.shard_size)):
        rows = min(config.output.shard_size, config.output.num_samples - k * config.output.shard_size)
        seed = shard_seed(config.output.seed, k)
        images, class_labels = generate(loaded, rows, sampler, seed, "cpu")
        labels = class_labels.numpy() if class_labels is not None else label_samples(loaded.spec, images)
        table = samples_table(to_uint8_nhwc(images), k, seed, labels=labels, guidance=scale, arm=config.output.arm)
        with torch.no_grad():
            feats = extractor(images)
        ids = [sample_id(k, row) for row in range(rows)]
        for record in (store.write_shard(f"features/{extractor.name}", k, features_table(ids, feats)), store.write_shard("samples", k, table)):
            records[record.key] = record.sha256
    return {"setup": setup, "loop": time.perf_counter() - start, "records": records}


# ---------------------------------------------------------------- (b) the flow


def flow_records(out: str) -> dict:
    """sha256 of every shard the flow committed, keyed like the plain loop's records."""
    from minority_core.io import ShardStore

    manifest = ShardStore(out).read_manifest()
    return {key: record.sha256 for key, record in manifest.shards.items()}


def same_bytes(a: dict, b: dict) -> str:
    common = sorted(set(a) & set(b))
    return f"{sum(a[k] == b[k] for k in common)}/{max(len(a), len(b))}"


def main() -> None:
    args = parse_args()
    check_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    n = args.num_samples
    shards = -(-n // args.shard_size)
    log = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        log.append(line)

    first = make_config(args, str(tmp / "check"), max(args.workers))
    sampler = first.sampler_config()
    g = sampler.guidance
    say(f"model {args.model}, {n} samples in {shards} shards of {args.shard_size}, {sampler.sampler} {sampler.steps} steps, "
        f"guidance {'none' if g is None else f'w={g.scale} every={g.every}'}, extractor {first.resolved_extractor()}, batch {sampler.batch_size}")
    say(f"cpu cores {os.cpu_count()}, load (uptime) at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}, outputs under {tmp}")

    # warm this process's torch kernels so the first plain run is not charged for lazy init
    from minority_core.models import load_model
    from minority_core.runs.generate import generate

    generate(load_model(args.model, "cpu"), 2, dataclasses.replace(sampler, steps=2), 0)

    plain = {}
    for threads in (2, 1):
        result = plain_loop(make_config(args, str(tmp / f"plain-{threads}t"), 1), threads)
        plain[threads] = result
        say(f"plain loop, {threads} torch thread(s): set-up {result['setup']:.1f} s (model + extractor), "
            f"loop {result['loop']:.1f} s, {n / result['loop']:.1f} samples/s")
    torch.set_num_threads(2)

    import ray
    from prefect import flow

    import flows.synthesize as synth
    from tasks.ray_pool import ensure_ray

    @flow(name="bench-noop")
    def noop() -> None:
        return None

    start = time.perf_counter()
    noop()
    prefect_start = time.perf_counter() - start
    start = time.perf_counter()
    ensure_ray(num_cpus=max(args.workers))
    ray_init = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def actor_threads():
        import torch as t

        return t.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    actor_torch_threads, actor_omp = ray.get(actor_threads.remote())

    pool_times: list[float] = []
    original_make_pool = synth.make_pool

    def timed_make_pool(config):
        t = time.perf_counter()
        pool = original_make_pool(config)
        pool_times.append(time.perf_counter() - t)
        return pool

    synth.make_pool = timed_make_pool

    start = time.perf_counter()
    synth.synthesize(make_config(args, str(tmp / "flow-warmup"), max(args.workers), num_samples=min(n, args.shard_size)))
    warmup = time.perf_counter() - start
    say(f"fixed start-up, once per process: Prefect ephemeral server + first flow run {prefect_start:.1f} s, "
        f"ray.init(num_cpus={max(args.workers)}) {ray_init:.1f} s, warm-up flow run (1 shard, {max(args.workers)} actors) {warmup:.1f} s")
    say(f"a Ray task with num_cpus=1 sees torch threads = {actor_torch_threads} (OMP_NUM_THREADS={actor_omp})")

    runs = {}
    for workers in args.workers:
        out = str(tmp / f"flow-{workers}w")
        start = time.perf_counter()
        summary = synth.synthesize(make_config(args, out, workers))
        wall = time.perf_counter() - start
        in_worker = (summary["seconds_per_sample"] or 0.0) * n
        runs[workers] = {"wall": wall, "pool": pool_times[-1], "in_worker": in_worker, "records": flow_records(out)}
        say(f"flow, {workers} Ray worker(s): wall {wall:.1f} s, of which pool start (actors + model load) {pool_times[-1]:.1f} s, "
            f"Prefect flow-run bookkeeping outside the flow body {wall - summary['seconds']:.1f} s; "
            f"in-actor shard time {in_worker:.1f} s summed over actors; {n / wall:.1f} samples/s")
    synth.make_pool = original_make_pool

    say()
    say("overhead = flow wall / plain-loop wall (the loop excludes its own model loading; the flow's wall includes starting actors and loading the model in them)")
    say(f"{'comparison':<50} {'plain s':>8} {'flow s':>8} {'ratio':>7} {'excl. pool start':>17} {'samples/s flow':>15} {'same bytes':>11}")
    rows = []
    for workers in args.workers:
        run = runs[workers]
        for threads in ((1, 2) if workers == 1 else (2,)):
            base = plain[threads]["loop"]
            ratio = run["wall"] / base
            steady = (run["wall"] - run["pool"]) / base
            label = f"{workers} worker(s) vs plain {threads} thread(s)" + (" (like for like)" if workers == threads else "")
            rows.append((workers, threads, ratio, steady))
            say(f"{label:<50} {base:>8.1f} {run['wall']:>8.1f} {ratio:>6.2f}x {steady:>16.2f}x {n / run['wall']:>15.1f} "
                f"{same_bytes(run['records'], plain[threads]['records']):>11}")
    if len(args.workers) > 1:
        lo, hi = args.workers[0], args.workers[-1]
        say(f"throughput scaling {lo} -> {hi} workers: {runs[lo]['wall'] / runs[hi]['wall']:.2f}x "
            f"(plain loop 1 -> 2 threads: {plain[1]['loop'] / plain[2]['loop']:.2f}x)")
    say(f"load (uptime) at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    like = [r for r in rows if r[0] == r[1]]
    for workers, threads, ratio, steady in like:
        verdict = "meets" if ratio - 1 <= TARGET_OVERHEAD else "MISSES"
        say(f"overhead at {workers} worker(s) vs plain {threads} thread(s): {100 * (ratio - 1):+.1f} % of wall time "
            f"({100 * (steady - 1):+.1f} % without pool start; target <= {100 * TARGET_OVERHEAD:.0f} %; {verdict} it)")

    ray.shutdown()
    if args.keep:
        print(f"outputs kept under {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
