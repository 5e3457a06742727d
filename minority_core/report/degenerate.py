"""Warnings for degenerate runs, computed from the scores alone (no image is decoded for them).

A run can finish without error and still be useless: every sample off the reference support
(noise, a wrong model or extractor), all samples the same (collapse, a reused seed), no finite
score. Its numbers then read like any other arm's, so the page says so first, in words."""

from __future__ import annotations

import numpy as np

from minority_core.report.format import format_share
from minority_core.report.model import CheckedArm

MOSTLY_OUT = 0.5  # warn when at least this share of an arm is out of the reference support
REPEATED = 0.1  # warn when at least this share of an arm repeats another sample's AvgkNN
SAME_SCORE_RTOL = 1e-9  # AvgkNN values this close (relative) are the same sample's


def arm_warnings(arm: CheckedArm) -> list[str]:
    """Every warning of one arm, each a sentence naming the arm, what is wrong and what to check."""
    if not arm.n:
        return [f"{arm.name}: no samples were scored; score the run (minority-synth score) before reporting it."]
    return [w for w in (_support_warning(arm), _non_finite_warning(arm), _repeat_warning(arm)) if w]


def report_warnings(arms: list[CheckedArm]) -> list[str]:
    """The warnings of every arm, in arm order."""
    return [w for arm in arms for w in arm_warnings(arm)]


def _support_warning(arm: CheckedArm) -> str | None:
    """No sample, or most samples, inside the reference support."""
    if arm.supported is None or not arm.supported.size:
        return None
    inside = int(arm.supported.sum())
    if inside == 0:
        return (f"{arm.name}: all {arm.n:,} samples are out of the reference support (none in support), so Rarity is "
                "undefined and AvgkNN/LOF only say how far off the data they are; check the model, its settings and "
                "the extractor against the reference set.")
    share = 1 - inside / arm.supported.size
    if share >= MOSTLY_OUT:
        return (f"{arm.name}: {format_share(share)} of samples are out of the reference support (only {inside:,} in "
                "support); its rarest samples are mostly off the data, not rare data.")
    return None


def _non_finite_warning(arm: CheckedArm) -> str | None:
    """Samples without a finite AvgkNN (non-finite features): they are left out of every number."""
    avgknn = arm.scores.get("avgknn")
    if avgknn is None:
        return None
    missing = int((~np.isfinite(avgknn)).sum())
    if missing == 0:
        return None
    what = "no sample has" if missing == len(avgknn) else f"{missing:,} of {len(avgknn):,} samples have no"
    return f"{arm.name}: {what} finite AvgkNN; those samples are left out of the means, histograms and grids."


def _repeat_warning(arm: CheckedArm) -> str | None:
    """All samples, or many, with the same AvgkNN: identical samples (mode collapse or a reused seed)."""
    avgknn = arm.scores.get("avgknn")
    if avgknn is None:
        return None
    values = np.sort(avgknn[np.isfinite(avgknn)])
    if values.size < 2:
        return None
    same = np.diff(values) <= SAME_SCORE_RTOL * np.maximum(np.abs(values[1:]), 1.0)
    distinct = values.size - int(same.sum())
    if distinct == 1:
        return (f"{arm.name}: all {values.size:,} samples have the same AvgkNN: they are very likely identical "
                "(a collapsed sampler, or one seed for every sample).")
    repeats = values.size - distinct
    if repeats >= REPEATED * values.size:
        return (f"{arm.name}: {repeats:,} of {values.size:,} samples repeat another sample's AvgkNN exactly "
                f"({distinct:,} distinct values): likely duplicate samples.")
    return None
