"""Object-storage faults against moto on 127.0.0.1, through real sockets.

(a) A fault-injecting HTTP proxy (tests/faults/s3proxy.py) between the flow and moto answers a
share of requests with 503 or drops the connection (before or after moto saw the request).
The S3 client's own retries are turned off (`config_kwargs={"retries": {"total_max_attempts": 1}}`) so
the faults reach the pipeline's retry layer; s3fs still retries dropped connections itself.
(b) A moto server of the test's own is stopped and restarted mid-run. moto keeps everything in
memory, so the restart loses the bucket and every shard written so far: the bucket is recreated,
and the rerun must find and regenerate exactly what was lost.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from minority_core.io import ShardStore, StorageError
from tests.conftest import free_port, wait_for_port

from .helpers import FEATURES, check_output, make_config, run_flow
from .s3proxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_api")

NO_CLIENT_RETRIES = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}
STORE_ATTEMPTS = 4  # ShardStore's default retry budget


def through(proxy: FaultProxy) -> dict:
    return {"client_kwargs": {"endpoint_url": proxy.url}, **NO_CLIENT_RETRIES}


def nothing_under(url: str, options: dict) -> bool:
    fs = ShardStore(f"{url}/run", options).fs
    fs.invalidate_cache()
    return fs.find(url) == []


def test_flaky_endpoint_run_completes_and_records_each_shard_once(tiny_diffusers_model, s3_bucket, moto_endpoint, reference):
    url, direct = s3_bucket
    with FaultProxy(moto_endpoint, share=1 / 3) as proxy:
        cfg = make_config(tiny_diffusers_model, f"{url}/run", storage_options=through(proxy))
        summary = run_flow(cfg)
    assert summary["samples"] == 24 and summary["generated_shards"] == 3
    assert proxy.failures >= proxy.requests // 3 and all(n > 0 for n in proxy.injected.values()), proxy.injected
    # read back from moto directly, not through the proxy
    check_output(ShardStore(f"{url}/run", direct), 24, expected=reference(cfg))


def test_write_probe_is_removed_despite_a_fault_during_its_cleanup(s3_bucket, moto_endpoint):
    """The preflight probe's delete meets a 503 (request 6 of the pattern): it is retried, not left behind."""
    url, direct = s3_bucket
    with FaultProxy(moto_endpoint, share=1 / 3, kinds=("503",)) as proxy:
        ShardStore(f"{url}/run", through(proxy)).check_writable()
    assert proxy.injected["503"] >= 2
    assert nothing_under(url, direct)


def test_dead_endpoint_fails_clearly_after_retry_budget_and_writes_nothing(tiny_diffusers_model, s3_bucket, moto_endpoint):
    url, direct = s3_bucket
    with FaultProxy(moto_endpoint, share=1.0, kinds=("503",)) as proxy:
        with pytest.raises(StorageError) as info:
            run_flow(make_config(tiny_diffusers_model, f"{url}/run", storage_options=through(proxy)))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"output {url}/run is not writable") and "injected by the fault proxy" in message
    assert proxy.requests == STORE_ATTEMPTS, "\n".join(map(str, proxy.log))  # the probe's PUT, tried exactly the retry budget
    assert nothing_under(url, direct)  # nothing at all on storage


def test_endpoint_dying_mid_run_fails_and_keeps_only_verified_shards(tiny_diffusers_model, s3_bucket, moto_endpoint, reference):
    url, direct = s3_bucket
    with FaultProxy(moto_endpoint, share=0.0, kinds=("503",)) as proxy:
        proxy.fail_all_after = r"/run/commits/\d{12}-[0-9a-f]{8}\.json$"  # everything fails once the first shard is committed
        cfg = make_config(tiny_diffusers_model, f"{url}/run", storage_options=through(proxy))
        with pytest.raises(StorageError) as info:
            run_flow(cfg)
    message = str(info.value)
    assert "\n" not in message and f"{url}/run/" in message and f"gave up after {STORE_ATTEMPTS} attempts" in message
    store = ShardStore(f"{url}/run", direct)
    manifest = store.read_manifest()
    assert sorted(manifest.shards) == [f"{FEATURES}/00000", "samples/00000"]
    assert all(store.verify(r) for r in manifest.shards.values())
    assert {k: r.sha256 for k, r in manifest.shards.items()} == {k: v for k, v in reference(cfg).items() if k.endswith("00000")}
    assert store.list_indices("samples") == [0] and store.list_indices(FEATURES) == [0]


class MotoServer:
    """A moto_server process of this test's own, which the test may stop and start again."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        with open(self.log, "ab") as sink:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=sink, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_moto_restart_mid_run_is_repaired_by_rerun(tiny_diffusers_model, tmp_path, reference):
    import s3fs

    moto = MotoServer(tmp_path / "moto.log")
    moto.start()
    bucket = f"restart-{uuid.uuid4().hex[:12]}"
    direct = {"client_kwargs": {"endpoint_url": moto.url}, "key": "testing", "secret": "testing", "skip_instance_cache": True}
    s3fs.S3FileSystem(**direct).mkdir(bucket)
    url = f"s3://{bucket}/run"
    cfg = make_config(tiny_diffusers_model, url, storage_options={"client_kwargs": {"endpoint_url": moto.url}}, num_samples=32, steps=30)
    events: dict = {}
    errors: list[BaseException] = []

    def restart_after_first_commit() -> None:
        try:
            fs = s3fs.S3FileSystem(**direct)
            deadline = time.monotonic() + 180
            while True:
                try:
                    manifest = ShardStore(url, direct).read_manifest()
                except Exception:
                    manifest = None
                if manifest is not None and manifest.committed("samples"):
                    break
                assert time.monotonic() < deadline, "no shard committed in time"
                time.sleep(0.05)
            events["committed_before"] = sorted(manifest.committed("samples"))
            moto.stop()
            time.sleep(1.0)
            moto.start()
            fs.mkdir(bucket)  # a restarted moto has lost the bucket: recreate it
            events["restarted"] = True
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=restart_after_first_commit, daemon=True)
    thread.start()
    try:
        try:
            first, first_error = run_flow(cfg), None
        except StorageError as err:  # the outage outlasted the retry budget: also a correct outcome
            first, first_error = None, err
        thread.join(timeout=60)
        assert not errors and events.get("restarted"), errors
        lost = events["committed_before"]
        store = ShardStore(url, {**direct, "skip_instance_cache": True})
        if first_error is not None:
            assert "\n" not in str(first_error) and url in str(first_error)
        else:
            assert first["generated_shards"] >= 4 and all(store.exists("samples", k) for k in lost)  # its end-of-run listing made the lost shards again
        second = run_flow(cfg)  # the rerun makes whatever is still missing, and nothing twice
        assert second["generated_shards"] + second["skipped_shards"] == 4
        if first_error is None:
            assert second["generated_shards"] == 0  # the first run had already repaired the loss
        check_output(store, 32, expected=reference(cfg))
    finally:
        moto.stop()
