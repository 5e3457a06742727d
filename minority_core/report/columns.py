"""Which headline-table columns a report shows, and each column's header and number style.

The HTML table and the markdown table both render these, so the two never disagree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minority_core.report.format import format_count, format_number, format_seconds, format_share, format_value
from minority_core.report.model import CheckedArm


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str]
    metric: str | None = None  # shown whenever this score is present, even if every value is missing


KNOWN_COLUMNS = (
    Column("samples", "Samples", format_count),
    Column("rare_share", "Rare-class share", format_share),
    Column("confident_share", "Confident share", format_share),
    Column("avgknn_mean", "AvgkNN mean", format_number, "avgknn"),
    Column("avgknn_median", "AvgkNN median", format_number, "avgknn"),
    Column("lof_mean", "LOF mean", format_number, "lof"),
    Column("lof_median", "LOF median", format_number, "lof"),
    Column("rarity_mean_in_support", "Rarity mean (in support)", format_number, "rarity"),
    Column("out_of_support_share", "Out of support", format_share, "rarity"),
    Column("precision", "Precision", format_number),
    Column("recall", "Recall", format_number),
    Column("density", "Density", format_number),
    Column("coverage", "Coverage", format_number),
    Column("fid", "FID", format_number),
    Column("sfid", "sFID", format_number),
    Column("seconds_per_sample", "Cost / sample", format_seconds),
)


def table_columns(rows: list[dict[str, Any]], arms: list[CheckedArm]) -> list[Column]:
    """Known columns that have data (or whose score exists), then any extra summary keys as given."""
    present = {key for arm in arms for key in arm.scores}
    if "in_support" in present:
        present.add("rarity")
    has_value = {key for row in rows for key, value in row.items() if value is not None}
    columns = [c for c in KNOWN_COLUMNS if c.key == "samples" or c.key in has_value or c.metric in present]
    known = {c.key for c in KNOWN_COLUMNS} | {"name"}
    extras = [key for row in rows for key in row if key not in known]
    for key in dict.fromkeys(extras):
        if key in has_value:
            columns.append(Column(key, key, format_number))
    return columns


def cells(row: dict[str, Any], columns: list[Column]) -> list[str]:
    """A row's formatted (unescaped) cell texts, '—' for missing."""
    return [format_value(row.get(c.key), c.fmt) for c in columns]
