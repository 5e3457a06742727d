"""Orchestration overhead: the synthesis flow (Prefect + Ray + Parquet) vs the same work in a plain loop (docs/DESIGN.md §6).

Two parts, each comparing `flows.synthesize.synthesize` with a plain loop that does the actors'
per-shard work (`ShardWorker.generate_shard`: generate → labels → samples table → features →
write both shards) in this process, with the same config and shard seeds, without Prefect, Ray
or a commit:

(1) overhead at a run of a few minutes (default: the bundled digits model, 1024 samples, 100
    steps): flow wall / plain-loop wall with 1 and 2 Ray CPU actors. Each actor has
    `num_cpus=1`, so Ray gives it one OMP/torch thread: the 1-worker flow is like for like with
    the 1-thread plain loop; the 2-worker flow uses the machine's 2 cores as the 2-thread loop
    does, but as two processes instead of intra-op threads. Target: ≤ 10 % of wall time.
(2) per-shard cost with a near-free model (`--scaling-steps 2`, shards of 1 sample) at 1 worker
    for N = 100, 300, 1000 shards: overhead per shard = (flow wall − plain-loop wall) / N, the
    fitted growth exponent of flow wall vs N (target ≈ 1.0: no cost that grows with the run),
    the marginal overhead per shard from a linear fit (fixed costs such as starting the actor
    drop out), the Prefect task runs each flow run created (read back from the API), and the
    CPU time per shard of the driver, the Prefect API server, the actor and Ray's own
    processes. Target: ≤ 25 ms per shard.

Ray starts its workers at niceness 15, so on a machine where anything else is busy the actors
lose CPU that the plain loop (niceness 0) keeps; the benchmark therefore runs them at 0 unless
`--ray-niceness 15` asks for Ray's default, and part (2) counts CPU seconds too.

Fixed start-up costs are shown separately: the Prefect ephemeral server (a no-op flow, first in
the process), `ray.init` (once per process), and a warm-up flow run (one shard). Every timed
flow run writes into a fresh output and starts its actors and loads the model in them (the
"pool start" column).

    python benchmarks/pipeline_overhead.py                          # both parts, bundled:digits
    python benchmarks/pipeline_overhead.py --part scaling --scaling-shards 100,300
    python benchmarks/pipeline_overhead.py --model diffusers:/tmp/unet --extractor pixels --num-samples 256 --steps 20
"""

from __future__ import annotations

import os

from _common import check_model, private_prefect_home  # first: env defaults before prefect / ray / torch (docs/DESIGN.md §7)

private_prefect_home("bench-prefect-home-")

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

TARGET_OVERHEAD = 0.10  # docs/DESIGN.md §6: share of wall time at a run of a few minutes
TARGET_PER_SHARD_MS = 25.0  # docs/DESIGN.md §8: orchestration per shard, near-free model, 1 worker
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "overhead", "scaling"), default="all", help="(1) overhead at a few-minute run, (2) per-shard scaling, or both")
    p.add_argument("--model", default="bundled:digits", help="any load_model spec: bundled:digits, diffusers:PATH, adm:PATH")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts to time in part (1)")
    p.add_argument("--scaling-shards", default="100,300,1000", help="comma-separated shard counts of part (2) (1 sample each)")
    p.add_argument("--scaling-workers", type=int, default=2, help="also time this many workers at the middle shard count of part (2) (1: skip)")
    p.add_argument("--scaling-steps", type=int, default=2, help="sampling steps in part (2): a near-free model")
    p.add_argument("--repeat", type=int, default=2, help="runs per shard count in part (2); the fastest counts")
    p.add_argument("--extractor", default=None, help="feature extractor (default: the model preset's; use pixels for a random model)")
    p.add_argument("--guidance-scale", type=float, default=None, help="w (default: the model preset's; 0 = unguided)")
    p.add_argument("--ray-niceness", type=int, default=0,
                   help="niceness of the Ray workers (RAY_worker_niceness; Ray's own default is 15). 0, the plain loop's, compares like for like: "
                        "at 15 any other busy process on the machine wins the CPU from the actors, never from the plain loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the output folders (printed) instead of deleting them")
    args = p.parse_args()
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
        args.scaling_shards = sorted({int(n) for n in args.scaling_shards.split(",") if n.strip()})
    except ValueError:
        p.error("--workers and --scaling-shards must be comma-separated integers")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers needs counts ≥ 1 (0 would be the in-process pool, not Ray)")
    if args.part != "overhead" and (len(args.scaling_shards) < 2 or min(args.scaling_shards) < 1):
        p.error("--scaling-shards needs at least two counts ≥ 1 (the growth exponent is fitted over them)")
    for name in ("num_samples", "shard_size", "steps", "scaling_steps", "scaling_workers", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    return args


def make_config(args, out: str, workers: int, num_samples: int | None = None, shard_size: int | None = None, steps: int | None = None):
    from minority_core.config import SynthesisConfig

    return SynthesisConfig.from_options(
        model=args.model, num_samples=num_samples or args.num_samples, shard_size=shard_size or args.shard_size, out=out,
        steps=steps or args.steps, guidance_scale=args.guidance_scale, extractor=args.extractor, workers=workers, seed=args.seed,
    )


# ---------------------------------------------------------------- the plain loop


def plain_loop(config, threads: int) -> dict:
    """The actor's per-shard work, in this process, shard after shard; no Prefect, no Ray, no commit."""
    from minority_core.runs.plan import shard_specs
    from minority_core.runs.worker import ShardWorker

    torch.set_num_threads(threads)
    start = time.perf_counter()
    worker = ShardWorker(config.model_dump(mode="json"))
    worker.ping()
    setup = time.perf_counter() - start
    records = {}
    o = config.output
    start, cpu = time.perf_counter(), time.process_time()
    for spec in shard_specs(o.num_samples, o.shard_size, o.seed):
        result = worker.generate_shard(spec.index, spec.rows, spec.seed, spec.first_index)
        for record in (result.features, result.samples):
            records[record.key] = record.sha256
    return {"setup": setup, "loop": time.perf_counter() - start, "cpu": time.process_time() - cpu, "records": records}


def cold_setup(config) -> float:
    """Seconds a fresh Python process takes to import the worker and load the model and extractor:
    what each actor pays at pool start, and a plain script would pay once, before any shard."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from minority_core.runs.worker import ShardWorker; "
            "ShardWorker(json.loads(sys.argv[1])).ping()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(config.model_dump(mode="json"))], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the flow, observed


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree() -> dict[int, str]:
    """This process and every descendant: pid → the role it plays in a flow run."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    tree, frontier = {os.getpid(): "driver"}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                command = commands.get(pid, "")
                tree[pid] = "prefect api" if "prefect.server.api.server" in command else "ray"
                frontier.append(pid)
    return tree


class CpuMeter:
    """CPU seconds each role (driver, Prefect API, actors, Ray's own processes) spent over a flow
    run. Actors die when the pool shuts down, so the pool is read just before that, too."""

    def __init__(self) -> None:
        self.before = {pid: (role, cpu_seconds(pid) or 0.0) for pid, role in process_tree().items()}
        self.peak: dict[int, tuple[str, float]] = {}
        self.actor_pids: set[int] = set()

    def sample(self) -> None:
        for pid, role in process_tree().items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                role = "actor" if pid in self.actor_pids else role
                self.peak[pid] = (role, max(seconds, self.peak.get(pid, (role, 0.0))[1]))

    def totals(self) -> dict[str, float]:
        self.sample()
        spent: dict[str, float] = {}
        for pid, (role, seconds) in self.peak.items():
            spent[role] = spent.get(role, 0.0) + seconds - self.before.get(pid, (role, 0.0))[1]
        return spent


def task_run_count(flow_run_id) -> int:
    """Task runs the API recorded for one flow run (recorded from events, so read until stable)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def count() -> int:
        total, offset = 0, 0
        with get_client(sync_client=True) as client:
            while True:
                page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=offset)
                total += len(page)
                offset += len(page)
                if len(page) < 200:
                    return total

    last, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        now = count()
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


def flow_records(out: str) -> dict:
    """sha256 of every shard the flow committed, keyed like the plain loop's records."""
    from minority_core.io import ShardStore

    manifest = ShardStore(out).read_manifest()
    return {key: record.sha256 for key, record in manifest.shards.items()}


def same_bytes(a: dict, b: dict) -> str:
    common = sorted(set(a) & set(b))
    return f"{sum(a[k] == b[k] for k in common)}/{max(len(a), len(b))}"


class FlowRunner:
    """Runs the synthesis flow, timing its pool start and metering CPU per process role."""

    def __init__(self) -> None:
        import flows.synthesize as synth

        self.synth = synth
        self.original_make_pool = synth.make_pool
        self.pool_seconds = 0.0
        self.meter: CpuMeter | None = None
        synth.make_pool = self._timed_make_pool

    def _timed_make_pool(self, config):
        from tasks.ray_pool import call

        start = time.perf_counter()
        pool = self.original_make_pool(config)
        self.pool_seconds = time.perf_counter() - start
        if self.meter is not None:  # actors are counted from here on: their start and model load are the pool's
            self.meter.actor_pids = {call(actor, "ping") for actor in pool.actors}
            for pid in self.meter.actor_pids:
                self.meter.before[pid] = ("actor", cpu_seconds(pid) or 0.0)
            shutdown, meter = pool.shutdown, self.meter

            def metered_shutdown() -> None:
                meter.sample()
                shutdown()

            pool.shutdown = metered_shutdown
        return pool

    def run(self, config) -> dict:
        self.pool_seconds = 0.0
        self.meter = CpuMeter()
        start = time.perf_counter()
        state = self.synth.synthesize(config, return_state=True)
        wall = time.perf_counter() - start
        summary = state.result()
        cpu = self.meter.totals()
        return {"wall": wall, "pool": self.pool_seconds, "summary": summary, "cpu": cpu,
                "task_runs": task_run_count(state.state_details.flow_run_id), "records": flow_records(config.output.out)}

    def close(self) -> None:
        self.synth.make_pool = self.original_make_pool


def fit_power(xs: list[float], ys: list[float]) -> float:
    """Least-squares exponent k of y ≈ c · x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y ≈ a + b · x."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)
    return my - slope * mx, slope


# ---------------------------------------------------------------- the two parts


def overhead_part(args, tmp: Path, runner: FlowRunner, say) -> None:
    """(1) overhead share of wall time at a run of a few minutes, 1 and 2 workers."""
    n = args.num_samples
    shards = -(-n // args.shard_size)
    sampler = make_config(args, str(tmp / "check"), 1).sampler
    g = sampler.guidance
    say(f"(1) overhead at a run of a few minutes: model {args.model}, {n} samples in {shards} shards of {args.shard_size}, {sampler.sampler} "
        f"{sampler.steps} steps, guidance {'none' if g is None else f'w={g.scale} every={g.every}'}, batch {sampler.batch_size}")
    plain = {}
    for threads in (2, 1):
        result = plain_loop(make_config(args, str(tmp / f"plain-{threads}t"), 1), threads)
        plain[threads] = result
        say(f"plain loop, {threads} torch thread(s): set-up {result['setup']:.1f} s (model + extractor), "
            f"loop {result['loop']:.1f} s, {n / result['loop']:.1f} samples/s")
    torch.set_num_threads(2)
    runs = {}
    for workers in args.workers:
        run = runner.run(make_config(args, str(tmp / f"flow-{workers}w"), workers))
        runs[workers] = run
        in_worker = (run["summary"]["seconds_per_sample"] or 0.0) * n
        say(f"flow, {workers} Ray worker(s): wall {run['wall']:.1f} s, of which pool start (actors + model load) {run['pool']:.1f} s, "
            f"Prefect flow-run bookkeeping outside the flow body {run['wall'] - run['summary']['seconds']:.1f} s; "
            f"in-actor shard time {in_worker:.1f} s summed over actors; {n / run['wall']:.1f} samples/s; {run['task_runs']} task runs")
        outside = run["wall"] - in_worker / workers
        say(f"    outside the actors' shard work (wall - in-actor time / workers, robust to load that slows both sides alike): {outside:.1f} s "
            f"= {100 * outside / run['wall']:.1f} % of wall, of which pool start {run['pool']:.1f} s; the rest {1000 * (outside - run['pool']) / shards:.0f} ms per shard")
        cpu = run["cpu"]
        say(f"    CPU: actors {cpu.get('actor', 0):.1f} s (plain loop {plain[min(workers, 2)]['cpu']:.1f} s), driver {cpu.get('driver', 0):.1f} s, "
            f"Prefect API {cpu.get('prefect api', 0):.1f} s, Ray's own processes {cpu.get('ray', 0):.1f} s")

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
    for workers, threads, ratio, steady in (r for r in rows if r[0] == r[1]):
        verdict = "meets" if ratio - 1 <= TARGET_OVERHEAD else "MISSES"
        say(f"overhead at {workers} worker(s) vs plain {threads} thread(s): {100 * (ratio - 1):+.1f} % of wall time "
            f"({100 * (steady - 1):+.1f} % without pool start; target <= {100 * TARGET_OVERHEAD:.0f} %; {verdict} it)")


def scaling_part(args, tmp: Path, runner: FlowRunner, say) -> None:
    """(2) per-shard overhead and growth with a near-free model, shards of one sample, 1 worker.

    Plain loop and flow run alternately `--repeat` times per N and the fastest of each counts,
    so a burst of load from other processes does not decide the figure."""
    def cfg(name: str, n: int, workers: int = 1):
        return make_config(args, str(tmp / f"{name}-{n}-{workers}w"), workers, num_samples=n, shard_size=1, steps=args.scaling_steps)

    cold = min(cold_setup(cfg("cold", 1)) for _ in range(args.repeat))
    say(f"(2) per-shard cost, near-free model: {args.model}, {args.scaling_steps} steps, shards of 1 sample, 1 Ray worker vs the plain loop "
        f"with 1 thread; fastest of {args.repeat}. A fresh process takes {cold:.1f} s to import the worker and load the model (cold set-up)")
    say("    overhead/shard = (flow wall - plain wall) / N with plain wall = the loop (warm: this process loaded the model already); "
        "'cold' adds the cold set-up to the plain wall, 'excl. pool' leaves the flow's actor start out")
    say(f"{'shards':>7} {'plain s':>8} {'flow s':>8} {'pool s':>7} {'in actor s':>11} | {'overhead ms/shard':>18} {'cold':>6} "
        f"{'excl. pool':>11} | {'task runs':>9} | cpu ms/shard: {'plain':>6} {'actor':>6} {'driver':>7} {'prefect':>8} {'ray':>5} | {'same bytes':>10}")
    sizes, walls, plains, generation = [], [], [], []
    for n in args.scaling_shards:
        plain = run = None
        for _ in range(args.repeat):
            for folder in (tmp / f"plain-{n}-1w", tmp / f"flow-{n}-1w"):
                shutil.rmtree(folder, ignore_errors=True)
            p = plain_loop(cfg("plain", n), 1)
            torch.set_num_threads(2)
            r = runner.run(cfg("flow", n))
            plain = p if plain is None or p["loop"] < plain["loop"] else plain
            run = r if run is None or r["wall"] < run["wall"] else run
        in_actor = (run["summary"]["seconds_per_sample"] or 0.0) * n
        cpu = {role: 1000 * seconds / n for role, seconds in run["cpu"].items()}
        say(f"{n:>7} {plain['loop']:>8.1f} {run['wall']:>8.1f} {run['pool']:>7.1f} {in_actor:>11.1f} | "
            f"{1000 * (run['wall'] - plain['loop']) / n:>18.1f} {1000 * (run['wall'] - cold - plain['loop']) / n:>6.1f} "
            f"{1000 * (run['wall'] - run['pool'] - plain['loop']) / n:>11.1f} | {run['task_runs']:>9} | "
            f"{' ' * 14}{1000 * plain['cpu'] / n:>6.1f} {cpu.get('actor', 0):>6.1f} {cpu.get('driver', 0):>7.1f} {cpu.get('prefect api', 0):>8.1f} "
            f"{cpu.get('ray', 0):>5.1f} | {same_bytes(run['records'], plain['records']):>10}")
        sizes.append(n)
        walls.append(run["wall"])
        plains.append(plain["loop"])
        generation.append(run["wall"] - run["pool"])
    fixed, slope = fit_line(sizes, walls)
    plain_fixed, plain_slope = fit_line(sizes, plains)
    say(f"flow wall ≈ {fixed:.1f} s + {1000 * slope:.1f} ms · N; plain loop ≈ {plain_fixed:.1f} s + {1000 * plain_slope:.1f} ms · N")
    say(f"growth exponent vs N (target ≈ 1.0): flow wall {fit_power(sizes, walls):.2f}, flow wall without pool start {fit_power(sizes, generation):.2f}, "
        f"plain loop {fit_power(sizes, plains):.2f}")
    for n, wall, plain_wall in zip(sizes, walls, plains, strict=True):
        per_shard = 1000 * (wall - plain_wall) / n
        say(f"orchestration per shard at {n} shards: {per_shard:.1f} ms amortised (fixed costs included; "
            f"{1000 * (wall - cold - plain_wall) / n:.1f} ms against a cold plain run); target <= {TARGET_PER_SHARD_MS:.0f} ms; "
            f"{'meets' if per_shard <= TARGET_PER_SHARD_MS else 'MISSES'} it")
    say(f"marginal orchestration per shard (slope of the fits, fixed costs drop out): {1000 * (slope - plain_slope):.1f} ms")
    if args.scaling_workers > 1:
        n = sizes[len(sizes) // 2]
        two = runner.run(cfg("flow", n, args.scaling_workers))
        one = generation[len(sizes) // 2]
        say(f"{args.scaling_workers} workers at {n} shards: wall {two['wall']:.1f} s, pool start {two['pool']:.1f} s, {two['task_runs']} task runs; "
            f"speed-up over 1 worker without pool start {one / (two['wall'] - two['pool']):.2f}x "
            f"(with it {walls[len(sizes) // 2] / two['wall']:.2f}x)")


def main() -> None:
    args = parse_args()
    check_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    log = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        log.append(line)

    first = make_config(args, str(tmp / "check"), max(args.workers))
    say(f"cpu cores {os.cpu_count()}, load (uptime) at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}, extractor "
        f"{first.output.extractor}, outputs under {tmp}")

    # warm this process's torch kernels so the first plain run is not charged for lazy init
    plain_loop(make_config(args, str(tmp / "warm-plain"), 1, num_samples=2, shard_size=1, steps=2), 2)

    import ray
    from prefect import flow

    from tasks.ray_pool import ensure_ray

    @flow(name="bench-noop")
    def noop() -> None:
        return None

    start = time.perf_counter()
    noop()
    prefect_start = time.perf_counter() - start
    cpus = max(*args.workers, args.scaling_workers)
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)  # read by the raylet this process starts
    start = time.perf_counter()
    ensure_ray(num_cpus=cpus)
    ray_init = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def actor_threads():
        import torch as t

        return t.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.getpriority(os.PRIO_PROCESS, 0)

    actor_torch_threads, actor_omp, actor_nice = ray.get(actor_threads.remote())
    runner = FlowRunner()
    start = time.perf_counter()
    runner.synth.synthesize(make_config(args, str(tmp / "flow-warmup"), cpus, num_samples=1, shard_size=1, steps=2))
    warmup = time.perf_counter() - start
    say(f"fixed start-up, once per process: Prefect ephemeral server + first flow run {prefect_start:.1f} s, "
        f"ray.init(num_cpus={cpus}) {ray_init:.1f} s, warm-up flow run (1 shard of 1 sample, {cpus} actors) {warmup:.1f} s")
    say(f"a Ray task with num_cpus=1 sees torch threads = {actor_torch_threads} (OMP_NUM_THREADS={actor_omp}) and runs at niceness {actor_nice} "
        f"(this process: {os.getpriority(os.PRIO_PROCESS, 0)})")
    say()
    try:
        if args.part in ("all", "overhead"):
            overhead_part(args, tmp, runner, say)
            say()
        if args.part in ("all", "scaling"):
            scaling_part(args, tmp, runner, say)
    finally:
        runner.close()
    say(f"load (uptime) at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    ray.shutdown()
    if args.keep:
        print(f"outputs kept under {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
