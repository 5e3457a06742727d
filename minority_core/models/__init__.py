"""Model loading behind one spec string: `bundled:digits`, `diffusers:PATH_OR_ID`, `adm:PATH`, `latent:PATH`.

Every loader returns a `LoadedModel` whose `.model` follows the docs/DESIGN.md §3 interface, so the
samplers and the pipeline never know which family they run. The exception is `latent:` (a
Stable-Diffusion-layout text-to-image pipeline): its denoiser depends on the prompts, so
`LoadedModel.latent` carries the pipeline and `generate` builds the denoiser per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

if TYPE_CHECKING:
    from minority_core.models.latent import LatentPipeline

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_MODELS = ("digits",)
SCHEMES = ("bundled", "diffusers", "adm", "latent")


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    schedule: NoiseSchedule
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int | None
    spec: str
    upsampler: LoadedModel | None = None  # a second, unguided super-resolution stage (ImageNet 64→256)
    latent: LatentPipeline | None = None  # latent: specs; `model` is then its UNet and `shape` the decoded image's


def parse_spec(spec: str) -> tuple[str, str]:
    """'scheme:target' → (scheme, target), with a clear error for anything else."""
    scheme, sep, target = str(spec).partition(":")
    if not sep or scheme not in SCHEMES or not target:
        raise InputError(f"unknown model spec {spec!r}: use bundled:digits, diffusers:PATH_OR_ID, adm:PATH or latent:PATH")
    if scheme == "bundled" and target not in BUNDLED_MODELS:
        raise InputError(f"unknown bundled model {target!r}: available: {', '.join(BUNDLED_MODELS)}")
    return scheme, target


def load_options(preset: str | None = None, upsampler: str | None = None, adm_flags=()) -> dict:
    """`load_model`'s keyword options from the edge's values: the ADM preset and upsampler when
    given, and `--adm-flag key=value` strings parsed to typed flags."""
    from minority_core.models.adm_loader import parse_adm_flags

    options = {k: v for k, v in dict(preset=preset, upsampler=upsampler).items() if v}
    return {**options, **parse_adm_flags(adm_flags)}


def load_model(spec: str, device: torch.device | str = "cpu", **options) -> LoadedModel:
    """Load a model from its spec onto `device`, ready for sampling (eval mode, weights only)."""
    scheme, target = parse_spec(spec)
    if scheme == "adm":
        from minority_core.models.adm_loader import load_adm

        if options.get("preset") == "imagenet64to256" and options.get("upsampler"):
            return _load_two_stage(target, device, spec, options)
        options.pop("upsampler", None)
        return load_adm(target, device=device, spec=spec, **options)
    if options:
        raise InputError(f"options {sorted(options)} apply only to adm: specs")
    if scheme == "latent":
        from minority_core.models.latent import load_latent_pipeline

        pipe = load_latent_pipeline(target, device)
        return LoadedModel(pipe.unet, pipe.schedule, pipe.image_shape, None, spec, latent=pipe)
    from minority_core.models.diffusers_unet import load_diffusers_unet

    if scheme == "bundled":
        path = BUNDLED_DIR / target
        if not (path / "unet" / "config.json").is_file():
            raise InputError(f"the bundled {target} model is missing from {path}: run `minority-synth train-demo` to rebuild it")
        model, schedule, shape, num_classes = load_diffusers_unet(str(path), device)
    else:
        model, schedule, shape, num_classes = load_diffusers_unet(target, device)
    return LoadedModel(model, schedule, shape, num_classes, spec)


def _load_two_stage(target: str, device, spec: str, options: dict) -> LoadedModel:
    """The paper's ImageNet-256: the guided 64 px class-conditional model (`adm:64x64_diffusion.pt`)
    then the upsampler (`upsampler=64_256_upsampler.pt`), unguided, as in the reference. (Without
    `upsampler`, `adm:PATH --preset imagenet64to256` loads PATH as the upsampler alone.)"""
    from dataclasses import replace

    from minority_core.models.adm_loader import load_adm

    options = dict(options)
    options.pop("preset")
    upsampler = options.pop("upsampler")
    upsampler_options = options.pop("upsampler_options", {})
    base = load_adm(target, device=device, spec=spec, preset="imagenet64", **options)
    up = load_adm(upsampler, device=device, spec=f"adm:{upsampler}", preset="imagenet64to256", **upsampler_options)
    return replace(base, upsampler=up)


def load_digit_classifier(device: torch.device | str = "cpu", path: Path | None = None):
    """The bundled digit classifier (weights from safetensors), in eval mode."""
    from safetensors.torch import load_file

    from minority_core.demo.classifier import DigitClassifier

    path = path or BUNDLED_DIR / "digits" / "classifier.safetensors"
    if not Path(path).is_file():
        raise InputError(f"digit classifier weights missing at {path}: run `minority-synth train-demo` to rebuild them")
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # truncated file, wrong architecture: one line naming the file
        raise InputError(f"digit classifier weights at {path} do not load ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    return model.to(device).eval()
