"""Adapter for diffusers `UNet2DModel` checkpoints (a saved pipeline or a model folder).

The UNet's config and weights come from `from_pretrained` (safetensors preferred; a `.bin`
is read by diffusers with `torch.load(weights_only=True)`, never unpickling objects); the
noise schedule comes from the accompanying `DDPMScheduler` config.
"""

from __future__ import annotations

import hashlib
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


def _number(config: dict, key: str, default: float, kind: type = float) -> float:
    """config[key] as `kind`, or one line naming the key: `int("many")` would be a bare ValueError."""
    value = config.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and float(value).is_integer() and value >= 1
    if not ok:
        want = "a whole number ≥ 1 (DDPM's is 1000)" if kind is int else "a finite number"
        raise InputError(f"scheduler config: {key} is {value!r}, expected {want}: fix scheduler_config.json")
    return kind(value)


def schedule_from_scheduler_config(config: dict) -> NoiseSchedule:
    """NoiseSchedule from a diffusers DDPMScheduler config dict."""
    steps = _number(config, "num_train_timesteps", 1000, int)
    kind = config.get("beta_schedule", "linear")
    start, end = _number(config, "beta_start", 1e-4), _number(config, "beta_end", 0.02)
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
            try:
                config = json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{candidate} is not valid JSON ({str(exc).splitlines()[0]}): restore it (DDPMScheduler.save_pretrained writes it)") from None
            if not isinstance(config, dict):
                raise InputError(f"{candidate} must hold a JSON object (a DDPMScheduler config), got {type(config).__name__}")
            return config
    return None


BUNDLED = Path(__file__).resolve().parent / "bundled"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def check_sample_size(cfg, folder: Path) -> tuple[int, int]:
    """(height, width) the sampler will draw, refused in one line before any sampling when it
    cannot be what the weights were made for.

    A UNet2DModel is fully convolutional: its weights carry no image size, and it runs at any
    size, so a wrong `sample_size` in config.json silently samples garbage at that size. Two
    signals are real and cheap: (1) the size must survive the UNet's downsamplings (each halves
    it; a size they do not divide fails only mid-sampling, in a skip connection); (2) weights
    that are byte for byte a bundled model's were trained at that model's size (the case an
    edited copy of bundled:digits makes). A third-party checkpoint relabelled at another size
    that its blocks divide is not detectable from the folder."""
    raw = cfg.sample_size
    size = (raw, raw) if isinstance(raw, int) and not isinstance(raw, bool) else tuple(raw) if isinstance(raw, (list, tuple)) else None
    if size is None or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise InputError(f"diffusers UNet config: sample_size is {raw!r}, expected a whole number ≥ 1 (or [height, width]): fix config.json")
    factor = 2 ** (len(cfg.down_block_types) - 1)  # every down block but the last halves the image
    if any(v % factor for v in size):
        raise InputError(f"diffusers UNet config: sample_size {raw} is not divisible by {factor} ({len(cfg.down_block_types)} down blocks, "
                         "each but the last halving the image): fix sample_size in config.json to the size the model was trained at")
    trained = _bundled_size_of(folder)
    if trained is not None and trained[:2] != size:
        raise InputError(f"diffusers UNet config says sample_size {raw}, but its weights are the bundled model's, trained at {trained[0]}×{trained[1]}: "
                         f"set sample_size to {trained[0]} in config.json (or use bundled:{trained[2]})")
    return size


def _bundled_size_of(folder: Path) -> tuple[int, int, str] | None:
    """(height, width, name) of the bundled model whose UNet weights these are byte for byte, if any
    (files of another size are never read)."""
    if not folder.is_dir():
        return None
    mine = next((p for p in (folder / "unet" / WEIGHTS, folder / WEIGHTS) if p.is_file()), None)
    if mine is None or BUNDLED in mine.resolve().parents:
        return None
    for weights in BUNDLED.glob(f"*/unet/{WEIGHTS}"):
        if weights.stat().st_size == mine.stat().st_size and _sha256(weights) == _sha256(mine):
            raw = json.loads((weights.parent / "config.json").read_text())["sample_size"]
            h, w = (raw, raw) if isinstance(raw, int) else raw
            return h, w, weights.parents[1].name
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    height, width = check_sample_size(cfg, Path(path_or_id).expanduser())
    num_classes = cfg.num_class_embeds if getattr(cfg, "class_embed_type", None) is None and cfg.num_class_embeds else None
    return model, schedule, (cfg.in_channels, height, width), num_classes
