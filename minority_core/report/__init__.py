"""A self-contained HTML report comparing sampling arms (docs/DESIGN.md §4: ``OUT/report/``).

Each arm (e.g. ``standard`` vs ``guided``) brings per-sample kNN scores (AvgkNN, LOF, Rarity,
in-support flag), a few summary numbers, optionally its images, labels and the run's config (as
its manifest records it). The page leads with warnings for degenerate runs (none in support, all
samples alike, ...), then one computed "at a glance" line per arm against the first arm, a
headline table (scrolling sideways when wide), the arms' settings side by side, overlaid
histograms (same bins for every arm) and, per arm, the 16 rarest and 16 least rare images as
tiles with their AvgkNN and label under each. An arm of a large run brings only those images
(`shown_rows` says which; `ArmResult.image_rows`).

The data path, one module per step: `validate` (input checks) → `rows` (numbers per arm and
prompt) → `columns` / `glance` / `degenerate` (warnings) / `settings` → `plots` (histograms) and
`grids` (tiles and grid PNGs) → `html` (the page) and `markdown` (the Prefect artifact),
assembled by `build`; `write` stores the result. `format` holds how numbers print, `model` the
data classes. Nothing here imports prefect or ray.
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
