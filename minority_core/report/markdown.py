"""The headline table and glance lines as GitHub markdown, for the Prefect artifact; its last line
says where the full report lives, and `with_location` fills in the written path."""

from __future__ import annotations

from typing import Any

from minority_core.report.columns import Column, cells
from minority_core.report.html import esc
from minority_core.report.model import INDEX_NAME, REPORT_DIR

LOCATION_PREFIX = "Full report: "


def markdown(title: str, glance: list[str], warnings: list[str], settings: dict[str, str], rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """The warnings first, the glance lines, the headline table as GitHub markdown, each arm's
    settings on one line, and where the full report lives."""
    header = "| Arm | " + " | ".join(_md_cell(c.header) for c in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 1)
    lines = [f"## {_md_cell(title)}", ""] + [f"- **Warning:** {_md_cell(w)}" for w in warnings]
    lines += [f"- {_md_cell(line)}" for line in glance] + ["", header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(x) for x in [row["name"], *cells(row, columns)]) + " |")
    if settings:
        lines += ["", *(f"- {_md_cell(name)} settings: {_md_cell(line)}" for name, line in settings.items())]
    lines += ["", f"{LOCATION_PREFIX}`{REPORT_DIR}/{INDEX_NAME}` under the run's output root (self-contained HTML)."]
    return "\n".join(lines)


def with_location(text: str, url: str) -> str:
    """`text` with its last line naming `url` as the report's location (unchanged if it has no such line)."""
    lines = text.split("\n")
    if lines and lines[-1].startswith(LOCATION_PREFIX):
        lines[-1] = f"{LOCATION_PREFIX}`{url}`"
    return "\n".join(lines)


def _md_cell(text: Any) -> str:
    """Markdown table cell: escaped like HTML (renderers accept entities), pipes and newlines neutralised."""
    return esc(text).replace("|", "\\|").replace("\n", " ")
