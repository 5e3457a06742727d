"""The ADM UNet of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis").

Written for this project, but with module names, parameter names and shapes identical to
openai/guided-diffusion, so the published checkpoints (and Um & Ye's CelebA-64 model, trained
with that code) load with strict key matching.  `build_adm(preset)` builds one of the
configurations in `ADM_PRESETS`; `load_adm_state_dict` loads a checkpoint into it.

What a strict load cannot check: head count (num_heads / num_head_channels), attention order
(use_new_attention_order) and dropout leave the parameter shapes unchanged, so a wrong value
there loads cleanly and only shows in the samples.  The presets set them from the published
flag lines.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minority_core.errors import InputError

__all__ = [
    "ADM_PRESETS",
    "ADMSuperResUNet",
    "ADMUNet",
    "build_adm",
    "default_channel_mult",
    "load_adm_state_dict",
    "qkv_attention",
    "timestep_embedding",
]


# --------------------------------------------------------------------------- building blocks


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, so the fp16 torso keeps stable statistics."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    """Zero a layer that closes a residual branch, so every branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding laid out as guided-diffusion's ([cos | sin]): the weights expect it."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepBlock(nn.Module):
    """Marker for blocks whose forward also takes the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface only
        raise NotImplementedError


class EmbedSequential(nn.Sequential):
    """nn.Sequential (so children are named 0, 1, ...) that hands `emb` to TimestepBlocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (the resample used when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """Strided 3x3 conv (the resample used when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def _resample(x: Tensor, mode: str | None) -> Tensor:
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding, optionally resampling (BigGAN-style)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # Resample between the activation and the conv, as the checkpoints were trained.
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](_resample(h, self.resample))
        x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, heads: int, legacy_order: bool) -> Tensor:
    """Multi-head attention over a packed [N, 3*H*C, T] tensor; returns [N, H*C, T].

    legacy_order: the packing is heads-then-(q,k,v) (the old layout); otherwise (q,k,v)-then-heads
    (`use_new_attention_order`).  The two layouts share shapes, so a checkpoint only works with
    the one it was trained with.
    """
    n, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy_order:
        q, k, v = qkv.reshape(n, heads, 3 * ch, length).split(ch, dim=2)
    else:
        q, k, v = qkv.reshape(n, 3, heads, ch, length).unbind(1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(n, heads * ch, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int | None, new_order: bool) -> None:
        super().__init__()
        if num_head_channels is not None:
            if channels % num_head_channels:
                raise InputError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise InputError(f"{channels} channels are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.legacy_order = not new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy_order)
        return (x + self.proj_out(h)).reshape(n, c, *spatial)


# --------------------------------------------------------------------------- the UNet


class ADMUNet(nn.Module):
    """The ADM UNet: forward(x, timesteps, y=None) -> [N, out_channels, H, W].

    attention_ds holds downsampling factors (1 = full resolution) at which attention is used.
    With use_fp16 the torso (input/middle/output blocks' convolutions) is stored in float16 as
    guided-diffusion's convert_to_fp16 does; inputs and outputs stay float32.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_ds: tuple[int, ...],
        channel_mult: tuple[float, ...],
        dropout: float = 0.0,
        num_classes: int | None = None,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        num_heads_upsample: int | None = None,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.num_classes = num_classes
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(cin: int, cout: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, dropout, cout, use_scale_shift_norm, resample)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, resample="down") if resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads_upsample or num_heads))
                if level and i == num_res_blocks:
                    layers.append(res(ch, resample="up") if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, out_channels, 3, padding=1)))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> None:
        """Store the torso's convolutions in float16 (norms, embeddings and `out` stay float32)."""
        self._convert_torso(torch.float16)

    def convert_to_fp32(self) -> None:
        self._convert_torso(torch.float32)

    def _convert_torso(self, dtype: torch.dtype) -> None:
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is None) != (self.num_classes is None):
            raise InputError("pass class labels y if and only if the model is class-conditional")
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)

        h = x.to(self.input_blocks[0][0].weight.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class ADMSuperResUNet(ADMUNet):
    """Upsampler: the low-res image, resized bilinearly to x's size, is concatenated to x."""

    def forward(  # type: ignore[override]
        self, x: Tensor, timesteps: Tensor, low_res: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        if low_res is None:
            raise InputError("the super-resolution model needs low_res")
        upsampled = F.interpolate(low_res, x.shape[-2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, y=y)


# --------------------------------------------------------------------------- presets


def _arch(**flags: Any) -> dict[str, Any]:
    """Architecture flags: guided-diffusion's model defaults updated with a preset's flag line."""
    base: dict[str, Any] = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        channel_mult=None,  # None: derived from image_size as guided-diffusion does
        attention_resolutions=(16, 8),
        num_heads=4,
        num_head_channels=None,
        num_heads_upsample=None,
        dropout=0.0,
        num_classes=None,
        learn_sigma=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_new_attention_order=False,
        use_fp16=False,
        super_res=False,
    )
    unknown = set(flags) - set(base)
    if unknown:
        raise TypeError(f"unknown ADM flag(s) in a preset: {sorted(unknown)}")
    return base | flags


def _diffusion(
    image_size: int, num_classes: int | None, noise_schedule: str, small_size: int | None = None
) -> dict[str, Any]:
    """What a sampler needs besides the network (all four models learn sigma, 1000 steps)."""
    return dict(
        diffusion_steps=1000,
        noise_schedule=noise_schedule,
        learn_sigma=True,
        image_size=image_size,
        num_classes=num_classes,
        small_size=small_size,
    )


_BIG_64 = dict(  # the guided-diffusion 64x64 ImageNet architecture
    image_size=64,
    num_channels=192,
    num_res_blocks=3,
    attention_resolutions=(32, 16, 8),
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    use_new_attention_order=True,
    learn_sigma=True,
    dropout=0.1,
    use_fp16=True,
)

ADM_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Um & Ye's CelebA-64 model (sg-minority README's flag line): the ImageNet-64 architecture
    # without classes, cosine schedule.  This is our best reading of that checkpoint; the strict
    # load says if a given file differs.
    "celeba64": {
        "unet": _arch(**_BIG_64),
        "diffusion": _diffusion(64, None, "cosine"),
    },
    # OpenAI lsun_bedroom.pt (also lsun_cat.pt, lsun_horse.pt).
    "lsun256": {
        "unet": _arch(
            image_size=256,
            num_channels=256,
            num_res_blocks=2,
            attention_resolutions=(32, 16, 8),
            num_head_channels=64,
            resblock_updown=True,
            use_scale_shift_norm=True,
            learn_sigma=True,
            dropout=0.1,
            use_fp16=True,
        ),
        "diffusion": _diffusion(256, None, "linear"),
    },
    # OpenAI 64x64_diffusion.pt (class-conditional ImageNet).
    "imagenet64": {
        "unet": _arch(**_BIG_64, num_classes=1000),
        "diffusion": _diffusion(64, 1000, "cosine"),
    },
    # OpenAI 64_256_upsampler.pt (class-conditional ImageNet 64 -> 256).
    "imagenet64to256": {
        "unet": _arch(
            image_size=256,
            num_channels=192,
            num_res_blocks=2,
            attention_resolutions=(32, 16, 8),
            num_heads=4,
            resblock_updown=True,
            use_scale_shift_norm=True,
            learn_sigma=True,
            num_classes=1000,
            use_fp16=True,
            super_res=True,
        ),
        "diffusion": _diffusion(256, 1000, "linear", small_size=64),
    },
}


def default_channel_mult(image_size: int, super_res: bool = False) -> tuple[float, ...]:
    """guided-diffusion's create_model / sr_create_model choice of per-level widths."""
    table: dict[int, tuple[float, ...]] = {
        512: (1, 1, 2, 2, 4, 4) if super_res else (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size not in table or (super_res and image_size == 128):
        raise InputError(f"no default channel_mult for image_size={image_size} (super_res={super_res})")
    return table[image_size]


def _numbers(value: str | tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """Accept guided-diffusion's comma strings ("32,16,8") as well as tuples."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(int(float(v)) if float(v).is_integer() else float(v) for v in items)


def build_adm(preset: str, **overrides: Any) -> ADMUNet:
    """Build a preset's network (random weights); overrides replace architecture flags."""
    if preset not in ADM_PRESETS:
        raise InputError(f"unknown ADM preset {preset!r}; valid: {', '.join(ADM_PRESETS)}")
    flags = dict(ADM_PRESETS[preset]["unet"])
    unknown = sorted(set(overrides) - set(flags))
    if unknown:
        raise InputError(f"unknown ADM override(s) {', '.join(unknown)}; valid: {', '.join(flags)}")
    flags.update(overrides)

    size = flags["image_size"]
    channel_mult = _numbers(flags["channel_mult"] or default_channel_mult(size, flags["super_res"]))
    cls = ADMSuperResUNet if flags["super_res"] else ADMUNet
    return cls(
        in_channels=6 if flags["super_res"] else 3,
        model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_ds=tuple(size // int(r) for r in _numbers(flags["attention_resolutions"])),
        channel_mult=channel_mult,
        dropout=flags["dropout"],
        num_classes=flags["num_classes"],
        num_heads=flags["num_heads"],
        num_head_channels=flags["num_head_channels"],
        num_heads_upsample=flags["num_heads_upsample"],
        use_scale_shift_norm=flags["use_scale_shift_norm"],
        resblock_updown=flags["resblock_updown"],
        use_new_attention_order=flags["use_new_attention_order"],
        use_fp16=flags["use_fp16"],
    )


# --------------------------------------------------------------------------- loading


def _read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


Shapes = dict[str, tuple[int, ...]]


def _block_count(shapes: Shapes) -> int:
    return len({k.split(".")[1] for k in shapes if k.startswith("input_blocks.")})


def _likely_flag(ckpt: Shapes, own: Shapes) -> str:
    """Name the flag that most plausibly explains why `ckpt` does not fit `own`."""
    diff = sorted(set(ckpt) ^ set(own))
    mismatched = {k: (ckpt[k], own[k]) for k in ckpt if k in own and ckpt[k] != own[k]}
    if "label_emb.weight" in diff:
        has = "class-conditional" if "label_emb.weight" in ckpt else "unconditional: num_classes=None"
        return f"num_classes (the checkpoint is {has})"
    if "time_embed.0.weight" in mismatched:
        return f"num_channels (the checkpoint has {ckpt['time_embed.0.weight'][1]})"
    first, last = mismatched.get("input_blocks.0.0.weight"), mismatched.get("out.2.weight")
    if first and first[0][1] != first[1][1]:
        return f"super_res (the checkpoint takes {first[0][1]} input channels)"
    if last and last[0][0] != last[1][0]:
        return f"learn_sigma (the checkpoint outputs {last[0][0]} channels)"
    if _block_count(ckpt) != _block_count(own):
        return "num_res_blocks or image_size / channel_mult"
    if any(k.endswith((".op.weight", ".conv.weight")) for k in diff):
        return "resblock_updown"
    if any(".qkv." in k for k in diff):
        return "attention_resolutions"
    if mismatched and all(".emb_layers." in k for k in mismatched):
        return "use_scale_shift_norm"
    return "channel_mult / image_size"


def _preview(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_adm_state_dict(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint weights-only and strictly; a mismatch is one ValueError line."""
    state = _read_checkpoint(path)
    ckpt = {k: tuple(v.shape) for k, v in state.items()}
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in own if k not in ckpt]
    unexpected = [k for k in ckpt if k not in own]
    mismatched = [f"{k} {list(v)} vs {list(own[k])}" for k, v in ckpt.items() if k in own and v != own[k]]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint vs module) {_preview(mismatched)}")
        raise InputError(
            f"{os.fspath(path)} does not fit this ADM: {'; '.join(parts)}; "
            f"likely wrong flag: {_likely_flag(ckpt, own)}"
        )
    module.load_state_dict(state, strict=True)
