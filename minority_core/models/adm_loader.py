"""`adm:PATH` specs: guided-diffusion (ADM) checkpoints as docs/DESIGN.md §3 models, plus the paper's
guidance defaults per preset. (The two-stage ImageNet-256 sampler that runs a loaded base model
and upsampler is `minority_core.models.two_stage`.)

A checkpoint is a bare state_dict (`.pt` read with `torch.load(weights_only=True)`, or
`.safetensors`); it does not say which architecture it needs, so a preset (or a full set of
architecture flags) does, and the strict load in `adm.load_adm_state_dict` says when they
disagree.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minority_core.diffusion.schedule import FixedVariance, NoiseSchedule
from minority_core.errors import InputError, MissingFileError
from minority_core.models import LoadedModel
from minority_core.models.adm import ADM_PRESETS, ADMSuperResUNet, ADMUNet, _arch, build_adm, load_adm_state_dict

__all__ = [
    "ADMSuperResModel",
    "load_adm",
]

# Diffusion-side flags (the rest are architecture flags, passed to build_adm). sigma_small is
# guided-diffusion's: a learn_sigma=False model samples with fixed-large variance (β_t) unless it is set.
DIFFUSION_FLAGS = ("diffusion_steps", "noise_schedule", "small_size", "sigma_small")
# Without a preset these must be given: guided-diffusion's defaults for them fit none of the
# published checkpoints, and a wrong schedule would load cleanly and only show in the samples.
REQUIRED_WITHOUT_PRESET = ("image_size", "num_channels", "num_res_blocks", "attention_resolutions", "noise_schedule")

# --------------------------------------------------------------------------- the models


class ADMSuperResModel(nn.Module):
    """The upsampler as `model(x, t, y=None)`: its 64 px input is state, set by the caller.

    The samplers know nothing of a low-res input, so the two-stage sampler sets it for the
    duration of the second stage with `conditioned_on(low_res)`; calling the model without it
    is an error rather than a silently unconditioned sample.
    """

    def __init__(self, net: ADMSuperResUNet, small_size: int) -> None:
        super().__init__()
        self.net = net
        self.small_size = small_size
        self.low_res: Tensor | None = None

    @contextmanager
    def conditioned_on(self, low_res: Tensor) -> Iterator[ADMSuperResModel]:
        previous, self.low_res = self.low_res, low_res
        try:
            yield self
        finally:
            self.low_res = previous

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        low_res = self.low_res
        if low_res is None:
            raise InputError("the upsampler needs its low-res input: use sample_imagenet256 or `with model.conditioned_on(low_res):`")
        if low_res.shape[0] != x.shape[0]:
            raise InputError(f"low_res has batch {low_res.shape[0]} but x has {x.shape[0]}")
        return self.net(x, t, low_res=low_res.to(device=x.device, dtype=x.dtype), y=y)


def load_adm(
    path: str,
    device: torch.device | str = "cpu",
    spec: str = "",
    preset: str | None = None,
    **flags: Any,
) -> LoadedModel:
    """Build the ADM a preset (and/or explicit flags) describes and load `path` into it, weights only.

    Flags override the preset's architecture (`num_channels=...`) or diffusion settings
    (`noise_schedule`, `diffusion_steps`, `small_size`). `use_fp16` defaults to the preset's value
    on CUDA and to False elsewhere (float16 convolutions are slow or missing on CPU).
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise MissingFileError(f"ADM checkpoint not found: {path}")
    unet_flags, diffusion = _resolve_flags(preset, flags, torch.device(device))
    variance = fixed_variance(bool(unet_flags["learn_sigma"]), bool(diffusion.get("sigma_small")))
    schedule = _schedule(diffusion["noise_schedule"], int(diffusion["diffusion_steps"]), variance)  # fail before the load
    net = _build_on_device(unet_flags, torch.device(device))
    _load_weights(net, path)
    net.eval().requires_grad_(False)  # guidance differentiates w.r.t. x only
    size = int(unet_flags["image_size"])
    model: nn.Module = net
    if isinstance(net, ADMSuperResUNet):
        model = ADMSuperResModel(net, _small_size(preset, unet_flags, flags))
    return LoadedModel(
        model=model,
        schedule=schedule,
        shape=(3, size, size),
        num_classes=unet_flags["num_classes"],
        spec=spec or f"adm:{path}",
    )


# How each flag's text (`--adm-flag key=value`, guided-diffusion's MODEL_FLAGS spelling) is read.
_BOOL_FLAGS = ("learn_sigma", "sigma_small", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "use_fp16", "super_res")
_INT_FLAGS = ("image_size", "num_channels", "num_res_blocks", "num_heads", "num_head_channels", "num_heads_upsample", "num_classes",
              "diffusion_steps", "small_size")
_FLOAT_FLAGS = ("dropout",)
_TEXT_FLAGS = ("channel_mult", "attention_resolutions", "noise_schedule")


def parse_adm_flags(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["num_channels=256", "learn_sigma=true", "attention_resolutions=32,16,8"]` → typed flags.

    Integers, floats and booleans (true/false) as the flag takes them; `none` for the optional
    integers; comma lists stay text as guided-diffusion writes them. One-line errors naming the flag."""
    flags: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not sep or not key or not text:
            raise InputError(f"--adm-flag must be key=value (e.g. num_channels=256), got {pair!r}")
        if key == "class_cond":  # guided-diffusion's switch; the published conditional models have 1000 classes
            if text.lower() not in ("true", "false", "1", "0"):
                raise InputError(f"ADM flag class_cond takes true or false, got {text!r}")
            flags["num_classes"] = 1000 if text.lower() in ("true", "1") else None
            continue
        if key in _BOOL_FLAGS:
            if text.lower() not in ("true", "false", "1", "0"):
                raise InputError(f"ADM flag {key} takes true or false, got {text!r}")
            flags[key] = text.lower() in ("true", "1")
        elif key in _INT_FLAGS:
            optional = key in ("num_head_channels", "num_heads_upsample", "num_classes", "small_size")
            if optional and (text.lower() in ("none", "null") or (text == "-1" and key in ("num_head_channels", "num_heads_upsample"))):
                flags[key] = None  # guided-diffusion writes "unset" as -1 for these two
                continue
            try:
                value = int(text)
            except ValueError:
                raise InputError(f"ADM flag {key} takes an integer, got {text!r}") from None
            if value < 1:
                raise InputError(f"ADM flag {key} must be ≥ 1, got {value}")
            flags[key] = value
        elif key in _FLOAT_FLAGS:
            try:
                flags[key] = float(text)
            except ValueError:
                raise InputError(f"ADM flag {key} takes a number, got {text!r}") from None
        elif key == "noise_schedule":
            if text not in ("linear", "cosine"):
                raise InputError(f"ADM flag noise_schedule is linear or cosine, got {text!r}")
            flags[key] = text
        elif key in _TEXT_FLAGS:  # comma lists of numbers, as guided-diffusion writes them
            try:
                numbers = [float(v) for v in text.split(",")]
            except ValueError:
                raise InputError(f"ADM flag {key} takes comma-separated numbers (e.g. 32,16,8), got {text!r}") from None
            if not numbers or min(numbers) <= 0:
                raise InputError(f"ADM flag {key} takes positive numbers, got {text!r}")
            flags[key] = text
        else:
            raise InputError(f"unknown ADM flag {key!r}; valid: {', '.join([*_BOOL_FLAGS, *_INT_FLAGS, *_FLOAT_FLAGS, *_TEXT_FLAGS, 'class_cond'])}")
    return flags


def _resolve_flags(preset: str | None, flags: dict[str, Any], device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture flags, diffusion settings) from a preset and explicit flags."""
    defaults = _arch()
    unknown = sorted(set(flags) - set(defaults) - set(DIFFUSION_FLAGS))
    if unknown:
        raise InputError(f"unknown ADM flag(s) {', '.join(unknown)}; valid: {', '.join([*defaults, *DIFFUSION_FLAGS])}")
    if preset is None:
        missing = [k for k in REQUIRED_WITHOUT_PRESET if k not in flags]
        if missing:
            raise InputError(
                f"adm: models need a preset ({', '.join(ADM_PRESETS)}) or explicit architecture flags; missing: {', '.join(missing)}"
            )
        base_unet, base_diffusion = defaults, {"diffusion_steps": 1000, "small_size": None, "sigma_small": False}
    elif preset not in ADM_PRESETS:
        raise InputError(f"unknown ADM preset {preset!r}; valid: {', '.join(ADM_PRESETS)}")
    else:
        base_unet, base_diffusion = ADM_PRESETS[preset]["unet"], ADM_PRESETS[preset]["diffusion"]
    unet = dict(base_unet) | {k: v for k, v in flags.items() if k in defaults}
    if "use_fp16" not in flags and device.type != "cuda":
        unet["use_fp16"] = False
    diffusion = {k: base_diffusion.get(k) for k in DIFFUSION_FLAGS} | {k: v for k, v in flags.items() if k in DIFFUSION_FLAGS}
    return unet, diffusion


def _build_on_device(unet_flags: dict[str, Any], device: torch.device) -> ADMUNet:
    """Build on the meta device, then allocate on `device`: the strict load fills every tensor,
    so random initialisation (seconds for the 300-550 M parameter models) would be wasted."""
    with torch.device("meta"):
        # Every flag is given, so the preset named here only satisfies build_adm's signature.
        net = build_adm(next(iter(ADM_PRESETS)), **unet_flags)
    return net.to_empty(device=device)


def _load_weights(net: nn.Module, path: str) -> None:
    """Strict weights-only load; an unreadable file becomes a one-line ValueError naming it."""
    from safetensors import SafetensorError

    try:
        load_adm_state_dict(net, path)
    except ValueError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{path}: not a readable weights-only ADM checkpoint ({first})") from err


def fixed_variance(learn_sigma: bool, sigma_small: bool = False) -> FixedVariance:
    """guided-diffusion's `create_gaussian_diffusion` choice: a model that learns Σ uses its own
    (the fixed one is then unused); otherwise β̃_t with sigma_small, else β_t (fixed-large, its default)."""
    return "fixed_small" if learn_sigma or sigma_small else "fixed_large"


def _schedule(noise_schedule: str, steps: int, variance: FixedVariance = "fixed_small") -> NoiseSchedule:
    """The training schedule, with the fixed variance a learn_sigma=False model samples with."""
    if noise_schedule == "linear":
        return NoiseSchedule.linear(steps, fixed_variance=variance)
    if noise_schedule == "cosine":
        return NoiseSchedule.cosine(steps, fixed_variance=variance)
    raise InputError(f"unknown noise_schedule {noise_schedule!r}: use linear or cosine")


def _small_size(preset: str | None, unet_flags: dict[str, Any], flags: dict[str, Any]) -> int:
    """The upsampler's input size: explicit, else the preset's, kept in proportion to image_size."""
    if flags.get("small_size"):
        return int(flags["small_size"])
    size = int(unet_flags["image_size"])
    if preset is None:
        return max(1, size // 4)
    reference = ADM_PRESETS[preset]["diffusion"]
    if not reference.get("small_size"):  # super_res=true on a preset that is not an upsampler
        raise InputError(f"super_res=true with preset {preset} needs small_size (the low-resolution input size): add --adm-flag small_size=N")
    return max(1, reference["small_size"] * size // reference["image_size"])
