"""Per arm, the 16 rarest and 16 least rare images by AvgkNN as two 4 × 4 PNG grids.

The grids themselves are built by `minority_core.io.images.grid_png` (the one grid builder);
this module picks the tiles, sizes them and names and captions each grid."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from minority_core.io.images import grid_png
from minority_core.report.format import format_number
from minority_core.report.model import CheckedArm

GRID_COUNT = 16  # images per grid: 4 × 4
GRID_COLS = 4
GRID_PAD = 2
GUTTER_GREY = 200  # light grey gutters separate black or white tiles
MIN_TILE_PX = 64  # tiles are upscaled (nearest) to at least this size so 8×8 digits are visible


@dataclass
class Grid:
    file: str
    caption: str
    png: bytes
    ids: list[tuple[str, float]]  # (sample id, AvgkNN) of the tiles, in order


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
        ids = [(_tile_label(arm, i), float(avgknn[i])) for i in order]
        caption = f"{len(order)} {words}: AvgkNN {format_number(values.min())} to {format_number(values.max())}"
        grids.append(Grid(f"grid-{index:02d}-{_slug(arm.name)}-{tag}.png", caption, _grid_png(_tiles(arm, order)), ids))
    return grids, None


def _tiles(arm: CheckedArm, rows: np.ndarray) -> np.ndarray:
    """The images of these score rows, whether the arm brought every image or only the shown ones."""
    if arm.image_rows is None:
        return arm.images[rows]
    position = {row: j for j, row in enumerate(arm.image_rows)}  # validate checked every shown row is there
    return arm.images[[position[int(r)] for r in rows]]


def _grid_png(images: np.ndarray) -> bytes:
    """A 4-column grid of NHW (grey) or NHWC (RGB) uint8 tiles, each upscaled by an integer factor
    (nearest neighbour, so no interpolated values) to at least MIN_TILE_PX."""
    nhwc = images[..., None] if images.ndim == 3 else images
    scale = max(1, math.ceil(MIN_TILE_PX / max(nhwc.shape[1:3])))
    return grid_png(nhwc, ncol=GRID_COLS, upscale=scale, pad=GRID_PAD, gutter=GUTTER_GREY)


def _slug(name: str) -> str:
    """A file-name-safe form of an arm name (the index prefix keeps names unique)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "arm"


def _tile_label(arm: CheckedArm, i: int) -> str:
    label = arm.sample_ids[i] if arm.sample_ids else f"#{i}"
    return f"{label} “{arm.prompts[i]}”" if arm.prompts is not None else label
