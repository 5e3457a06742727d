"""`build_report`: validate the arms, compute their numbers, draw the plots and grids, assemble the
page, the table rows and the markdown. Nothing is written here (see `write.write_report`)."""

from __future__ import annotations

from minority_core.report.columns import table_columns
from minority_core.report.degenerate import report_warnings
from minority_core.report.format import knn_accuracy_line
from minority_core.report.glance import glance_lines
from minority_core.report.grids import arm_grids
from minority_core.report.html import html_grids, html_histogram, html_page, html_prompt_table, html_settings, html_table
from minority_core.report.markdown import markdown
from minority_core.report.model import DEFAULT_DESCRIPTIONS, METRIC_LABELS, METRICS, ArmResult, Report
from minority_core.report.plots import arm_colors, histogram_png
from minority_core.report.rows import arm_row, prompt_rows
from minority_core.report.settings import settings_line, settings_table
from minority_core.report.validate import validate


def build_report(
    arms: list[ArmResult],
    title: str,
    notes: list[str] | None = None,
    metric_descriptions: dict[str, str] | None = None,
    knn_accuracy: dict | None = None,
) -> Report:
    """Build the page, its PNGs, the table rows and the markdown for a list of arms.

    The first arm is the baseline every other arm is compared to in the "at a glance" lines.
    `knn_accuracy` is the reference set's checked index accuracy (`ReferenceSet.accuracy`, from
    its meta.json): shown as one note when given. Raises a one-line InputError (a ValueError) on
    bad input before any plotting.
    """
    checked = validate(arms, title, notes, metric_descriptions, knn_accuracy)
    accuracy = knn_accuracy_line(knn_accuracy)
    notes = [*(notes or []), *([accuracy] if accuracy else [])]
    descriptions = {**DEFAULT_DESCRIPTIONS, **(metric_descriptions or {})}
    colors = arm_colors(len(checked))
    rows = [arm_row(arm) for arm in checked]
    columns = table_columns(rows, checked)
    glance = glance_lines(rows)
    warnings = report_warnings(checked)
    settings = html_settings([arm.name for arm in checked], settings_table([arm.config for arm in checked]), colors)
    pngs: dict[str, bytes] = {}
    plots = []
    for metric in METRICS:
        if not any(metric in arm.scores for arm in checked):
            continue
        png, caption = histogram_png(metric, checked, colors, descriptions[metric])
        name = f"hist-{metric}.png"
        pngs[name] = png
        text = f"{METRIC_LABELS[metric]}: {descriptions[metric]}" + (f". Histogram {caption}." if caption else ".")
        plots.append(html_histogram(name, png, METRIC_LABELS[metric], text))
    grid_html = []
    for index, arm in enumerate(checked):
        grids, why_none = arm_grids(arm, index)
        pngs.update({grid.file: grid.png for grid in grids})
        if grids or why_none:
            grid_html.append(html_grids(arm, grids, why_none))
    by_prompt = {arm.name: prompt_rows(arm) for arm in checked if arm.prompts is not None}
    prompt_tables = [html_prompt_table(arm, by_prompt[arm.name]) for arm in checked if by_prompt.get(arm.name)]
    page = html_page(title, glance, warnings, notes, html_table(rows, columns, colors), settings, plots, grid_html, prompt_tables)
    settings_lines = {arm.name: settings_line(arm.config) for arm in checked if arm.config}
    text = markdown(title, glance, warnings, settings_lines, rows, columns)
    return Report(html=page, pngs=pngs, table=rows, markdown=text, by_prompt=by_prompt, warnings=warnings)
