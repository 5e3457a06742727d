"""All input checks of `build_report`, up front, so a bad call fails with one line before any plotting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minority_core.errors import InputError
from minority_core.report.grids import shown_rows
from minority_core.report.model import ArmResult, CheckedArm


def validate(arms: Any, title: Any, notes: Any, descriptions: Any, knn_accuracy: Any = None) -> list[CheckedArm]:
    """The arms checked and normalised; an InputError naming what is wrong otherwise."""
    if not isinstance(arms, Sequence) or isinstance(arms, str) or len(arms) == 0:
        raise InputError("build_report needs a non-empty list of ArmResult")
    checked = [_validate_arm(arm) for arm in arms]
    names = [arm.name for arm in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"arm names must be unique; repeated: {', '.join(map(repr, duplicates))}")
    if not isinstance(title, str):
        raise InputError(f"title must be a string, got {type(title).__name__}")
    if notes is not None and (isinstance(notes, str) or not all(isinstance(x, str) for x in notes)):
        raise InputError("notes must be a list of strings")
    if descriptions is not None and not isinstance(descriptions, dict):
        raise InputError("metric_descriptions must be a dict of metric name to text")
    if knn_accuracy is not None and not isinstance(knn_accuracy, dict):
        raise InputError("knn_accuracy must be the reference set's accuracy dict (ReferenceSet.accuracy) or None")
    return checked


def _validate_arm(arm: Any) -> CheckedArm:
    """One arm's checks; every message is one line naming the arm."""
    if not isinstance(arm, ArmResult):
        raise InputError(f"arms must be ArmResult instances, got {type(arm).__name__}")
    if not isinstance(arm.name, str) or not arm.name.strip():
        raise InputError(f"arm names must be non-empty strings, got {arm.name!r}")
    scores, n = _check_scores(arm.name, arm.scores)
    if arm.summary is not None and not isinstance(arm.summary, dict):
        raise InputError(f"arm {arm.name!r}: summary must be a dict, got {type(arm.summary).__name__}")
    image_rows = _check_image_rows(arm.name, arm.image_rows, n)
    images = _check_images(arm.name, arm.images, n if image_rows is None else len(image_rows), image_rows is not None)
    ids = None if arm.sample_ids is None else [str(s) for s in arm.sample_ids]
    if ids is not None and n is not None and len(ids) != n:
        raise InputError(f"arm {arm.name!r}: {len(ids)} sample_ids but {n} score rows")
    prompts = None
    if arm.prompts is not None:
        if isinstance(arm.prompts, str) or not all(isinstance(p, str) for p in arm.prompts):
            raise InputError(f"arm {arm.name!r}: prompts must be a list of strings, one per sample")
        prompts = list(arm.prompts)
        if n is not None and len(prompts) != n:
            raise InputError(f"arm {arm.name!r}: {len(prompts)} prompts but {n} score rows")
    if images is not None and image_rows is not None and "avgknn" in scores:
        missing = sorted(set(shown_rows(scores["avgknn"])) - set(image_rows))
        if missing:
            raise InputError(f"arm {arm.name!r}: no image for score rows {missing[:8]} that the grids show (give grids.shown_rows)")
    if arm.config is not None and not isinstance(arm.config, dict):
        raise InputError(f"arm {arm.name!r}: config must be the run's config dict (Manifest.config), got {type(arm.config).__name__}")
    labels = _check_labels(arm.name, arm.labels, n)
    return CheckedArm(arm.name, n, scores, dict(arm.summary or {}), _supported_mask(scores), images, ids, prompts, image_rows,
                      arm.config, labels)


def _check_scores(name: str, scores: Any) -> tuple[dict[str, np.ndarray], int | None]:
    """1-D arrays of one common length; the length (None if no scores)."""
    if not isinstance(scores, dict):
        raise InputError(f"arm {name!r}: scores must be a dict of arrays, got {type(scores).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, values in scores.items():
        array = np.asarray(values)
        if array.ndim != 1:
            raise InputError(f"arm {name!r}: score {key!r} must be 1-D, got shape {array.shape}")
        if key != "in_support" and not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise InputError(f"arm {name!r}: score {key!r} must be numeric, got {array.dtype}")
        arrays[str(key)] = array
    lengths = {key: len(a) for key, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"arm {name!r}: score arrays differ in length: {lengths}")
    n = next(iter(lengths.values())) if lengths else None
    return {k: (a.astype(bool) if k == "in_support" else a.astype(np.float64)) for k, a in arrays.items()}, n


def _check_labels(name: str, labels: Any, n: int | None) -> np.ndarray | None:
    """One label per score row (any printable values), as a 1-D array (ints stay ints: no per-sample objects)."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes, dict)):
        raise InputError(f"arm {name!r}: labels must be a list or 1-D array, one label per sample")
    array = np.asarray(labels)
    if array.ndim != 1 or (n is not None and len(array) != n):
        raise InputError(f"arm {name!r}: {array.shape} labels but {n} score rows; give one label per sample")
    return array


def _check_image_rows(name: str, rows: Any, n: int | None) -> list[int] | None:
    """Distinct score rows, one per given image (None: the images are one per score row)."""
    if rows is None:
        return None
    if isinstance(rows, str) or not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in rows):
        raise InputError(f"arm {name!r}: image_rows must be a list of score row numbers")
    checked = [int(r) for r in rows]
    if len(set(checked)) != len(checked) or any(r < 0 or (n is not None and r >= n) for r in checked):
        raise InputError(f"arm {name!r}: image_rows must be distinct rows in [0, {n}), got {checked[:8]}")
    return checked


def _check_images(name: str, images: Any, n: int | None, subset: bool = False) -> np.ndarray | None:
    """uint8 NHW / NHWC with 1, 3 or 4 channels, one image per score row (per `image_rows` row
    when `subset`)."""
    if images is None:
        return None
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise InputError(f"arm {name!r}: images must be uint8, got {array.dtype}")
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    elif array.ndim != 3:
        raise InputError(f"arm {name!r}: images must be NHW or NHWC with 1, 3 or 4 channels, got shape {array.shape}")
    if subset and len(array) != n:
        raise InputError(f"arm {name!r}: {len(array)} images but {n} image_rows; give one image per row")
    if not subset and n is not None and len(array) != n:
        raise InputError(f"arm {name!r}: {len(array)} images but {n} score rows; images must be aligned with scores")
    return array


def _supported_mask(scores: dict[str, np.ndarray]) -> np.ndarray | None:
    """In support = flagged in_support (if given) and a finite Rarity (if given)."""
    mask = scores.get("in_support")
    if "rarity" in scores:
        finite = np.isfinite(scores["rarity"])
        mask = finite if mask is None else (mask & finite)
    return mask
