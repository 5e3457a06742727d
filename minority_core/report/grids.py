"""Per arm, the 16 rarest and 16 least rare images by AvgkNN: two 4 × 4 grids of tiles.

Each tile is its own small PNG (the image at its own size; the page upscales it without
interpolation) with what the reader asks of it captioned underneath: its AvgkNN, its label where
the run has labels, whether it is out of support. Each grid is also one PNG file beside the page
(built by `minority_core.io.images.grid_png`, the one grid builder), for reuse elsewhere. This
module picks the tiles, sizes them and names and captions each grid."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from minority_core.io.images import encode_png, grid_png
from minority_core.report.format import format_number
from minority_core.report.model import CheckedArm

GRID_COUNT = 16  # images per grid: 4 × 4
GRID_COLS = 4
GRID_PAD = 2
GUTTER_GREY = 200  # light grey gutters separate black or white tiles
MIN_TILE_PX = 64  # tiles are upscaled (nearest) to at least this size so 8×8 digits are visible
MAX_TILE_PX = 128  # larger images are drawn down to this on the page (the grid PNG keeps them whole)


@dataclass
class Tile:
    """One shown sample: its own PNG, the size the page draws it at, and what its caption says."""

    png: bytes
    size: tuple[int, int]  # (width, height) in CSS px the page draws it at
    upscaled: bool  # drawn larger than it is (by an integer factor: no interpolation wanted)
    sample: str  # sample id (or row number)
    prompt: str | None  # text-to-image runs: the sample's prompt
    avgknn: float
    label: str | None  # None: the run has no labels
    supported: bool | None  # None: support unknown (no Rarity / in_support scores)


@dataclass
class Grid:
    file: str
    caption: str
    png: bytes
    tiles: list[Tile]  # in grid order, row by row


def grid_picks(avgknn: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(file tag, caption words, score rows) of each grid: the 16 rarest and the 16 least rare
    rows by AvgkNN among the finite ones (ties keep row order). Empty when none is finite."""
    order = np.argsort(avgknn, kind="stable")
    ranked = order[np.isfinite(avgknn[order])]
    if not len(ranked):
        return []
    return [("rarest", "rarest (highest AvgkNN)", ranked[::-1][:GRID_COUNT]),
            ("least-rare", "least rare (lowest AvgkNN)", ranked[:GRID_COUNT])]


def shown_rows(avgknn: np.ndarray) -> list[int]:
    """Every score row a grid shows, in row order: the only images a report needs to decode."""
    return sorted({int(i) for _, _, rows in grid_picks(np.asarray(avgknn, dtype=np.float64)) for i in rows})


def arm_grids(arm: CheckedArm, index: int) -> tuple[list[Grid], str | None]:
    """The 16 rarest and 16 least rare images by AvgkNN; or why there are none (None: no images)."""
    if arm.images is None or (len(arm.images) == 0 and arm.image_rows is None):
        return [], None
    avgknn = arm.scores.get("avgknn")
    if avgknn is None:
        return [], "no AvgkNN scores to rank the images by"
    picks = grid_picks(avgknn)
    if not picks:
        return [], "no finite AvgkNN scores to rank the images by"
    grids = []
    for tag, words, order in picks:
        values = avgknn[order]
        images = _images(arm, order)
        caption = f"{len(order)} {words}: AvgkNN {format_number(values.min())} to {format_number(values.max())}"
        tiles = [_tile(arm, int(row), image) for row, image in zip(order, images, strict=True)]
        grids.append(Grid(f"grid-{index:02d}-{_slug(arm.name)}-{tag}.png", caption, _grid_png(images), tiles))
    return grids, None


def _tile(arm: CheckedArm, row: int, image: np.ndarray) -> Tile:
    """One score row's tile and caption facts."""
    hwc = image[..., None] if image.ndim == 2 else image
    height, width = hwc.shape[:2]
    scale = _upscale((height, width))
    if scale == 1 and max(height, width) > MAX_TILE_PX:
        shrink = MAX_TILE_PX / max(height, width)
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    else:
        size = (width * scale, height * scale)
    return Tile(
        png=encode_png(hwc),
        size=size,
        upscaled=scale > 1,
        sample=arm.sample_ids[row] if arm.sample_ids else f"#{row}",
        prompt=None if arm.prompts is None else arm.prompts[row],
        avgknn=float(arm.scores["avgknn"][row]),
        label=None if arm.labels is None else str(arm.labels[row]),
        supported=None if arm.supported is None else bool(arm.supported[row]),
    )


def _upscale(height_width: tuple[int, ...]) -> int:
    """The integer factor that brings an image to at least MIN_TILE_PX (1 for larger ones)."""
    return max(1, math.ceil(MIN_TILE_PX / max(height_width)))


def _images(arm: CheckedArm, rows: np.ndarray) -> np.ndarray:
    """The images of these score rows, whether the arm brought every image or only the shown ones."""
    if arm.image_rows is None:
        return arm.images[rows]
    position = {row: j for j, row in enumerate(arm.image_rows)}  # validate checked every shown row is there
    return arm.images[[position[int(r)] for r in rows]]


def _grid_png(images: np.ndarray) -> bytes:
    """A 4-column grid of NHW (grey) or NHWC (RGB) uint8 tiles, each upscaled by an integer factor
    (nearest neighbour, so no interpolated values) to at least MIN_TILE_PX."""
    nhwc = images[..., None] if images.ndim == 3 else images
    return grid_png(nhwc, ncol=GRID_COLS, upscale=_upscale(nhwc.shape[1:3]), pad=GRID_PAD, gutter=GUTTER_GREY)


def _slug(name: str) -> str:
    """A file-name-safe form of an arm name (the index prefix keeps names unique)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "arm"

