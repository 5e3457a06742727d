"""Fixtures of the fault-injection tests (the session fixtures of tests/conftest.py apply here too)."""

from __future__ import annotations

import pytest

from minority_core.io import ShardStore

from .helpers import SLOW, check_output, make_config, run_flow


@pytest.fixture(scope="session")
def clean_slow_run(tiny_diffusers_model, tmp_path_factory, prefect_api, ray_local) -> dict:
    """One clean, fault-free run of the SLOW config on Ray actors: what every faulty run must reproduce."""
    out = str(tmp_path_factory.mktemp("clean-slow") / "run")
    summary = run_flow(make_config(tiny_diffusers_model, out, workers=2, **SLOW))
    assert summary["generated_shards"] == 3 and summary["samples"] == 24
    return {"out": out, **check_output(ShardStore(out), 24)}


@pytest.fixture()
def reference(tmp_path):
    """`reference(cfg)`: shard hashes of a clean in-process generation of cfg (workers=0 runs)."""
    from .helpers import in_process_reference

    return lambda cfg: in_process_reference(cfg, tmp_path / "reference")
