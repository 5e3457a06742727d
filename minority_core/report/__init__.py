"""A self-contained HTML report comparing sampling arms (docs/DESIGN.md §4: ``OUT/report/``).

Each arm (e.g. ``standard`` vs ``guided``) brings per-sample kNN scores (AvgkNN, LOF, Rarity,
in-support flag), a few summary numbers and optionally its images. The page leads with one
computed "at a glance" line per arm against the first arm, then a headline table, overlaid
histograms (same bins for every arm) and, per arm, the 16 rarest and 16 least rare images. An
arm of a large run brings only those images (`shown_rows` says which; `ArmResult.image_rows`).

The data path, one module per step: `validate` (input checks) → `rows` (numbers per arm and
prompt) → `columns` / `glance` → `plots` (histograms) and `grids` (image grids) → `html` (the
page) and `markdown` (the Prefect artifact), assembled by `build`; `write` stores the result.
`format` holds how numbers print, `model` the data classes. Nothing here imports prefect or ray.
"""

from minority_core.report.build import build_report
from minority_core.report.format import format_change, format_number, format_seconds, format_share
from minority_core.report.grids import shown_rows
from minority_core.report.model import ArmResult, Report
from minority_core.report.write import write_report

__all__ = [
    "ArmResult",
    "Report",
    "build_report",
    "write_report",
    "shown_rows",
    "format_number",
    "format_share",
    "format_seconds",
    "format_change",
]
