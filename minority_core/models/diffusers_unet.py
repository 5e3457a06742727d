"""Adapter for diffusers `UNet2DModel` checkpoints (a saved pipeline or a model folder).

The UNet's config and weights come from `from_pretrained` (safetensors preferred; a `.bin`
is read by diffusers with `torch.load(weights_only=True)`, never unpickling objects); the
noise schedule comes from the accompanying `DDPMScheduler` config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

_FIXED_VARIANCE = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "fixed_small",  # the model supplies 2C channels; the fixed one is unused
}


class DiffusersUNet(nn.Module):
    """Exposes a diffusers UNet2DModel as `model(x, t, y=None) -> ε [| v]` (docs/DESIGN.md §3)."""

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"unsupported prediction_type {prediction_type!r}: only 'epsilon' and 'v_prediction' models can be guided")
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", torch.tensor(schedule.alphas_cumprod, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.unet(x, t, class_labels=y).sample
        if self.prediction_type == "epsilon":
            return out
        channels = x.shape[1]
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        eps = abar.sqrt() * out[:, :channels] + (1 - abar).sqrt() * x  # ε from v: √ᾱ v + √(1−ᾱ) x_t
        return torch.cat([eps, out[:, channels:]], dim=1)


def schedule_from_scheduler_config(config: dict) -> NoiseSchedule:
    """NoiseSchedule from a diffusers DDPMScheduler config dict."""
    steps = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if not 0 < start <= end < 1:  # checked whatever the schedule: a nonsense value means a broken or edited config
        raise InputError(f"scheduler config: beta_start {start} and beta_end {end} must satisfy 0 < beta_start ≤ beta_end < 1 "
                         "(DDPM's are 1e-4 and 0.02): fix scheduler_config.json")
    variance = config.get("variance_type", "fixed_small")
    if variance not in _FIXED_VARIANCE:
        raise InputError(f"unsupported scheduler variance_type {variance!r}; supported: {sorted(_FIXED_VARIANCE)}")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif kind == "linear":
        betas = np.linspace(start, end, steps, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(math.sqrt(start), math.sqrt(end), steps, dtype=np.float64) ** 2
    elif kind == "squaredcos_cap_v2":
        return NoiseSchedule.cosine(steps, fixed_variance=_FIXED_VARIANCE[variance])
    else:
        raise InputError(f"unsupported beta_schedule {kind!r}; supported: linear, scaled_linear, squaredcos_cap_v2")
    return NoiseSchedule(betas, fixed_variance=_FIXED_VARIANCE[variance])


def _find_scheduler_config(folder: Path) -> dict | None:
    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def load_diffusers_unet(path_or_id: str, device: torch.device | str = "cpu"):
    """(model, schedule, shape, num_classes) from a local diffusers folder or a hub id."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(path_or_id).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"diffusers model path {folder} is a file; pass the folder saved by save_pretrained")
        subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
        if subfolder is None and not (folder / "config.json").is_file():
            raise InputError(f"no diffusers UNet in {folder}: expected config.json or unet/config.json (a folder written by save_pretrained)")
        scheduler_config = _find_scheduler_config(folder)
        if scheduler_config is None:
            raise InputError(f"no scheduler config beside the UNet in {folder}: add scheduler/scheduler_config.json (DDPMScheduler.save_pretrained)")
        weights_dir = folder / subfolder if subfolder else folder
        use_safetensors = any(weights_dir.glob("*.safetensors")) or None
        try:
            unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder, use_safetensors=use_safetensors)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"could not load the diffusers UNet in {weights_dir}: {str(exc).splitlines()[0]}") from None
    else:
        if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
            raise InputError(f"diffusers model {path_or_id!r} is neither an existing folder nor a hub id like 'google/ddpm-cifar10-32'")
        try:
            unet = UNet2DModel.from_pretrained(path_or_id, subfolder="unet")
            scheduler_config = dict(DDPMScheduler.from_pretrained(path_or_id, subfolder="scheduler").config)
        except Exception as exc:  # network, auth or missing repo: one clear line
            raise InputError(f"could not fetch {path_or_id!r} from the hub ({type(exc).__name__}); download it and pass the local folder") from None
    schedule = schedule_from_scheduler_config(scheduler_config)
    model = DiffusersUNet(unet, schedule, scheduler_config.get("prediction_type", "epsilon")).to(device).eval()
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    height, width = (size, size) if isinstance(size, int) else size
    num_classes = cfg.num_class_embeds if getattr(cfg, "class_embed_type", None) is None and cfg.num_class_embeds else None
    return model, schedule, (cfg.in_channels, height, width), num_classes
