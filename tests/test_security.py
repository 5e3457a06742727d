"""Security: weights-only loading, credentials never stored by Prefect, loopback binding, output roots."""

from __future__ import annotations

import asyncio
import json
import os
import pickle

import pytest
import torch

from minority_core.config import STORAGE_OPTIONS_ENV, SynthesisConfig
from minority_core.io import ShardStore

FAKE_SECRET = "FAKE-SECRET-d41d8cd98f00b204"


class Evil:
    """Unpickling this runs code: a loader that is not weights-only would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_adm_checkpoint_with_code_is_refused(tmp_path):
    from minority_core.models import load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": Evil(str(marker))}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_model(f"adm:{path}", preset="celeba64")
    assert not marker.exists()


def test_diffusers_bin_with_code_is_refused(tiny_diffusers_model, tmp_path):
    import shutil

    from minority_core.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_diffusers_model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(folder / "unet" / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"conv_in.weight": Evil(str(marker))}, handle)
    with pytest.raises(ValueError):
        load_model(f"diffusers:{folder}")
    assert not marker.exists()


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_credentials_never_reach_prefect(tiny_diffusers_model, s3_bucket, monkeypatch):
    """Run with a fake secret in the environment; nothing Prefect stores may contain it."""
    from prefect.client.orchestration import get_client

    from flows.synthesize import synthesize

    url, options = s3_bucket
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"key": "AKIAFAKEKEY", "secret": FAKE_SECRET}))
    config = SynthesisConfig.from_options(model=f"diffusers:{tiny_diffusers_model}", num_samples=8, shard_size=4, steps=4, out=f"{url}/secure",
                             extractor="pixels", workers=1, storage_options={"client_kwargs": options["client_kwargs"]})
    assert synthesize(config)["samples"] == 8
    assert FAKE_SECRET not in ShardStore(f"{url}/secure", options).fs.cat_file(f"{url}/secure/manifest.json").decode()

    async def everything_prefect_stored() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            tasks = await client.read_task_runs()
            logs = await client.read_logs()
            artifacts = await client.read_artifacts()
        return json.dumps([r.model_dump(mode="json") for r in runs + tasks + logs + artifacts])

    stored = asyncio.run(everything_prefect_stored())
    assert "AKIAFAKEKEY" not in stored and FAKE_SECRET not in stored
    assert "secure" in stored  # the run itself is there: the check looked at the right data


def test_servers_bind_loopback_by_default():
    from minority_synth.cli import server

    host = next(p for p in server.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_no_writes_outside_the_output_root(tmp_path):
    from minority_core.io import features_table

    store = ShardStore(str(tmp_path / "root"))
    for kind in ("../evil", "features/../../evil", "/etc/evil", "selections/../../x"):
        with pytest.raises(ValueError):
            store.write_shard(kind, 0, features_table(["a"], [[1.0]]))
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*"))
    assert os.listdir(tmp_path) in ([], ["root"])
