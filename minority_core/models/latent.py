"""Latent diffusion pipelines (Stable Diffusion layout) with self-guided minority guidance.

**An extension beyond the paper.** Um & Ye (ECCV 2024) guide pixel-space ε-models only. This
module brings a second model family from the ecosystem: diffusers latent pipelines saved in a
local folder (`model_index.json`, `unet/`, `vae/`, `scheduler/`, `text_encoder/`,
`tokenizer/`: a VAE, a text-conditioned `UNet2DConditionModel` and a text encoder).

- The sampler runs on the VAE's latents, already multiplied by `vae.config.scaling_factor`,
  and the minority guidance is computed on them *exactly as on pixels* (docs/DESIGN.md §1: Tweedie on
  the latent, re-noise at the perturbation step, stop-gradient target, L2 distance,
  normalised gradient × w × Σ). Latents are not in [−1, 1], so x̂0 is never clipped
  (`clip_range=None`). LPIPS needs images, so `distance="lpips"` is refused here.
- Classifier-free guidance is folded into the model the samplers see:
  `LatentPipeline.denoiser(prompts, s)` returns `model(x, t, y=None) -> ε` with
  ε = ε_u + s·(ε_c − ε_u) (unconditional and conditional batched in one UNet call), so
  `ancestral_sample`/`ddim_sample` run unchanged and the minority gradient flows through
  the CFG combination.
- Prompts are per sample (`sample(prompts=[...])`), or one prompt broadcast; `shard_prompts`
  assigns a prompt list to the samples of a shard by their global index, so a shard's prompts
  do not depend on how many workers ran it.
- The output of `sample` is decoded images, float NCHW in [−1, 1].

Weights are read weights-only: safetensors where the folder has them, else diffusers' and
transformers' own `.bin` loading (`torch.load(weights_only=True)`); nothing is fetched from a
hub (`local_files_only=True`). The parts are whatever `model_index.json` names from `diffusers`
or `transformers` (e.g. `CLIPTextModel` + `CLIPTokenizer`), or a class registered here by name
with `register_component` (library name `minority_core`; the tests register a tiny text encoder
and tokenizer so a pipeline can be built and loaded where transformers is not installed). No
other module is ever imported on a folder's say-so: that would run code from a downloaded folder.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from minority_core.config.guidance import MinorityGuidance
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.samplers import StepCallback, ancestral_sample, ddim_sample
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError
from minority_core.models.diffusers_unet import schedule_from_scheduler_config

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SAMPLERS = ("ddim", "ancestral")


# -- components registered by name ------------------------------------------------------------------

_REGISTERED: dict[str, type] = {}


def register_component(name: str, cls: type) -> None:
    """Let `model_index.json` entries `["minority_core", name]` load `cls` (via its `from_pretrained`).

    The explicit way to load a part that is neither a diffusers nor a transformers class: the
    loader resolves only names registered here, never a module a folder names.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"a component name must be a non-empty string, got {name!r}")
    if not callable(getattr(cls, "from_pretrained", None)):
        raise InputError(f"{getattr(cls, '__name__', cls)!r} has no from_pretrained: it cannot be loaded from a pipeline folder")
    _REGISTERED[name] = cls


# -- the CFG denoiser the samplers see --------------------------------------------------------------


class CFGDenoiser(nn.Module):
    """`model(x, t, y=None) -> ε` for a text-conditioned UNet with classifier-free guidance.

    ε = ε_u + s·(ε_c − ε_u), unconditional and conditional rows batched in one UNet call
    (s = 1 is the conditional prediction alone, computed without the unconditional half).
    A v-prediction UNet is converted to ε (√ᾱ v + √(1−ᾱ) x_t) after the combination; a UNet
    with 2C output channels (learned variance) keeps the conditional variance channels.
    """

    def __init__(self, unet: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float,
                 prediction_type: str, alphas_cumprod: torch.Tensor, keep_variance: bool) -> None:
        super().__init__()
        self.unet = unet
        self.guidance_scale = float(guidance_scale)
        self.prediction_type = prediction_type
        self.keep_variance = keep_variance
        self.register_buffer("cond", cond, persistent=False)
        self.register_buffer("uncond", uncond, persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise InputError("a latent text-to-image pipeline is conditioned on prompts, not class labels: pass y=None")
        n, channels = x.shape[0], x.shape[1]
        cond = self._rows(self.cond, n)
        if self.uncond is None:  # s = 1: conditional only
            out = self.unet(x, t, encoder_hidden_states=cond.to(x.dtype)).sample
        else:
            both = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([self._rows(self.uncond, n), cond]).to(x.dtype)).sample
            out_u, out_c = both.chunk(2)
            eps = out_u[:, :channels] + self.guidance_scale * (out_c[:, :channels] - out_u[:, :channels])
            out = torch.cat([eps, out_c[:, channels:]], dim=1)
        if not self.keep_variance:
            out = out[:, :channels]
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            out = torch.cat([abar.sqrt() * out[:, :channels] + (1 - abar).sqrt() * x, out[:, channels:]], dim=1)
        return out

    @staticmethod
    def _rows(embeddings: torch.Tensor, n: int) -> torch.Tensor:
        if embeddings.shape[0] == n:
            return embeddings
        if embeddings.shape[0] == 1:
            return embeddings.expand(n, *embeddings.shape[1:])
        raise InputError(f"the denoiser was built for {embeddings.shape[0]} prompts but called on a batch of {n}")


# -- the pipeline ---------------------------------------------------------------------------------


@dataclass
class LatentPipeline:
    """A loaded latent pipeline: `denoiser()` for the samplers, `sample()` for decoded images."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    schedule: NoiseSchedule
    prediction_type: str
    latent_shape: tuple[int, int, int]  # (C, h, w) of the latents the sampler runs on
    scaling_factor: float
    shift_factor: float | None
    keep_variance: bool
    device: torch.device
    folder: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the decoded images: the VAE upsamples by 2 per decoder block after the first."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        _, h, w = self.latent_shape
        return (int(self.vae.config.out_channels), h * factor, w * factor)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [len(prompts), L, D] (the UNet's cross-attention input)."""
        prompts = _check_prompts(prompts, "prompts")
        length = int(getattr(self.tokenizer, "model_max_length", 77))
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float()

    def denoiser(self, prompts: Sequence[str], guidance_scale_cfg: float = 7.5, negative_prompt: str | Sequence[str] = "") -> CFGDenoiser:
        """`model(x, t, y=None) -> ε` over latents, one prompt per batch row (or one for all rows)."""
        if not isinstance(guidance_scale_cfg, (int, float)) or isinstance(guidance_scale_cfg, bool) or not math.isfinite(guidance_scale_cfg) or guidance_scale_cfg < 0:
            raise InputError(f"guidance_scale_cfg must be a finite number ≥ 0, got {guidance_scale_cfg!r}")
        prompts = _check_prompts(prompts, "prompts")
        cond = self.encode_prompts(prompts)
        uncond = None
        if guidance_scale_cfg != 1:
            uncond = self.encode_prompts(expand_prompts(negative_prompt, len(prompts)))
        abar = torch.tensor(self.schedule.alphas_cumprod, dtype=torch.float32, device=self.device)
        return CFGDenoiser(self.unet, cond, uncond, guidance_scale_cfg, self.prediction_type, abar, self.keep_variance).eval()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Scaled latents → images float NCHW in [−1, 1] through the VAE decoder."""
        images = []
        for chunk in latents.split(batch_size):
            z = chunk.to(self.device) / self.scaling_factor
            if self.shift_factor is not None:
                z = z + self.shift_factor
            images.append(self.vae.decode(z).sample.float().clamp(-1.0, 1.0))
        return torch.cat(images)

    def sample_latents(
        self,
        prompts: str | Sequence[str],
        minority_guidance: MinorityGuidance | None = None,
        steps: int = 50,
        cfg_scale: float = 7.5,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
        *,
        num_samples: int | None = None,
        negative_prompt: str | Sequence[str] = "",
        eta: float = 0.0,
        progress: bool = False,
        autocast: bool = False,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """The sampler's latents (scaled by `scaling_factor`), before decoding."""
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if isinstance(minority_guidance, MinorityGuidance) and minority_guidance.distance == "auto":
            minority_guidance = replace(minority_guidance, distance="l2")  # latents are not images
        if isinstance(minority_guidance, MinorityGuidance) and minority_guidance.distance != "l2":
            raise InputError("minority guidance on latents uses distance 'l2': LPIPS compares images, not VAE latents")
        prompts = expand_prompts(prompts, num_samples)
        model = self.denoiser(prompts, cfg_scale, negative_prompt)
        grid = self.schedule.respace(steps)
        x = draw_noise((len(prompts), *self.latent_shape), generator, self.device)
        options = dict(guidance=minority_guidance, generator=generator, progress=progress, callback=callback, clip_range=None, autocast=autocast)
        if sampler == "ddim":
            return ddim_sample(model, x, grid, eta=eta, **options)
        return ancestral_sample(model, x, grid, **options)

    def sample(
        self,
        prompts: str | Sequence[str],
        minority_guidance: MinorityGuidance | None = None,
        steps: int = 50,
        cfg_scale: float = 7.5,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
        **options,
    ) -> torch.Tensor:
        """Decoded images float NCHW in [−1, 1]: one per prompt (or `num_samples` of one prompt).

        `minority_guidance=None` is plain (CFG) sampling; same generator seed ⇒ same images.
        Options: num_samples, negative_prompt, eta (DDIM), progress, autocast, callback.
        """
        return self.decode(self.sample_latents(prompts, minority_guidance, steps, cfg_scale, generator, sampler, **options))


def expand_prompts(prompts: str | Sequence[str], num_samples: int | None = None) -> list[str]:
    """One prompt per sample: a single prompt (str or 1-list) is broadcast to `num_samples`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = _check_prompts(prompts, "prompts")
    if num_samples is None:
        return prompts
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise InputError(f"num_samples must be an integer ≥ 1, got {num_samples!r}")
    if len(prompts) == 1:
        return prompts * num_samples
    if len(prompts) != num_samples:
        raise InputError(f"got {len(prompts)} prompts for {num_samples} samples: give one prompt per sample, or one prompt")
    return prompts


def shard_prompts(prompts: str | Sequence[str], start: int, count: int) -> list[str]:
    """Prompts of the samples start … start+count−1 of a run: sample k gets prompts[k mod len].

    Depends only on the samples' global indices, so the assignment is the same however the run
    is split into shards or workers.
    """
    prompts = [prompts] if isinstance(prompts, str) else _check_prompts(prompts, "prompts")
    if start < 0 or count < 1:
        raise InputError(f"start must be ≥ 0 and count ≥ 1, got start={start}, count={count}")
    return [prompts[(start + k) % len(prompts)] for k in range(count)]


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a UTF-8 text file, one per line; blank lines are skipped, other whitespace kept."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompts file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"prompts file {path} is a directory: give a text file, one prompt per line") from None
    except UnicodeDecodeError:
        raise InputError(f"prompts file {path} is not UTF-8 text") from None
    prompts = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not prompts:
        raise InputError(f"prompts file {path} has no prompts: write one per line")
    return prompts


def _check_prompts(prompts, what: str) -> list[str]:
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"{what} must be a non-empty list of strings")
    return prompts


# -- loading --------------------------------------------------------------------------------------


def load_latent_pipeline(folder: str | Path, device: torch.device | str = "cpu") -> LatentPipeline:
    """A `LatentPipeline` from a local diffusers pipeline folder (weights only, no network)."""
    root = Path(folder).expanduser()
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise InputError(f"no diffusers pipeline in {root}: expected model_index.json beside unet/, vae/, scheduler/, text_encoder/, tokenizer/")
    index = json.loads(index_path.read_text())
    missing = [part for part in PARTS if not (root / part).is_dir()]
    if missing:
        raise InputError(f"the pipeline in {root} lacks {', '.join(p + '/' for p in missing)} (a latent pipeline needs {', '.join(PARTS)})")
    device = torch.device(device)

    scheduler_file = root / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise InputError(f"no scheduler config at {scheduler_file}")
    scheduler_config = json.loads(scheduler_file.read_text())
    schedule = schedule_from_scheduler_config(scheduler_config)
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"unsupported prediction_type {prediction_type!r}: only 'epsilon' and 'v_prediction' models can be guided")

    unet = _load_part(root, index, "unet", ("diffusers", "UNet2DConditionModel"))
    vae = _load_part(root, index, "vae", ("diffusers", "AutoencoderKL"))
    text_encoder = _load_part(root, index, "text_encoder", ("transformers", "CLIPTextModel"))
    tokenizer = _load_part(root, index, "tokenizer", ("transformers", "CLIPTokenizer"))
    for module in (unet, vae, text_encoder):
        module.to(device).eval().requires_grad_(False)

    channels = int(unet.config.in_channels)
    latent_channels = int(getattr(vae.config, "latent_channels", channels))
    if channels != latent_channels:
        raise InputError(f"the UNet takes {channels} channels but the VAE makes {latent_channels}-channel latents (inpainting/depth UNets are not supported)")
    out_channels = int(getattr(unet.config, "out_channels", channels))
    if out_channels not in (channels, 2 * channels):
        raise InputError(f"the UNet returns {out_channels} channels for {channels}-channel latents; expected {channels} or {2 * channels}")
    keep_variance = out_channels == 2 * channels and scheduler_config.get("variance_type") == "learned_range"
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shift = getattr(vae.config, "shift_factor", None)
    return LatentPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule, prediction_type=prediction_type,
        latent_shape=(channels, int(height), int(width)), scaling_factor=float(getattr(vae.config, "scaling_factor", 1.0) or 1.0),
        shift_factor=None if shift is None else float(shift), keep_variance=keep_variance, device=device, folder=str(root),
    )


def _load_part(root: Path, index: dict, part: str, default: tuple[str, str]):
    entry = index.get(part) or list(default)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
        raise InputError(f"model_index.json: {part} must be [library, class name], got {entry!r}")
    library, class_name = entry
    cls = _resolve_class(library, class_name, part)
    kwargs: dict = {"subfolder": part}
    if part != "tokenizer":
        kwargs["local_files_only"] = True
        if any((root / part).glob("*.safetensors")):
            kwargs["use_safetensors"] = True
    elif library != "minority_core":
        kwargs["local_files_only"] = True
    try:
        return cls.from_pretrained(str(root), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not load the {part} ({library}.{class_name}) from {root / part}: {first}") from None


def _resolve_class(library: str, class_name: str, part: str):
    """The class model_index.json names: from diffusers, transformers, or `register_component` only."""
    if library in ("minority_core", __name__):
        cls = _REGISTERED.get(class_name)
        if cls is None:
            known = ", ".join(sorted(_REGISTERED)) or "none"
            raise InputError(f"model_index.json: the {part} is minority_core.{class_name}, which is not registered (registered: {known}); "
                             "register it with minority_core.models.latent.register_component")
    elif library in ("diffusers", "transformers"):
        try:
            module = importlib.import_module(library)
        except ImportError:
            extra = " (pip install 'minority-synth[text]')" if library == "transformers" else ""
            raise InputError(f"the {part} is a {library}.{class_name}: install {library}{extra}") from None
        cls = getattr(module, class_name, None)
    else:
        raise InputError(f"model_index.json: {part} comes from {library!r}; only diffusers, transformers and minority_core classes are loaded")
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise InputError(f"model_index.json: {library} has no loadable class {class_name!r} for the {part}")
    return cls
