"""Model loading: the bundled demo model, diffusers folders, presets and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from minority_core.config.presets import preset_for
from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.diffusion.samplers import ancestral_sample
from minority_core.metrics.features import DemoClassifierFeatures
from minority_core.models import BUNDLED_DIR, load_model
from tests.configs import sampler_for
from tests.sampling_helpers import run_sampler


def test_bundled_model_loads_and_samples_digits():
    m = load_model("bundled:digits")
    assert m.shape == (1, 8, 8) and m.num_classes is None and len(m.schedule) == 1000
    x = run_sampler(ancestral_sample, m.model, m.schedule, (32, *m.shape), steps=50, generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 8, 8) and torch.isfinite(x).all()
    labels, confidence = DemoClassifierFeatures().predict(x.clamp(-1, 1))
    # A trained model: most samples are digits the classifier is sure about (96 % at 100 steps).
    assert (confidence > 0.9).mean() > 0.6 and len(set(labels.tolist())) >= 5


def test_bundled_model_guided_sampling_runs():
    m = load_model("bundled:digits")
    g = MinorityGuidance(scale=3.0, perturb_ratio=0.4, every=2, stop_ratio=0.5)
    x = run_sampler(ancestral_sample, m.model, m.schedule, (8, *m.shape), guidance=g, steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_diffusers_folder_loads_and_samples(tiny_diffusers_model):
    m = load_model(f"diffusers:{tiny_diffusers_model}")
    assert m.shape == (1, 8, 8) and len(m.schedule) == 100
    x = run_sampler(ancestral_sample, m.model, m.schedule, (4, *m.shape), guidance=MinorityGuidance(scale=1.0, every=1), steps=10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_diffusers_model_folder_without_pipeline_layout(tiny_diffusers_model, tmp_path):
    """A bare model folder (config.json + weights) with scheduler_config.json beside it."""
    folder = tmp_path / "bare"
    shutil.copytree(f"{tiny_diffusers_model}/unet", folder)
    shutil.copy(f"{tiny_diffusers_model}/scheduler/scheduler_config.json", folder / "scheduler_config.json")
    assert load_model(f"diffusers:{folder}").shape == (1, 8, 8)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cats", "unknown model spec"),
        ("bundled:cats", "unknown bundled model"),
        ("diffusers:", "unknown model spec"),
        ("diffusers:/no/such/folder", "neither an existing folder nor a hub id"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ValueError) as err:
        load_model(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_weights_file_is_named(tiny_diffusers_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_diffusers_model, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="could not load the diffusers UNet"):
        load_model(f"diffusers:{folder}")


def test_missing_scheduler_is_named(tiny_diffusers_model, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_diffusers_model, folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ValueError, match="no scheduler config"):
        load_model(f"diffusers:{folder}")


def test_wrong_image_size_in_config_fails_clearly(tiny_diffusers_model, tmp_path):
    """Weights from one architecture under another's config: a one-line error, not a crash later."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_diffusers_model, folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [32, 64]
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        load_model(f"diffusers:{folder}")
    assert "could not load the diffusers UNet" in str(err.value) and "\n" not in str(err.value)


def test_presets():
    assert preset_for("bundled:digits").sampler.guidance.scale == 3.0
    celeba = sampler_for("adm:/x.pt", preset="celeba64")
    assert celeba.guidance.scale == 0.4 and celeba.guidance.distance == "lpips" and celeba.steps == 250 and celeba.guidance.every == 5
    imagenet = sampler_for("adm:/x.pt", preset="imagenet64")
    assert imagenet.guidance.scale == 0.2 and imagenet.guidance.every == 2
    assert sampler_for("bundled:digits", guidance_scale=0).guidance is None
    with pytest.raises(ValueError, match="unknown ADM preset"):
        preset_for("adm:/x.pt", "celeba128")


def test_bundled_weights_are_safetensors_only():
    files = {p.name for p in BUNDLED_DIR.rglob("*") if p.is_file()}
    assert "diffusion_pytorch_model.safetensors" in files and "classifier.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    card = (BUNDLED_DIR / "digits" / "README.md").read_text()
    stats = json.loads((BUNDLED_DIR / "digits" / "training.json").read_text())
    assert f"{stats['unet']['final_loss_last_500']:.4f}" in card
    assert np.isclose(stats["classifier"]["test_accuracy"], 0.964, atol=0.01)


def test_bundled_classifier_is_reproducible_from_its_seed():
    """`train-demo` rebuilds the committed classifier from its seed: bit for bit on the CPU kind it
    was made on; on another (AVX2 vs AVX-512 kernels round differently) within float round-off."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from safetensors.torch import load_file\n"
        "from minority_core.demo.train import TrainConfig, train_classifier\n"
        "from minority_core.models import BUNDLED_DIR\n"
        "m, _ = train_classifier(TrainConfig(), log=lambda *a: None)\n"
        "ref = load_file(str(BUNDLED_DIR / 'digits' / 'classifier.safetensors'))\n"
        "print(max((m.state_dict()[k] - v).abs().max().item() for k, v in ref.items()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4  # measured: 0 (same CPU kind), 6.6e-6 (AVX-512)
