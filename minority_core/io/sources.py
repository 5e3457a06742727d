"""Real images for a reference set: the bundled digits, an image folder, or a Parquet dataset.

Returned as uint8 NHWC, the layout feature extractors and shards share.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow.parquet as pq

from minority_core.errors import InputError, MissingFileError
from minority_core.io.images import decode_png, to_uint8_nhwc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_reference_images(source: str, storage_options: dict | None = None, limit: int | None = None) -> np.ndarray:
    """`bundled:digits` (the imbalanced training split the demo model saw), a folder of images, or
    a Parquet file/folder with an `image` column ({bytes, path} as Hugging Face datasets writes it)."""
    if source == "bundled:digits":
        from minority_core.demo.digits import split_digits

        images = to_uint8_nhwc(split_digits().train_images)
        return images[:limit] if limit else images
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise MissingFileError(f"reference data {source!r} does not exist: pass bundled:digits, an image folder or a Parquet dataset")
    files = [path] if fs.isfile(path) else sorted(fs.find(path))
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        return _from_parquet(fs, parquet, source, limit)
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise InputError(f"no images (.png/.jpg/…) or .parquet files under {source!r}")
    return _stack([_decode(fs.cat_file(f), f) for f in images[:limit]], source)


def _from_parquet(fs, files: list[str], source: str, limit: int | None) -> np.ndarray:
    decoded = []
    for f in files:
        with fs.open(f, "rb") as handle:
            table = pq.read_table(handle, columns=None)
        if "image" not in table.column_names:
            raise InputError(f"{f} has no 'image' column (columns: {', '.join(table.column_names)})")
        for cell in table.column("image").to_pylist():
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            decoded.append(_decode(data, f))
            if limit and len(decoded) >= limit:
                return _stack(decoded, source)
    return _stack(decoded, source)


def _decode(data: bytes | None, where: str) -> np.ndarray:
    if not data:
        raise InputError(f"{where}: an image cell has no bytes")
    try:
        return decode_png(data)
    except Exception as exc:
        raise InputError(f"{where}: not a decodable image ({type(exc).__name__})") from None


def _stack(images: list[np.ndarray], source: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise InputError(f"reference images under {source!r} have different shapes {sorted(shapes)[:3]}: resize them to one size")
    return np.stack(images).astype(np.uint8)
