"""Matplotlib figures → PNG bytes: one overlaid histogram per metric, the same bins for every arm.

Plots use ``matplotlib.figure.Figure`` directly (no pyplot, so no global backend state and safe
in threads), and PNGs carry no timestamp, so reruns give identical bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from minority_core.report.format import format_number
from minority_core.report.model import METRIC_LABELS, CheckedArm, in_support_rarity

# Baseline arm in grey, the others in matplotlib's tab10 order: the same colour in every plot and the table.
ARM_COLORS = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def arm_colors(count: int) -> list[str]:
    """One colour per arm, in arm order (cycling after ten)."""
    return [ARM_COLORS[i % len(ARM_COLORS)] for i in range(count)]


def histogram_png(metric: str, arms: list[CheckedArm], colors: list[str], description: str) -> tuple[bytes, str | None]:
    """Overlaid density histograms (same bins) with each arm's mean as a dashed line; the PNG and
    what the plot leaves out or folds (None when nothing)."""
    label = METRIC_LABELS[metric]
    values = [_metric_values(arm, metric) for arm in arms]
    pooled = np.concatenate([v for v in values if v is not None and v.size] or [np.empty(0)])
    fig = Figure(figsize=(7.5, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    notes = [_rarity_note(arms)] if metric == "rarity" else []
    if pooled.size == 0:
        ax.text(0.5, 0.5, "no finite values in any arm", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        edges, clip = _bin_edges(pooled)
        if clip is not None:
            beyond = int((pooled > clip).sum())
            notes.append(f"{beyond} value{'s' if beyond != 1 else ''} above {format_number(clip)} drawn in the last bin")
        for arm, vals, color in zip(arms, values, colors):
            if vals is None or vals.size == 0:
                continue
            shown = np.clip(vals, edges[0], edges[-1])
            ax.hist(shown, bins=edges, density=True, histtype="stepfilled", alpha=0.25, color=color)
            ax.hist(shown, bins=edges, density=True, histtype="step", linewidth=1.6, color=color,
                    label=f"{arm.name} (n={vals.size:,}, mean {format_number(vals.mean())})")
            ax.axvline(float(vals.mean()), color=color, linestyle="--", linewidth=1.2)
        ax.legend(loc="best", fontsize=9, frameon=False)
        ax.set_ylabel("density (area = 1 per arm)")
    ax.set_xlabel(f"{label}: {description}", wrap=True)
    title = f"{label} by arm" + (f"\n{'; '.join(n for n in notes if n)}" if any(notes) else "")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    caption = "; ".join(n for n in notes if n) or None
    return _figure_png(fig), caption


def _figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure, without a timestamp so reruns give identical bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _bin_edges(pooled: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Shared bins for all arms; a far tail is folded into the last bin so the bulk stays readable.

    Returns the edges and the clip value (None when nothing was clipped).
    """
    lo, hi = float(pooled.min()), float(pooled.max())
    q25, q75, q995 = np.percentile(pooled, [25, 75, 99.5])
    clip = None
    if hi > q75 + 5 * max(q75 - q25, 1e-12) and q995 > lo:
        clip, hi = float(q995), float(q995)
    edges = np.histogram_bin_edges(pooled, bins="auto", range=(lo, hi) if hi > lo else None)
    if not 10 <= len(edges) - 1 <= 60:
        count = min(max(len(edges) - 1, 10), 60)
        edges = np.linspace(lo, hi, count + 1) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, count + 1)
    return edges, clip


def _metric_values(arm: CheckedArm, metric: str) -> np.ndarray | None:
    """Finite values to plot; Rarity keeps in-support samples only."""
    values = in_support_rarity(arm) if metric == "rarity" else arm.scores.get(metric)
    return None if values is None else values[np.isfinite(values)]


def _rarity_note(arms: list[CheckedArm]) -> str | None:
    """How many samples the Rarity histogram leaves out, in total and per arm."""
    counts = [(arm.name, arm.n or 0, int((~arm.supported).sum())) for arm in arms if arm.supported is not None]
    total = sum(c for _, _, c in counts)
    if not counts:
        return None
    per_arm = ", ".join(f"{name}: {c} of {n}" for name, n, c in counts)
    return f"excludes {total} out-of-support sample{'s' if total != 1 else ''} ({per_arm})"
