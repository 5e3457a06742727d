"""A real two-node Ray cluster on this machine: a lost node costs only its shards in flight, a
lost head ends the run in one line, and an address nobody answers fails in seconds.

Real processes, nothing mocked: `ray start --head` and `ray start --address` (one CPU each,
separate temp dirs, loopback), `minority-synth synthesize --ray-address` as a subprocess, and
SIGKILL to every process of one node. A node's processes are found by psutil: those whose
command line names its temp dir, those carrying its marker in their environment (everything
`ray start` and its raylet started, agents whose raylet is gone included). Only this test's
processes are ever killed: the session's own local Ray, and any other on the machine, is left
alone (no `ray stop`, which stops every Ray of the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from minority_core.config import SynthesisConfig
from minority_core.io import ShardStore
from minority_synth.env import DEFAULTS
from tests.conftest import free_port, wait_for_port

from .helpers import FEATURES, check_output, in_process_reference

BIN = Path(sys.executable).parent
MARK = "MINORITY_NODE_LOSS_MARK"
# 8 shards of about 1 s each on one core: the run is still going when a node is killed.
NODE_LOSS = dict(num_samples=64, shard_size=8, steps=30, every=2, guidance_scale=0.4)
# Ray's bound on how long a raylet or worker outlives an unreachable head (60 s by default),
# shortened for this cluster so the head-loss case stays short; a `ray start` setting.
RECONNECT_TIMEOUT_S = 20
RUN_LIMIT_S = 240  # a whole synthesize run on this cluster, kill included

pytestmark = pytest.mark.cluster


def clean_env(**extra: str) -> dict:
    """This environment without Prefect or Ray settings (no session API, no RAY_ADDRESS), plus
    the product's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    return {**env, **DEFAULTS, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra}


class Node:
    """One `ray start` node of the test's cluster: its temp dir, its marker, its processes."""

    def __init__(self, root: Path, name: str) -> None:
        self.name, self.temp_dir, self.mark = name, str(root / name), f"{uuid.uuid4().hex}-{name}"
        self.seen: dict[int, psutil.Process] = {}

    def start(self, *args: str) -> None:
        env = clean_env(**{MARK: self.mark, "RAY_gcs_rpc_server_reconnect_timeout_s": str(RECONNECT_TIMEOUT_S)})
        done = subprocess.run([str(BIN / "ray"), "start", *args, "--num-cpus", "1", "--temp-dir", self.temp_dir, "--node-ip-address", "127.0.0.1",
                               "--disable-usage-stats"], env=env, cwd=self.temp_dir.rsplit("/", 1)[0], capture_output=True, text=True, timeout=180)
        self.processes()
        assert done.returncode == 0, f"ray start ({self.name}) failed:\n{done.stdout}\n{done.stderr}"

    def processes(self) -> list[psutil.Process]:
        """Its live processes (remembered, so an orphan still counts as the node's)."""
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid in self.seen:
                continue
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "ray" in cmdline and ((self.temp_dir in cmdline and "/ray/" in cmdline) or proc.environ().get(MARK) == self.mark):
                    self.seen[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return [p for p in self.seen.values() if alive(p)]

    def shard_workers(self) -> list[psutil.Process]:
        """Its ShardWorker actor processes (Ray titles them `ray::ShardWorker[.method]`)."""
        return [p for p in self.processes() if title(p).startswith("ray::ShardWorker")]

    def kill(self) -> list[psutil.Process]:
        """SIGKILL every process of the node, as if its machine had died; returns them."""
        victims = self.processes()
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return victims


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()).strip()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def wait_until(condition, timeout: float, what: str, every: float = 0.2) -> float:
    """Seconds until `condition()` held; fails naming `what` after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return time.monotonic() - start


@pytest.fixture()
def cluster():
    """A head and one more node, one CPU each, on loopback; every process of both is killed after."""
    root = Path(tempfile.mkdtemp(prefix="nl-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    head, node = Node(root, "head"), Node(root, "node")
    port = free_port()
    try:
        head.start("--head", "--port", str(port), "--include-dashboard=false")
        wait_for_port(port)
        node.start("--address", f"127.0.0.1:{port}")
        yield {"address": f"127.0.0.1:{port}", "head": head, "node": node, "root": root}
    finally:
        for each in (node, head):
            each.kill()
        wait_until(lambda: not head.processes() and not node.processes(), 30, "the test cluster's processes to go")
        shutil.rmtree(root, ignore_errors=True)


def config(model: str, out: Path) -> SynthesisConfig:
    return SynthesisConfig.from_options(model=f"diffusers:{model}", out=str(out), extractor="pixels", workers=2, **NODE_LOSS)


class Synthesize:
    """`minority-synth synthesize` of a config on the cluster at `address`, as a subprocess; its
    output goes to files, not pipes (Ray can write a lot to the driver's stderr)."""

    def __init__(self, cfg: SynthesisConfig, address: str, tmp_path: Path) -> None:
        o, s = cfg.output, cfg.sampler
        args = [str(BIN / "minority-synth"), "synthesize", "--model", cfg.model.spec, "--out", o.out, "--num-samples", str(o.num_samples),
                "--shard-size", str(o.shard_size), "--steps", str(s.steps), "--every", str(s.guidance.every), "--guidance-scale", str(s.guidance.scale),
                "--extractor", o.extractor, "--workers", str(cfg.execution.workers), "--ray-address", address]
        home = tmp_path / "prefect-home"
        home.mkdir(exist_ok=True)
        self.files = (tmp_path / "synthesize.out", tmp_path / "synthesize.err")
        with open(self.files[0], "w") as stdout, open(self.files[1], "w") as stderr:
            self.proc = subprocess.Popen(args, env=clean_env(PREFECT_HOME=str(home)), cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def output(self) -> tuple[str, str]:
        return self.files[0].read_text(), self.files[1].read_text()

    def finish(self, timeout: float) -> tuple[str, str]:
        """Its stdout and stderr once it exits within `timeout` (it, and what it started, killed otherwise)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"synthesize did not exit within {timeout:.0f} s:\n{self.output()[1][-4000:]}")
        return self.output()

    def stop(self) -> None:
        """SIGKILL the CLI and what it started (its Prefect server), by pid, if it still runs."""
        if self.proc.poll() is not None:
            return  # reaped: its pid may be someone else's by now
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for each in tree:
            try:
                each.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()


def committed(out: Path) -> int:
    """Shards committed so far, from the commit log (one small object per commit)."""
    folder = out / "commits"
    return len([p for p in folder.glob("*.json") if p.name != "index.json"]) if folder.is_dir() else 0


def summary_of(stdout: str) -> dict:
    """The run summary the CLI prints (an indented JSON object; Ray's own lines may follow it)."""
    start = stdout.rindex("{\n")
    return json.JSONDecoder().raw_decode(stdout[start:])[0]


def error_lines(stderr: str) -> list[str]:
    """The CLI's one-line errors (Prefect's and Ray's lines around them aside)."""
    return [line for line in stderr.splitlines() if line.startswith("Error: ")]


def kill_when_busy(run: Synthesize, out: Path, node: Node, head: Node, at_least: int = 2) -> float:
    """Wait until `at_least` shards are committed and each node's worker is generating one, then
    SIGKILL `node`; returns the time of the kill."""
    def ready() -> bool:
        assert run.returncode is None, f"synthesize ended before the kill:\n{run.output()[1][-4000:]}"
        workers = [node.shard_workers(), head.shard_workers()]
        return committed(out) >= at_least and all(len(w) == 1 and title(w[0]).endswith("generate_shard") for w in workers)

    wait_until(ready, RUN_LIMIT_S, "both nodes generating with shards committed", every=0.5)
    killed = node.kill()
    assert killed, "nothing to kill"
    return time.monotonic()


def test_a_lost_node_costs_only_its_shards_in_flight(cluster, tiny_diffusers_model, tmp_path):
    head, node = cluster["head"], cluster["node"]
    out = tmp_path / "run"
    cfg = config(tiny_diffusers_model, out)
    expected = in_process_reference(cfg, tmp_path / "reference")  # workers = 0: what either node must reproduce
    started = time.monotonic()
    run = Synthesize(cfg, cluster["address"], tmp_path)
    try:
        killed_at = kill_when_busy(run, out, node, head)
        before = committed(out)
        wait_until(lambda: not node.processes(), 10, "the killed node's processes to go")
        stdout, stderr = run.finish(RUN_LIMIT_S)
    finally:
        run.stop()
    ended = time.monotonic()
    assert run.returncode == 0, stderr[-4000:]
    summary = summary_of(stdout)
    assert summary["samples"] == 64 and summary["shards"] == 8 and summary["generated_shards"] == 8
    result = check_output(ShardStore(str(out)), 64, 8, expected=expected)  # every sample once, bytes as in-process
    assert len(result["hashes"]) == 16 and all(k.startswith(("samples/", FEATURES)) for k in result["hashes"])
    lost = re.findall(r"lane \d+: (actor \w+ .*?); shard ([\d, ]+) back in the queue", stderr)
    assert len(lost) == 1, stderr[-4000:]  # one lane lost its actor, once; the other kept going
    assert "went with its node" in lost[0][0]  # found by the node rule, not the long bound
    regenerated = [int(i) for i in lost[0][1].split(", ")]
    assert 1 <= len(regenerated) <= 2  # what that actor had in flight: one shard, or two when pipelined
    wait_until(lambda: not head.shard_workers(), 30, "the run's actors on the head to go")  # none outlives its run
    assert not node.processes()
    print(f"\nnode loss: killed after {before} of 8 shards committed; finished {ended - killed_at:.1f} s after the kill "
          f"({ended - started:.1f} s in all, run summary {summary['seconds']} s); shards regenerated: {regenerated}")


def test_a_lost_head_ends_the_run_in_one_line_and_no_worker_outlives_it(cluster, tiny_diffusers_model, tmp_path):
    head, node = cluster["head"], cluster["node"]
    out = tmp_path / "run"
    run = Synthesize(config(tiny_diffusers_model, out), cluster["address"], tmp_path)
    try:
        killed_at = kill_when_busy(run, out, head, node)
        workers = node.shard_workers()  # the run's actor there, still generating
        assert len(workers) == 1
        stdout, stderr = run.finish(120)
    finally:
        run.stop()
    exited = time.monotonic() - killed_at
    assert run.returncode != 0
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr[-4000:]
    assert errors[0].startswith("Error: lost the Ray cluster: its head") and errors[0].endswith("rerun the same command to resume"), errors
    # the second node's actor goes with its raylet once the head stays unreachable (Ray's own bound)
    gone = wait_until(lambda: not any(alive(p) for p in workers), RECONNECT_TIMEOUT_S + 45, "the second node's ShardWorker to go", every=1)
    print(f"\nhead loss: the driver exited {exited:.1f} s after the kill (code {run.returncode}); "
          f"the second node's worker was gone {time.monotonic() - killed_at:.1f} s after it (waited {gone:.1f} s more)")


def test_a_ray_address_nobody_answers_fails_in_seconds_in_one_line(tiny_diffusers_model, tmp_path):
    from minority_core.errors import InputError
    from tasks.ray_address import check_ray_address

    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(InputError) as raised:
        check_ray_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 6
    message = str(raised.value)
    assert "\n" not in message and f"'127.0.0.1:{port}'" in message and f"ray start --head --port {port}" in message

    out = tmp_path / "run"
    start = time.monotonic()
    run = Synthesize(config(tiny_diffusers_model, out), "127.0.0.1:1", tmp_path)
    try:
        stdout, stderr = run.finish(60)
    finally:
        run.stop()
    seconds = time.monotonic() - start
    assert run.returncode == 2, stderr[-4000:]
    assert seconds < 30
    print(f"\nunanswered --ray-address: exit {run.returncode} after {seconds:.1f} s")
    assert error_lines(stderr) == ["Error: no Ray cluster answers at '127.0.0.1:1' (127.0.0.1:1: connection refused): "
                                   "start its head with `ray start --head --port 1`, or fix --ray-address / $RAY_ADDRESS"]
    assert not out.exists()  # checked before anything is written


def test_the_pool_grows_back_where_the_cluster_has_room(ray_local, tiny_diffusers_model, tmp_path):
    """An actor dropped as lost frees its CPU; `grow` starts a replacement, ready for a new lane."""
    from tasks.ray_pool import ActorPool, call

    cfg = config(tiny_diffusers_model, tmp_path / "run")
    pool = ActorPool(dict(config=cfg.model_dump(mode="json"), storage_options={}), workers=2)
    try:
        assert pool.grow() is None  # at full size
        with pool.borrow() as lost:  # as a lane whose actor went with its node
            pool.discard(lost)
        assert len(pool.actors) == 1 and lost not in pool.actors and pool.idle.qsize() == 1
        grown: list = []
        wait_until(lambda: grown.append(pool.grow()) or grown[-1] is not None, 60, "room for a new actor", every=1)
        assert len(pool.actors) == 2 and grown[-1] in pool.actors and pool.idle.qsize() == 2
        assert call(grown[-1], "ping") > 0
    finally:
        pool.shutdown()
