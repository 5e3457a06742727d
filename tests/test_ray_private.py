"""Local Ray is private: every process of the cluster listens on loopback only, with token auth on."""

from __future__ import annotations

import ipaddress
import os
import stat

import psutil
import pytest

pytestmark = pytest.mark.usefixtures("ray_local")


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how a dual-stack socket shows loopback
    return (mapped or address).is_loopback


def cluster_processes() -> list[psutil.Process]:
    """This driver and the Ray processes it started (gcs_server, raylet, workers, agents, monitor)."""
    session = __import__("ray").get_runtime_context().get_node_id()  # the cluster is up
    assert session
    found = [psutil.Process()]
    for proc in psutil.Process().children(recursive=True):
        try:
            text = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ray" in proc.name() or "/ray/" in text or text.startswith("ray::"):
            found.append(proc)
    return found


def test_every_ray_process_listens_on_loopback_only():
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    probe = Probe.remote()
    worker = ray.get(probe.pid.remote())
    try:
        listening: dict[str, set[str]] = {}
        for proc in cluster_processes():
            try:
                sockets = proc.net_connections(kind="inet")
                name = proc.name()
            except psutil.Error:  # a worker that just exited
                continue
            listening.setdefault(f"{name}[{proc.pid}]", set()).update(f"{c.laddr.ip}:{c.laddr.port}" for c in sockets if c.status == psutil.CONN_LISTEN)
        names = " ".join(listening)
        assert "gcs_server" in names and "raylet" in names and f"[{worker}]" in names, names  # the search saw the cluster
        assert sum(map(len, listening.values())) >= 4
        exposed = {who: sorted(a for a in addrs if not loopback(a.rsplit(":", 1)[0])) for who, addrs in listening.items()}
        assert not any(exposed.values()), {who: a for who, a in exposed.items() if a}
    finally:
        ray.kill(probe)


GCS_QUERY = """
import os, sys
from ray._raylet import AuthenticationTokenLoader, GcsClient
for token in (sys.argv[2], open(sys.argv[3]).read()):
    os.environ["RAY_AUTH_TOKEN"] = token
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        print("answered", len(GcsClient(address=sys.argv[1]).internal_kv_keys(b"", namespace=None, timeout=10)))
    except Exception as exc:
        print("refused", type(exc).__name__)
"""


def test_local_ray_requires_its_token():
    """Token auth is on, its token is in a file only this user can read, and a GCS client with a
    wrong token is refused (the same client with the file's token is answered)."""
    import subprocess
    import sys

    import ray

    assert os.environ["RAY_AUTH_MODE"] == "token"
    path = os.environ["RAY_AUTH_TOKEN_PATH"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    address = ray.get_runtime_context().gcs_address
    assert loopback(address.rsplit(":", 1)[0].strip("[]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run(
        [sys.executable, "-c", GCS_QUERY, address, "0" * 64, path], env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.split("\n")
    assert lines[0] == "refused AuthenticationError", done.stdout + done.stderr[-2000:]
    assert lines[1].startswith("answered ") and int(lines[1].split()[1]) > 0, done.stdout + done.stderr[-2000:]


def test_token_file_planted_by_someone_else_is_refused(tmp_path, monkeypatch):
    from minority_core.errors import InputError
    from tasks.ray_private import token_path

    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    first = token_path()
    assert token_path() == first and len(first.read_text()) == 64  # reused, 256 bits
    first.chmod(0o644)
    with pytest.raises(InputError, match="not a private file"):
        token_path()
