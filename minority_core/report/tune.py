"""The tuning report: rarity against quality per arm of a pilot sweep (one panel per quality
bound), the arm table with each verdict, and the chosen setting; as a page, PNGs and markdown.

Nothing is written here (the flow writes through `io.write_atomic`). The plots use
`matplotlib.figure.Figure` without pyplot (thread-safe) and carry no timestamp."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from minority_core.report.format import format_number
from minority_core.report.html import CSS, esc
from minority_core.report.plots import _figure_png

LABELS = {
    "avgknn_mean": "AvgkNN (mean)",
    "lof_mean": "LOF (mean)",
    "rarity_mean_in_support": "Rarity (mean, in support)",
    "rare_share": "rare-class share",
    "precision": "precision",
    "recall": "recall",
    "confident_share": "confident share",
    "out_of_support_share": "out of support",
}
COLUMNS = (
    "name",
    "scale",
    "perturb_ratio",
    "every",
    "stop_ratio",
    "avgknn_mean",
    "lof_mean",
    "rarity_mean_in_support",
    "rare_share",
    "out_of_support_share",
    "precision",
    "recall",
    "confident_share",
    "gain",
    "meets",
    "eligible",
)


def tradeoff_png(assessed: Sequence[Mapping[str, Any]], rarity: str, bounds: Mapping[str, float], chosen: str | None) -> bytes:
    """Rarity (y) against each bounded quality measure (x), one point per arm: standard sampling in
    grey, the chosen arm as a star, the bound as a dashed line (arms left of it lose too much)."""
    metrics = list(bounds)
    fig = Figure(figsize=(5.5 * len(metrics), 4.2), dpi=100, layout="constrained")
    base = next(r for r in assessed if not r.get("scale"))
    guided = [r for r in assessed if r.get("scale")]
    only_w = len({(r.get("perturb_ratio"), r.get("every"), r.get("stop_ratio")) for r in guided}) <= 1  # else label by arm name
    for position, metric in enumerate(metrics, start=1):
        ax = fig.add_subplot(1, len(metrics), position)
        for row in assessed:
            x, y = row.get(metric), row.get(rarity)
            if x is None or y is None:
                continue
            is_base, is_chosen = not row.get("scale"), row["name"] == chosen
            color = "#7f7f7f" if is_base else "#2ca02c" if row["meets"] else "#d62728"
            ax.scatter([x], [y], s=180 if is_chosen else 40, marker="*" if is_chosen else "o", color=color, zorder=3)
            label = "standard" if is_base else f"w={row['scale']:g}" if only_w else row["name"]
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if base.get(metric) is not None:
            ax.axvline(float(base[metric]) - bounds[metric], color="#333333", linestyle="--", linewidth=1, label=f"bound: standard − {bounds[metric]:g}")
            ax.legend(loc="best", fontsize=8, frameon=False)
        ax.set_xlabel(f"{LABELS.get(metric, metric)} (quality: right is better)")
        ax.set_ylabel(f"{LABELS.get(rarity, rarity)} (rarity: up is rarer)")
        ax.grid(alpha=0.3)
    fig.suptitle("Pilot sweep: rarity against quality\n(green: within the bounds, red: not; star: chosen)", fontsize=10)
    return _figure_png(fig)


def tune_page(
    title: str, assessed: Sequence[Mapping[str, Any]], rarity: str, bounds: Mapping[str, float], verdict: str, png_name: str, notes: Sequence[str] = ()
) -> str:
    """The page: the verdict, the trade-off plot, the arm table, notes (all text escaped here)."""
    head = "".join(f"<th>{esc(LABELS.get(c, c))}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(_cell(row.get(c)))}</td>' for c in COLUMNS) + "</tr>" for row in assessed)
    bound_text = "; ".join(f"{LABELS.get(m, m)} may drop by at most {d:g} from standard sampling's" for m, d in bounds.items())
    notes_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f'<section class="glance"><strong>{esc(verdict)}</strong><ul><li>{esc(f"Rarity measure: {LABELS.get(rarity, rarity)}; {bound_text}.")}</li>'
        f"{notes_html}</ul></section>"
        f'<img src="{esc(png_name)}" alt="rarity against quality per arm">'
        f'<h2>Arms</h2><table class="wide"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        "<p class=\"notes\">gain: the arm's rarity minus standard sampling's; meets: every quality bound holds; "
        "eligible: meets the bounds with a positive gain. The chosen arm is the eligible one with the largest gain. "
        'Score histograms and sample grids of every arm: <a href="index.html">index.html</a>.</p>'
        "</body></html>\n"
    )


def tune_markdown(title: str, assessed: Sequence[Mapping[str, Any]], verdict: str) -> str:
    """The verdict and the arm table as markdown (the Prefect artifact; the flow inlines the plot)."""
    lines = [f"# {title}", "", f"**{verdict}**", "", "| " + " | ".join(LABELS.get(c, c) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in assessed]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return format_number(value)
