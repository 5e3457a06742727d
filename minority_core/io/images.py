"""The one image codec: float tensors to uint8 NHWC, PNG bytes to and from arrays, contact sheets.

Shards store each sample as a lossless PNG (grayscale "L" or RGB), reference images arrive in
whatever format PIL reads, and people look at PNG grids: all of it goes through here, so every
reader and writer agrees on channels and rounding.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from minority_core.errors import InputError

if TYPE_CHECKING:
    import torch

# PIL modes that decode to one channel; any other mode decodes to RGB
_GRAYSCALE_MODES = ("L", "1", "I;16")


def to_uint8_nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float NCHW in [−1, 1] → uint8 NHWC, rounding as image libraries do."""
    import torch  # here, so that loading shards and PNGs never pays for importing torch

    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4:
        raise InputError(f"images must be 4-D NCHW, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("images contain NaN or inf; refusing to encode them")
    scaled = np.clip((array.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return scaled.transpose(0, 2, 3, 1)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of one uint8 HWC image (grayscale "L" when C == 1, RGB when C == 3)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise InputError(f"image must be HWC with C in (1, 3), got shape {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of `encode_png`: uint8 HWC, C = 1 for grayscale (8-bit, 1-bit or 16-bit), else 3.

    Reads any format PIL reads (JPEG, BMP, WebP, ...), which is how reference images are loaded.
    Undecodable bytes raise PIL's own error; callers that know where the bytes came from name it.
    """
    with Image.open(io.BytesIO(data)) as pil:
        pil.load()
        if pil.mode not in ("L", "RGB"):
            pil = pil.convert("L" if pil.mode in _GRAYSCALE_MODES else "RGB")
        arr = np.asarray(pil, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def grid_png(
    images_uint8_nhwc: np.ndarray, ncol: int | None = None, upscale: int | None = None, pad: int = 1, *, gutter: int = 255
) -> bytes:
    """A contact sheet of NHWC uint8 images as PNG bytes; tiny images are upscaled (nearest) to be seen.

    `ncol` defaults to a square layout, `upscale` to the largest factor keeping tiles within 32 px;
    `gutter` is the grey level of the `pad`-pixel lines between tiles (white by default; a mid grey
    separates black and white tiles alike).
    """
    images = np.asarray(images_uint8_nhwc)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise InputError(f"grid_png needs a non-empty uint8 NHWC array, got {images.dtype} {images.shape}")
    if isinstance(gutter, bool) or not isinstance(gutter, int) or not 0 <= gutter <= 255:
        raise InputError(f"grid_png gutter must be a grey level in [0, 255], got {gutter!r}")
    n, h, w, c = images.shape
    upscale = upscale or max(1, 32 // max(h, w))
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    hh, ww = h * upscale, w * upscale
    canvas = np.full((nrow * (hh + pad) + pad, ncol * (ww + pad) + pad, c), gutter, dtype=np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, ncol)
        big = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
        canvas[pad + r * (hh + pad) : pad + r * (hh + pad) + hh, pad + col * (ww + pad) : pad + col * (ww + pad) + ww] = big
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buffer, format="PNG")
    return buffer.getvalue()
