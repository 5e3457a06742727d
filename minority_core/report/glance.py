"""The "at a glance" lines: each arm against the first (the baseline), in words a reader takes in at once."""

from __future__ import annotations

from typing import Any

from minority_core.report.format import finite_or_none, format_change, format_number, format_share, format_short_share


def glance_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per arm after the first, each against the first arm (the baseline)."""
    if len(rows) == 1:
        row = rows[0]
        return [f"{row['name']} only: AvgkNN mean {format_number(row.get('avgknn_mean'))}, "
                f"out of support {format_share(row.get('out_of_support_share'))} (no baseline arm: AvgkNN's scale "
                "depends on the extractor and data, so compare with a standard run of the same model)"]
    return [_glance_line(row, rows[0]) for row in rows[1:]]


def _glance_line(row: dict[str, Any], base: dict[str, Any]) -> str:
    """'guided vs standard: AvgkNN +28 % (rarer), LOF +12 %, rare-class share 7 % → 18 %'."""
    parts: list[str] = []
    change = format_change(row.get("avgknn_mean"), base.get("avgknn_mean"))
    if change is not None:
        direction = "rarer" if row["avgknn_mean"] > base["avgknn_mean"] else "less rare"
        parts.append(f"AvgkNN {change} ({direction})")
    change = format_change(row.get("lof_mean"), base.get("lof_mean"))
    if change is not None:
        parts.append(f"LOF {change}")
    for key, label in (("rare_share", "rare-class share"), ("out_of_support_share", "out of support")):
        a, b = finite_or_none(base.get(key)), finite_or_none(row.get(key))
        if a is not None and b is not None and (key == "rare_share" or a > 0 or b > 0):
            parts.append(f"{label} {format_short_share(a)} → {format_short_share(b)}")
    a, b = finite_or_none(base.get("seconds_per_sample")), finite_or_none(row.get("seconds_per_sample"))
    if a and b is not None:
        parts.append(f"cost per sample {b / a:.2g}×")
    body = ", ".join(parts) if parts else "no comparable numbers"
    return f"{row['name']} vs {base['name']}: {body}"
