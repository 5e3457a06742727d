"""Image conversions and contact sheets (PNG grids) for people to look at."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from minority_core.errors import InputError


def to_uint8_nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float NCHW in [−1, 1] → uint8 NHWC, rounding as image libraries do."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4:
        raise InputError(f"images must be 4-D NCHW, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("images contain NaN or inf; refusing to encode them")
    scaled = np.clip((array.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return scaled.transpose(0, 2, 3, 1)


def grid_png(images_uint8_nhwc: np.ndarray, ncol: int | None = None, upscale: int | None = None, pad: int = 1) -> bytes:
    """A contact sheet of NHWC uint8 images as PNG bytes; tiny images are upscaled (nearest) to be seen."""
    images = np.asarray(images_uint8_nhwc)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise InputError(f"grid_png needs a non-empty uint8 NHWC array, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    upscale = upscale or max(1, 32 // max(h, w))
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    hh, ww = h * upscale, w * upscale
    canvas = np.full((nrow * (hh + pad) + pad, ncol * (ww + pad) + pad, c), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, ncol)
        big = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
        canvas[pad + r * (hh + pad) : pad + r * (hh + pad) + hh, pad + col * (ww + pad) : pad + col * (ww + pad) + ww] = big
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buffer, format="PNG")
    return buffer.getvalue()
