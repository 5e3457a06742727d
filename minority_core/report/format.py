"""Numbers as the report prints them: one notion of "missing" (``MISSING``, '—') and one style per kind."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MISSING = "—"


def finite_or_none(x: Any) -> float | None:
    """A plain float, or None for missing/NaN/inf/non-numbers: one notion of 'missing' everywhere."""
    if x is None or isinstance(x, (str, bytes)):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def format_number(x: Any) -> str:
    """Three decimals for everyday magnitudes, thousands separators for big ones, '—' if missing."""
    value = finite_or_none(x)
    if value is None:
        return MISSING
    size = abs(value)
    if size >= 1e6 or (0 < size < 1e-3):
        return f"{value:.3g}"
    if size >= 100:
        return f"{value:,.1f}"
    return f"{value:.3f}"


def format_share(x: Any, decimals: int = 1) -> str:
    """A fraction in [0, 1] as a percentage ('7.0 %'); '—' if missing."""
    value = finite_or_none(x)
    return MISSING if value is None else f"{100 * value:.{decimals}f} %"


def format_short_share(x: Any) -> str:
    """Whole percent for the glance line, one decimal when below 1 % so it does not read as 0."""
    value = finite_or_none(x)
    if value is None:
        return MISSING
    return format_share(value, 1 if 0 < 100 * abs(value) < 1 else 0)


def format_seconds(x: Any) -> str:
    """Cost per sample in ms below one second, in s above: readable across CPU and GPU runs."""
    value = finite_or_none(x)
    if value is None:
        return MISSING
    return f"{1000 * value:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"


def format_count(x: Any) -> str:
    """An integer count with thousands separators."""
    value = finite_or_none(x)
    return MISSING if value is None else f"{int(round(value)):,}"


def format_change(new: Any, base: Any) -> str | None:
    """Relative change of `new` over `base` ('+28 %'); None when undefined (missing or zero base)."""
    a, b = finite_or_none(new), finite_or_none(base)
    if a is None or b is None or b == 0:
        return None
    pct = 100 * (a - b) / abs(b)
    return f"{pct:+.0f} %" if abs(pct) >= 10 else f"{pct:+.1f} %"


def format_value(value: Any, formatter: Callable[[Any], str]) -> str:
    """Strings from data pass through (escaped later); numbers go through the column's formatter."""
    return value if isinstance(value, str) else formatter(value)


def knn_accuracy_line(accuracy: dict[str, Any] | None) -> str | None:
    """The reference index's checked accuracy (`ReferenceSet.accuracy`, kept in its meta.json) in
    one sentence, so a reader knows the scores are exact or how far from brute force; None if absent."""
    if not isinstance(accuracy, dict) or not accuracy.get("method"):
        return None
    if accuracy["method"] == "exact":
        return "kNN accuracy: exact search (brute force), no approximation in the scores."
    errors = accuracy.get("max_rel_error") or {}
    worst = ", ".join(f"{name} {finite_or_none(errors[key]):.2g}" for key, name in (("avgknn", "AvgkNN"), ("lof", "LOF"), ("rarity", "Rarity"))
                      if finite_or_none(errors.get(key)) is not None)
    parts = [f"max relative error {worst}" if worst else None,
             f"{format_share(accuracy.get('share_within_1pct'))} of samples within 1 %" if finite_or_none(accuracy.get("share_within_1pct")) is not None else None,
             f"in-support flag agrees on {format_share(accuracy.get('in_support_agreement'))}"
             if finite_or_none(accuracy.get("in_support_agreement")) is not None else None]
    checked = format_count(accuracy.get("checked_samples"))
    found = "; ".join(part for part in parts if part) or "no figures recorded"
    return f"kNN accuracy ({accuracy['method']}; checked against brute force on {checked} samples): {found}."
