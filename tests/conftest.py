"""Session-wide fixtures: the real services tests talk to are started once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from minority_synth.env import apply_defaults

# Settings that must be in place before faiss / prefect / ray are imported anywhere.
apply_defaults()
if "PREFECT_HOME" not in os.environ:  # a private one per session, removed at exit
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """A real S3-compatible server (moto_server) on loopback, one per test session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = Path(sys.executable).with_name("moto_server")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def s3_bucket(moto_endpoint, request) -> tuple[str, dict]:
    """A fresh bucket on the session's moto server: returns (s3://bucket, storage_options)."""
    import s3fs

    options = {"client_kwargs": {"endpoint_url": moto_endpoint}, "key": "testing", "secret": "testing"}
    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid()}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(name)
    return f"s3://{name}", options


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (a real server process, ephemeral) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """Local Ray started once per session from the main thread (2 CPUs, as on CI), the product's
    way (loopback only, token auth: tasks/ray_private.py)."""
    import ray

    from tasks.ray_pool import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def schedule():
    """The linear 1000-step training schedule the analytic-mixture tests sample on."""
    from minority_core.diffusion.schedule import NoiseSchedule

    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="session")
def gmm(schedule):
    """The exact denoiser of the shared 2-D Gaussian mixture (tests/gmm.py): an oracle with known weights."""
    from tests.gmm import MEANS, STD, WEIGHTS, GaussianMixtureDenoiser

    return GaussianMixtureDenoiser(MEANS, WEIGHTS, STD, schedule)


@pytest.fixture(scope="session")
def tiny_diffusers_model(tmp_path_factory) -> str:
    """A small random diffusers UNet2DModel + DDPMScheduler saved with save_pretrained (8×8, 1 channel)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("tiny-unet")
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")
    return str(folder)


# --------------------------------------------------------------------------- markers

SERVICE_FIXTURES = {"prefect_api", "ray_local", "moto_endpoint", "s3_bucket"}
# modules whose tests each take tens of seconds (real processes, browsers, training, sampling runs)
SLOW_MODULES = {"test_demo", "test_operations", "test_applications", "test_latent_pipeline", "test_scoring_flows", "test_pipeline", "test_class_labels",
                "test_score_actors", "test_lanes"}


def pytest_collection_modifyitems(config, items) -> None:
    """`integration`: the test starts or talks to a real service (Prefect API, Ray, moto, a
    browser, a subprocess server); `slow`: its module's tests take tens of seconds each. Select
    with `-m "not slow"` for a quick loop; CI runs everything."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        in_faults = ".faults." in f".{item.module.__name__}."
        if SERVICE_FIXTURES & set(item.fixturenames) or in_faults or module in {"test_operations", "test_demo"}:
            item.add_marker(pytest.mark.integration)
        if module in SLOW_MODULES or in_faults:
            item.add_marker(pytest.mark.slow)
