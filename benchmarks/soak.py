"""Soak test: the fault matrix at larger sizes, then a long synthesis run with faults injected at random.

(0) The fault matrix (#16 item 5): every cell of tests/faults/ in one pytest session, the
    cluster cells included (a real two-node `ray start` cluster: node loss, head loss), and the
    writer and outage cells (concurrent writers with the same and a different config, lease
    expiry, storage outage during commit, for synthesize, score and build-reference) at
    --cell-samples samples. Printed as a table: cell, outcome, samples, byte-identical, seconds.
    Every cell asserts its exact sample count and its byte comparison with a clean run, so a
    passed cell is both. `--only matrix` stops here; `--only random` skips it.

(1) A clean run (no faults) of the synthesis flow into a local temporary folder, timed.
(2) The same config (same seed) into s3://<bucket>/soak on a moto_server on 127.0.0.1, through
    a fault-injecting HTTP proxy (tests/faults/s3proxy.py) that answers a share of all storage
    requests with 503 or drops the connection (before or after moto saw the request). The S3
    client's own retries are off, so the faults reach the pipeline's retry layer (as in
    tests/faults/test_storage_faults.py). Meanwhile a background thread kills a random live
    ShardWorker actor of the run at random (exponential) intervals: `ray.kill(no_restart=False)`
    or SIGKILL of the actor's process, whose pid comes from Ray's GCS actor table
    (`ray.util.state.list_actors` needs the dashboard, which the pipeline does not start).
(3) The faulty run's output is read back from moto directly (not through the proxy) and
    checked: every planned shard committed, each stored shard's sha256 equal to the manifest's,
    rows summing to num_samples, unique sample ids, and every shard byte-identical to the
    clean run's.

The summary gives shards planned, actor kills, storage faults injected, shards lost (must be 0),
samples duplicated (must be 0) and the throughput cost of the faults. The exit status is 1 when
any check fails (a lost shard, a duplicated sample, bytes that differ from the clean run, or a
faulty run that did not complete), 2 when the soak itself could not run.

Nothing in the pipeline is changed: the script only observes it (it wraps
`flows.synthesize.make_pool` to learn the actors of the run and `ManifestCommitter.commit` to
count commits). The clean run writes to local disk and the faulty one to moto over HTTP, so the
throughput cost also includes that difference (small next to sampling at the default sizes).

Actors restart without limit (tasks.ray_pool.ACTOR_MAX_RESTARTS = -1): an earlier per-actor
budget of 4 restarts made a run fail after ~4 kills per actor, which this script found.

Default sizes (1024 samples in 16 shards of 64, 100 steps, 2 workers, bundled:digits): measured
with the restart budget kept, 1536 samples took 201 s clean and 541 s faulty with the 2 cores
shared (load 6-12); 1024 samples aim at a faulty run of about 5 min.

    python benchmarks/soak.py --only matrix --cell-samples 96   # the matrix alone
    python benchmarks/soak.py                                   # the matrix, then a ~5 min faulty run (plus the clean one)
    python benchmarks/soak.py --num-samples 512 --shard-size 32 --steps 20 --kill-every 8
    python benchmarks/soak.py --duration-scale 4                # ~20 min
"""

from __future__ import annotations

import os
import sys
import tempfile

from _common import private_prefect_home  # first: env defaults before prefect / ray / torch (docs/DESIGN.md §7)

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # one log line per task run would drown the soak's own lines
private_prefect_home("soak-prefect-home-")
os.environ["AWS_ACCESS_KEY_ID"] = "testing"  # moto's test credentials; actors inherit them through Ray
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)
# the soak kills actors: it must run on a private local Ray, never on a cluster named by RAY_ADDRESS
_IGNORED_RAY_ADDRESS = os.environ.pop("RAY_ADDRESS", None)

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.faults.s3proxy is not part of the installed packages

BUCKET = "soak"  # the run goes to s3://soak/soak
NO_CLIENT_RETRIES = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-scale", type=float, default=1.0, help="multiply --num-samples (the run's length) by this (default 1: ~5 min faulty run on 2 cores)")
    p.add_argument("--num-samples", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="Ray CPU actors (≥ 1)")
    p.add_argument("--storage-fault-share", type=float, default=0.05, help="share of all storage requests that fail (503 / dropped connection), 0..1")
    p.add_argument("--kill-every", type=float, default=20.0, help="mean seconds between actor kills (exponential intervals); 0 = no kills")
    p.add_argument("--kill-mode", choices=("mixed", "ray", "sigkill"), default="mixed", help="ray.kill(no_restart=False), SIGKILL of the actor process, or either at random")
    p.add_argument("--model", default="bundled:digits", help="any load_model spec: bundled:digits, diffusers:PATH, adm:PATH")
    p.add_argument("--extractor", default=None, help="feature extractor (default: the model preset's; use pixels for a random model)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (both runs) and the kill schedule's")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines during the faulty run")
    p.add_argument("--keep", action="store_true", help="keep the clean run's output folder and moto's log (printed)")
    p.add_argument("--only", choices=("matrix", "random"), help="run only the fault matrix's cells, or only the random soak (default: both)")
    p.add_argument("--cell-samples", type=int, default=96, help="samples of each writer / outage cell of the matrix (the suite runs them at 24)")
    args = p.parse_args()
    if args.duration_scale <= 0:
        p.error("--duration-scale must be > 0")
    args.num_samples = max(1, round(args.num_samples * args.duration_scale))
    if args.shard_size < 1 or args.workers < 1:
        p.error("--shard-size and --workers must be ≥ 1")
    if not 0.0 <= args.storage_fault_share < 1.0:
        p.error("--storage-fault-share must be in [0, 1)")
    if args.kill_every < 0:
        p.error("--kill-every must be ≥ 0")
    if args.cell_samples < 16 or args.cell_samples % 8:
        p.error("--cell-samples must be a multiple of 8 (the cells' shard size), at least 16 (two shards)")
    return args


def say(line: str = "") -> None:
    print(line, flush=True)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text[:400]}"


# ---------------------------------------------------------------- moto on loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the test extras (pip install -e '.[test]')")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}; see {log}") from None
            time.sleep(0.1)


# ---------------------------------------------------------------- observing the pipeline


class Observer:
    """Learns the faulty run's actor pool and counts commits, without changing what the flow does."""

    def __init__(self) -> None:
        self.active = False
        self.pool = None
        self.final_states: dict[str, dict] = {}  # actor id -> GCS state just before the pool's shutdown
        self.commits: list[tuple[int, int]] = []  # (shard index, pid that generated it)
        self.lock = threading.Lock()

    def install(self) -> None:
        import flows.synthesize as synth
        from minority_core.runs.commit import ManifestCommitter

        make_pool, commit = synth.make_pool, ManifestCommitter.commit
        observer = self

        def observed_make_pool(config):
            pool = make_pool(config)
            if observer.active and hasattr(pool, "actors"):
                shutdown = pool.shutdown

                def observed_shutdown() -> None:
                    observer.final_states = {actor_id(a): s for a in pool.actors if (s := gcs_actor_states().get(actor_id(a)))}
                    shutdown()

                pool.shutdown = observed_shutdown
                observer.pool = pool
            return pool

        def observed_commit(committer, result):
            done = commit(committer, result)
            if observer.active:
                with observer.lock:
                    observer.commits.append((result.index, result.pid))
            return done

        synth.make_pool = observed_make_pool
        ManifestCommitter.commit = observed_commit


def actor_id(handle) -> str:
    return handle._actor_id.hex()


def gcs_actor_states() -> dict[str, dict]:
    """Ray's actor table straight from the GCS (state, pid, restarts): works without the dashboard."""
    try:
        import ray._private.state as ray_state

        return {k: {"State": v.get("State"), "Pid": v.get("Pid"), "NumRestarts": v.get("NumRestarts", 0)} for k, v in ray_state.actors().items()}
    except Exception:
        return {}


def is_descendant(pid: int) -> bool:
    """True iff `pid` is a (grand)child of this process: the actor processes of the Ray this script started."""
    me = os.getpid()
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


class Killer(threading.Thread):
    """Kills a random live actor of the observed pool at exponential intervals (mean `every` s)."""

    def __init__(self, observer: Observer, every: float, mode: str, budget: int | None, seed: int, t0: float) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.observer, self.every, self.mode, self.budget, self.t0 = observer, every, mode, budget, t0
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills: list[dict] = []
        self.per_actor: dict[str, int] = {}
        self.skipped = 0  # kill times at which no actor was alive (restarting) or within budget
        self.errors: list[str] = []

    def run(self) -> None:
        import ray

        while not self.stop.wait(self.rng.expovariate(1.0 / self.every)):
            pool = self.observer.pool
            actors = list(getattr(pool, "actors", []) or [])
            if not actors:
                continue
            states = gcs_actor_states()
            alive = [a for a in actors if states.get(actor_id(a), {}).get("State", "ALIVE") == "ALIVE"]
            if self.budget is not None:
                alive = [a for a in alive if self.per_actor.get(actor_id(a), 0) < self.budget]
            if not alive:
                self.skipped += 1
                continue
            victim = self.rng.choice(alive)
            aid = actor_id(victim)
            how = self.mode if self.mode != "mixed" else self.rng.choice(("ray", "sigkill"))
            pid = states.get(aid, {}).get("Pid")
            try:
                if how == "sigkill" and pid and is_descendant(int(pid)):
                    os.kill(int(pid), signal.SIGKILL)
                else:
                    how = "ray"  # no pid known, or not ours: let Ray kill it
                    ray.kill(victim, no_restart=False)
            except Exception as err:
                self.errors.append(one_line(err))
                continue
            self.per_actor[aid] = self.per_actor.get(aid, 0) + 1
            restarts = states.get(aid, {}).get("NumRestarts", "?")
            self.kills.append({"t": time.monotonic() - self.t0, "how": how, "actor": aid, "pid": pid})
            say(f"[{time.monotonic() - self.t0:7.1f} s] kill #{len(self.kills)}: "
                f"{'SIGKILL pid ' + str(pid) if how == 'sigkill' else 'ray.kill(no_restart=False)'} of actor {aid[:8]} "
                f"(its kill #{self.per_actor[aid]}; restarts so far {restarts})")


class Progress(threading.Thread):
    def __init__(self, observer: Observer, proxy, total: int, every: float, t0: float) -> None:
        super().__init__(name="soak-progress", daemon=True)
        self.observer, self.proxy, self.total, self.every, self.t0 = observer, proxy, total, every, t0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            with self.observer.lock:
                done = len({i for i, _ in self.observer.commits})
            say(f"[{time.monotonic() - self.t0:7.1f} s] progress: {done}/{self.total} shards committed, "
                f"{self.proxy.failures}/{self.proxy.requests} storage requests failed so far")


# ---------------------------------------------------------------- the checks


def raw_manifest_duplicates(store) -> int:
    """Keys recorded more than once in the stored manifest JSON (a shard committed twice)."""
    counts: list[int] = []

    def hook(pairs):
        keys = [k for k, _ in pairs]
        counts.append(len(keys) - len(set(keys)))
        return dict(pairs)

    json.loads(store.fs.cat_file(store._abs("manifest.json")), object_pairs_hook=hook)
    return sum(counts)


def verify(store, num_samples: int, shard_size: int, extractor: str, clean: dict[str, str]) -> dict:
    """Check the faulty run's output on storage against its manifest and the clean run's hashes."""
    from minority_core.io import StorageError

    total = -(-num_samples // shard_size)
    kinds = ("samples", f"features/{extractor}")
    result = {"planned": total, "committed": 0, "lost": [], "corrupt": [], "differs": [], "rows": 0,
              "ids": 0, "duplicated": 0, "manifest_duplicates": 0, "feature_id_mismatch": [], "extra_files": [], "error": None}
    try:
        manifest = store.read_manifest()
    except (StorageError, ValueError) as err:
        result["error"] = one_line(err)
        manifest = None
    if manifest is None:
        result["lost"] = list(range(total))
        return result
    result["manifest_duplicates"] = raw_manifest_duplicates(store)
    records = {(r.kind, r.index): r for r in manifest.shards.values()}
    all_ids: list[str] = []
    for k in range(total):
        recs = [records.get((kind, k)) for kind in kinds]
        if any(r is None for r in recs):
            result["lost"].append(k)
            continue
        ok = True
        tables = []
        for r in recs:
            if not store.verify(r):  # stored bytes: sha256 and size equal to the manifest's
                result["corrupt"].append(r.key)
                ok = False
                continue
            tables.append(store.read_shard(r))  # verifies again, and the row count
            if clean.get(r.key) != r.sha256:
                result["differs"].append(r.key)
        if not ok:
            result["lost"].append(k)
            continue
        result["committed"] += 1
        ids = tables[0].column("sample_id").to_pylist()
        if tables[1].column("sample_id").to_pylist() != ids:
            result["feature_id_mismatch"].append(k)
        result["rows"] += len(ids)
        all_ids += ids
    # shard files on storage that the manifest does not name (a glob reader would see them)
    for kind in kinds:
        named = {i for (kd, i) in records if kd == kind}
        result["extra_files"] += [f"{kind}/{i:05d}" for i in store.list_indices(kind) if i not in named]
    for key in result["extra_files"]:
        if key.startswith("samples/"):
            all_ids += store.read_shard(("samples", int(key.rsplit("/", 1)[1])), verify=False).column("sample_id").to_pylist()
    result["ids"] = len(all_ids)
    result["duplicated"] = len(all_ids) - len(set(all_ids)) + result["manifest_duplicates"]
    return result


# ---------------------------------------------------------------- main


def make_config(args, out: str, storage_options: dict | None = None):
    from minority_core.config import SynthesisConfig

    return SynthesisConfig.from_options(
        model=args.model, num_samples=args.num_samples, shard_size=args.shard_size, out=out, steps=args.steps,
        extractor=args.extractor, workers=args.workers, seed=args.seed, storage_options=storage_options or {},
    )


# ---------------------------------------------------------------- the fault matrix

MATRIX = {  # test module -> samples of its cells (None: CELL_SAMPLES, set by --cell-samples)
    "test_writers.py": None,  # concurrent writers (same / different config), lease expiry
    "test_commit_outage.py": None,  # storage outage during score's commit and build-reference's save
    "test_storage_faults.py": 24,  # synthesize: flaky endpoint, endpoint dying mid-run, moto restart
    "test_flow_sigkill.py": 24,  # synthesize's own process SIGKILLed, rerun
    "test_actor_kill.py": 24,  # actors killed mid-run
    "test_node_loss.py": 64,  # a real two-node cluster: node loss, head loss, unanswered address, grow back
}


def run_matrix(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], bool]:
    """Every cell of the fault matrix (tests/faults/, the cluster cells included), in one pytest
    session, the writer and outage cells at --cell-samples; rows of (cell, outcome, samples,
    byte-identical, seconds). A cell passes only if its exact count and its byte comparison with a
    clean run hold (each asserts both), so "byte-identical" is "yes" exactly for passed cells."""
    import xml.etree.ElementTree as ET

    report = Path(tempfile.mkdtemp(prefix="soak-matrix-")) / "junit.xml"
    env = {**os.environ, "MINORITY_FAULT_CELL_SAMPLES": str(args.cell_samples)}
    for key in ("PREFECT_HOME", "PREFECT_API_URL"):  # pytest starts its own (tests/conftest.py)
        env.pop(key, None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "integration or cluster or not integration",
           f"--basetemp={report.parent / 'bt'}", f"--junitxml={report}", *(f"tests/faults/{m}" for m in MATRIX)]
    say(f"(matrix) {' '.join(cmd[2:])}  [MINORITY_FAULT_CELL_SAMPLES={args.cell_samples}]")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    say(f"    pytest exit {done.returncode} after {time.perf_counter() - start:.0f} s")
    rows, ok = [], done.returncode == 0
    if not report.exists():
        say(done.stdout[-3000:] + done.stderr[-3000:])
        return [("matrix", "DID NOT RUN", "-", "-", "-")], False
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1] + ".py"
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcome = "FAILED" if failed else "skipped" if skipped else "passed"
        samples = MATRIX.get(module) or args.cell_samples
        rows.append((f"{module[:-3]}::{case.get('name')}", outcome, str(samples), "yes" if outcome == "passed" else "no" if failed else "-",
                     f"{float(case.get('time', 0)):.1f}"))
        ok = ok and not failed
    shutil.rmtree(report.parent, ignore_errors=True)
    return rows, ok


def print_matrix(rows: list[tuple[str, ...]]) -> None:
    header = ("cell", "outcome", "samples", "byte-identical", "seconds")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    say()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        say("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main() -> int:
    args = parse_args()
    matrix_ok = True
    if args.only != "random":
        rows, matrix_ok = run_matrix(args)
        print_matrix(rows)
        say("MATRIX: " + ("PASS: every cell ended with an exact count and the bytes of a clean run" if matrix_ok else "FAIL"))
        if args.only == "matrix":
            return 0 if matrix_ok else 1
    code = random_soak(args)
    return code if code else (0 if matrix_ok else 1)


def random_soak(args: argparse.Namespace) -> int:
    """Random actor kills and storage faults on one long run (the original soak), checked."""
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    moto = proxy = None
    ray_started = False
    try:
        try:
            first = make_config(args, str(tmp / "clean"))
        except ValueError as err:
            say(f"error: {err}")
            return 2
        from tasks.ray_pool import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES

        shards = -(-args.num_samples // args.shard_size)
        sampler = first.sampler_config()
        g = sampler.guidance
        extractor = first.resolved_extractor()
        say(f"soak: model {args.model}, {args.num_samples} samples in {shards} shards of {args.shard_size}, {sampler.sampler} {sampler.steps} steps, "
            f"guidance {'none' if g is None else f'w={g.scale} every={g.every}'}, extractor {extractor}, {args.workers} Ray worker(s), seed {args.seed}")
        say(f"faults: storage {100 * args.storage_fault_share:.1f} % of requests (503 / drop / drop_after, S3 client retries off), "
            + (f"actor kills every {args.kill_every:g} s on average ({args.kill_mode}"
               + ")" if args.kill_every > 0 else "no actor kills")
            + f"; Ray: max_restarts={ACTOR_MAX_RESTARTS}, max_task_retries={ACTOR_MAX_TASK_RETRIES} per actor")
        say(f"cpu cores {os.cpu_count()}, load (uptime) at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}, scratch {tmp}")
        if _IGNORED_RAY_ADDRESS:
            say(f"note: RAY_ADDRESS={_IGNORED_RAY_ADDRESS} ignored: the soak kills actors, so it runs on a private local Ray")

        moto, endpoint = start_moto(tmp / "moto.log")
        import s3fs

        direct = {"client_kwargs": {"endpoint_url": endpoint}}
        s3fs.S3FileSystem(**direct, skip_instance_cache=True).mkdir(BUCKET)
        from tests.faults.s3proxy import FaultProxy

        proxy = FaultProxy(endpoint, share=args.storage_fault_share).__enter__()
        say(f"moto_server {endpoint}, fault proxy {proxy.url}")

        # fixed start-up costs, outside both timings: the Prefect ephemeral API and ray.init
        import ray
        from prefect import flow

        import flows.synthesize as synth
        from minority_core.io import ShardStore
        from tasks.ray_pool import ensure_ray

        @flow(name="soak-warmup")
        def warmup() -> None:
            return None

        start = time.perf_counter()
        warmup()
        prefect_start = time.perf_counter() - start
        start = time.perf_counter()
        ensure_ray(num_cpus=args.workers)
        ray_started = True
        say(f"start-up (not timed below): Prefect API {prefect_start:.1f} s, ray.init {time.perf_counter() - start:.1f} s")

        observer = Observer()
        observer.install()

        # (1) clean run
        say("(1) clean run (no faults) into a local folder ...")
        start = time.perf_counter()
        clean_summary = synth.synthesize(first)
        clean_wall = time.perf_counter() - start
        clean_manifest = ShardStore(first.out).read_manifest()
        clean_hashes = {k: r.sha256 for k, r in clean_manifest.shards.items()}
        if clean_summary["samples"] != args.num_samples or len(clean_hashes) != 2 * shards:
            say(f"error: the clean run is incomplete ({clean_summary}); nothing to compare the faulty run with")
            return 2
        say(f"    clean run: {clean_wall:.1f} s, {args.num_samples / clean_wall:.2f} samples/s")

        # (2) faulty run
        url = f"s3://{BUCKET}/soak"
        faulty = make_config(args, url, {"client_kwargs": {"endpoint_url": proxy.url}, **NO_CLIENT_RETRIES})
        say(f"(2) faulty run into {url} through the fault proxy ...")
        t0 = time.monotonic()
        observer.active = True
        budget = None
        killer = Killer(observer, args.kill_every, args.kill_mode, budget, args.seed, t0) if args.kill_every > 0 else None
        progress = Progress(observer, proxy, shards, args.progress_every, t0)
        if killer:
            killer.start()
        progress.start()
        flow_error = None
        start = time.perf_counter()
        try:
            synth.synthesize(faulty)
        except Exception as err:
            flow_error = one_line(err)[:240]
        faulty_wall = time.perf_counter() - start
        for thread in (killer, progress):
            if thread:
                thread.stop.set()
                thread.join(timeout=30)
        observer.active = False
        requests, injected = proxy.requests, dict(proxy.injected)
        say(f"    faulty run: {faulty_wall:.1f} s" + (f"; FAILED: {flow_error}" if flow_error else ""))

        # (3) checks, reading moto directly
        say("(3) checking the faulty run's output (read from moto directly) ...")
        check = verify(ShardStore(url, direct), args.num_samples, args.shard_size, extractor, clean_hashes)
        kills = killer.kills if killer else []
        by_how = {h: sum(k["how"] == h for k in kills) for h in ("ray", "sigkill")}
        restarts = sum(int(s.get("NumRestarts") or 0) for s in observer.final_states.values())
        dead = sum(s.get("State") == "DEAD" for s in observer.final_states.values())
        commit_count = len(observer.commits)
        shard_commits = len({i for i, _ in observer.commits})
        faulty_samples = check["rows"]
        clean_sps = args.num_samples / clean_wall
        faulty_sps = faulty_samples / faulty_wall if faulty_wall > 0 else 0.0
        cost = 100.0 * (1.0 - faulty_sps / clean_sps)

        rows = [
            ("shards planned", f"{shards}"),
            ("actor kills", f"{len(kills)} ({by_how['ray']} ray.kill, {by_how['sigkill']} SIGKILL)"
             + (f"; {killer.skipped} skipped (no actor alive and within budget)" if killer and killer.skipped else "")
             + (f"; {len(killer.errors)} kill errors" if killer and killer.errors else "")),
            ("actor restarts seen by Ray", f"{restarts} over {len(observer.final_states)} actors; {dead} dead for good before shutdown"
             if observer.final_states else "n/a (pool state not observed)"),
            ("storage requests via proxy", f"{requests}"),
            ("storage faults injected", f"{sum(injected.values())} (503: {injected['503']}, drop: {injected['drop']}, drop_after: {injected['drop_after']})"),
            ("faulty flow run", "completed" if flow_error is None else f"FAILED: {flow_error}"),
            ("shards committed", f"{check['committed']}/{shards} (commit calls {commit_count} for {shard_commits} distinct shards)"),
            ("shards lost (planned, not committed)", f"{len(check['lost'])}" + (f"  {check['lost'][:20]}" if check["lost"] else "")),
            ("shards corrupt on storage", f"{len(check['corrupt'])}" + (f"  {check['corrupt'][:10]}" if check["corrupt"] else "")),
            ("samples duplicated", f"{check['duplicated']} (ids read {check['ids']}, manifest keys recorded twice {check['manifest_duplicates']})"),
            ("rows", f"{check['rows']} of {args.num_samples}"),
            ("shards byte-identical to clean", f"{2 * check['committed'] - len(check['differs'])}/{2 * check['committed']} committed shard files (samples + features)"),
            ("feature ids == sample ids", "yes" if not check["feature_id_mismatch"] else f"NO for shards {check['feature_id_mismatch'][:10]}"),
            ("shard files not in manifest", f"{len(check['extra_files'])}" + (f"  {check['extra_files'][:10]}" if check["extra_files"] else "")),
            ("wall time clean / faulty", f"{clean_wall:.1f} s / {faulty_wall:.1f} s"),
            ("samples/s clean / faulty", f"{clean_sps:.2f} / {faulty_sps:.2f}" + ("  (faulty: committed samples only)" if flow_error else "")),
            ("throughput cost of faults", f"{cost:+.1f} %  (1 - faulty/clean samples/s; includes local disk vs S3-over-HTTP)"),
        ]
        if check["error"]:
            rows.append(("manifest", f"unreadable: {check['error']}"))
        width = max(len(k) for k, _ in rows)
        say()
        say(f"{'soak summary':<{width}}  value")
        say(f"{'-' * width}  {'-' * 40}")
        for key, value in rows:
            say(f"{key:<{width}}  {value}")
        say(f"load (uptime) at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if killer and killer.errors:
            say(f"kill errors: {killer.errors[:5]}")
        exhausted = [a for a, s in observer.final_states.items() if s.get("State") == "DEAD"]
        if exhausted and killer:
            say(f"diagnosis: actor(s) {', '.join(a[:8] for a in exhausted)} killed "
                f"{', '.join(str(killer.per_actor.get(a, 0)) for a in exhausted)} time(s) > max_restarts={ACTOR_MAX_RESTARTS}: "
                "Ray no longer restarts them and the pool keeps lending them, so every shard given to them fails")

        failures = []
        if check["lost"]:
            failures.append(f"{len(check['lost'])} shard(s) lost")
        if check["duplicated"]:
            failures.append(f"{check['duplicated']} sample(s) duplicated")
        if check["corrupt"]:
            failures.append(f"{len(check['corrupt'])} corrupt shard file(s)")
        if check["differs"]:
            failures.append(f"{len(check['differs'])} shard file(s) differ from the clean run")
        if check["feature_id_mismatch"]:
            failures.append("feature ids differ from sample ids")
        if check["rows"] != args.num_samples and not check["lost"]:
            failures.append(f"{check['rows']} rows instead of {args.num_samples}")
        if flow_error:
            failures.append("the faulty flow run failed")
        say("RESULT: " + ("PASS: no shard lost, no sample duplicated, output byte-identical to the clean run" if not failures else "FAIL: " + "; ".join(failures)))
        return 1 if failures else 0
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if proxy is not None:
            proxy.__exit__(None, None, None)
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(timeout=10)
            except subprocess.TimeoutExpired:
                moto.kill()
        if args.keep:
            say(f"kept: {tmp} (clean run output, moto.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
