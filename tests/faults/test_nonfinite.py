"""Non-finite samples: an absurd guidance scale, or a model whose output is NaN.

The shard must fail with a message naming the cause and the setting to change, and nothing
with NaN images may reach storage or the manifest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from minority_core.errors import NonFiniteSampleError

from .helpers import make_config, run_flow, task_run_messages, temporaries

pytestmark = pytest.mark.usefixtures("prefect_api")


def assert_nothing_written(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.parquet"))
    assert temporaries(out) == [] if out.exists() else True


def test_absurd_guidance_scale_fails_naming_the_scale(tiny_diffusers_model, tmp_path, ray_local):
    """Through the CLI (in this process, Ray actors as in production): exit 2, one line naming --guidance-scale."""
    from click.testing import CliRunner

    from minority_synth.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "synthesize", "--model", f"diffusers:{tiny_diffusers_model}", "--num-samples", "8", "--shard-size", "4",
        "--steps", "6", "--every", "2", "--guidance-scale", "1e30", "--extractor", "pixels", "--workers", "1", "--out", str(out),
    ])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output[-3000:]
    assert len(errors) == 1, result.output[-3000:]
    assert "sampling produced NaN/inf" in errors[0] and "guidance scale 1e+30" in errors[0] and "lower --guidance-scale" in errors[0]
    assert_nothing_written(out)


@pytest.fixture()
def nan_model(tiny_diffusers_model, tmp_path) -> str:
    """A copy of the tiny diffusers model whose output layer's bias is NaN."""
    import shutil

    import torch
    from diffusers import UNet2DModel

    folder = tmp_path / "nan-unet"
    shutil.copytree(tiny_diffusers_model, folder)
    unet = UNet2DModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_out.bias.fill_(float("nan"))
    unet.save_pretrained(folder / "unet")
    return str(folder)


@pytest.mark.parametrize("guidance_scale", [0.0, 0.4])
def test_model_returning_nan_fails_naming_the_model(nan_model, tmp_path, guidance_scale):
    """The first step is a guided one (steps 5, every 2): the message must still blame the model, not w."""
    out = tmp_path / "run"
    cfg = make_config(nan_model, str(out), num_samples=8, shard_size=4, steps=5, guidance_scale=guidance_scale)
    with task_run_messages() as messages, pytest.raises(NonFiniteSampleError) as info:
        run_flow(cfg)
    assert not [m for m in messages if "Retry 1/2" in m]  # the same seed would fail the same way: not retried
    message = str(info.value)
    assert "\n" not in message and "sampling produced NaN/inf at step 4 of 5" in message
    assert "check the model weights" in message and "--guidance-scale" not in message
    assert_nothing_written(out)
