"""What a report is made of: the arms callers pass in, the arms after validation, the built report,
and the metric names and file layout every other module of the package shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("avgknn", "lof", "rarity")
METRIC_LABELS = {"avgknn": "AvgkNN", "lof": "LOF", "rarity": "Rarity"}
DEFAULT_DESCRIPTIONS = {
    "avgknn": "mean distance to the k nearest reference features; higher = rarer",
    "lof": "local outlier factor against the reference set; about 1 = inlier, higher = more outlying",
    "rarity": "radius of the smallest reference k-NN ball containing the sample; higher = rarer; "
    "undefined for samples in no ball (out of support)",
}
REPORT_DIR = "report"
INDEX_NAME = "index.html"


@dataclass
class ArmResult:
    """One sampling arm: per-sample scores (aligned arrays), summary numbers, optional images.

    `images` is either one image per score row or, with `image_rows`, only the images of those
    rows (`images[j]` is row `image_rows[j]`): a large run brings just the tiles its grids show
    (`grids.shown_rows`), never every image. `config` is the run's config as its manifest records
    it (`Manifest.config`: model, sampler and guidance settings, seed); the page lists its settings.
    `labels` (one per score row: class labels or a classifier's predictions) go under the tiles."""

    name: str
    scores: dict[str, np.ndarray]
    summary: dict[str, float | None]
    images: np.ndarray | None = None
    sample_ids: list[str] | None = None
    prompts: list[str] | None = None  # text-to-image runs: each sample's prompt (a per-prompt table follows)
    image_rows: list[int] | None = None
    config: dict[str, Any] | None = None
    labels: Any = None  # a sequence or 1-D array, one label per score row


@dataclass
class Report:
    """A built report: the page, its plots, and the table/markdown for Prefect artifacts.

    `by_prompt` maps an arm with prompts to its per-prompt rows (see `rows.prompt_rows`);
    `warnings` are the degenerate-run warnings the page leads with (see `degenerate.arm_warnings`)."""

    html: str
    pngs: dict[str, bytes]
    table: list[dict]
    markdown: str
    by_prompt: dict[str, list[dict]]
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckedArm:
    """An arm after validation: float score arrays, the in-support mask, NHWC/NHW uint8 images."""

    name: str
    n: int | None
    scores: dict[str, np.ndarray]
    summary: dict[str, Any]
    supported: np.ndarray | None  # True where Rarity is defined; None when neither rarity nor in_support given
    images: np.ndarray | None
    sample_ids: list[str] | None
    prompts: list[str] | None = None
    image_rows: list[int] | None = None  # the score row of each image; None: one image per row
    config: dict[str, Any] | None = None
    labels: np.ndarray | None = None  # one per score row (printable values)


def in_support_rarity(arm: CheckedArm) -> np.ndarray | None:
    """Rarity of in-support samples only: out-of-support rows are reported, never averaged."""
    rarity = arm.scores.get("rarity")
    if rarity is None:
        return None
    return rarity[arm.supported] if arm.supported is not None else rarity
