"""A self-contained HTML report comparing sampling arms (DESIGN.md §4: ``OUT/report/``).

Each arm (e.g. ``standard`` vs ``guided``) brings per-sample kNN scores (AvgkNN, LOF, Rarity,
in-support flag), a few summary numbers and optionally its images. The page leads with one
computed "at a glance" line per arm against the first arm, then a headline table, overlaid
histograms (same bins for every arm) and, per arm, the 16 rarest and 16 least rare images.

Everything a reader needs is inside ``index.html`` (PNGs as base64 data URIs, inline CSS, no
scripts, nothing fetched), so the file can be mailed around or opened offline. The same PNGs
are also written beside it, and ``Report.table`` / ``Report.markdown`` feed Prefect artifacts.

Plots use ``matplotlib.figure.Figure`` directly (no pyplot, so no global backend state and safe
in threads). This module never imports prefect or ray.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from minority_core.errors import InputError

__all__ = [
    "ArmResult",
    "Report",
    "build_report",
    "write_report",
    "format_number",
    "format_share",
    "format_seconds",
    "format_change",
]

MISSING = "—"
SCORE_KEYS = ("avgknn", "lof", "rarity", "in_support")
METRICS = ("avgknn", "lof", "rarity")
METRIC_LABELS = {"avgknn": "AvgkNN", "lof": "LOF", "rarity": "Rarity"}
DEFAULT_DESCRIPTIONS = {
    "avgknn": "mean distance to the k nearest reference features; higher = rarer",
    "lof": "local outlier factor against the reference set; about 1 = inlier, higher = more outlying",
    "rarity": "radius of the smallest reference k-NN ball containing the sample; higher = rarer; "
    "undefined for samples in no ball (out of support)",
}
GRID_COUNT = 16  # images per grid: 4 × 4
GRID_COLS = 4
MIN_TILE_PX = 64  # tiles are upscaled (nearest) to at least this size so 8×8 digits are visible
REPORT_DIR = "report"
INDEX_NAME = "index.html"
LOCATION_PREFIX = "Full report: "
# Baseline arm in grey, the others in matplotlib's tab10 order: the same colour in every plot and the table.
ARM_COLORS = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


# --------------------------------------------------------------------------- public types


@dataclass
class ArmResult:
    """One sampling arm: per-sample scores (aligned arrays), summary numbers, optional images."""

    name: str
    scores: dict[str, np.ndarray]
    summary: dict[str, float | None]
    images: np.ndarray | None = None
    sample_ids: list[str] | None = None
    prompts: list[str] | None = None  # text-to-image runs: each sample's prompt (a per-prompt table follows)


@dataclass
class Report:
    """A built report: the page, its plots, and the table/markdown for Prefect artifacts.

    `by_prompt` maps an arm with prompts to its per-prompt rows (see `prompt_rows`)."""

    html: str
    pngs: dict[str, bytes]
    table: list[dict]
    markdown: str
    by_prompt: dict[str, list[dict]]


# --------------------------------------------------------------------------- formatting


def _finite(x: Any) -> float | None:
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
    value = _finite(x)
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
    value = _finite(x)
    return MISSING if value is None else f"{100 * value:.{decimals}f} %"


def _short_share(x: Any) -> str:
    """Whole percent for the glance line, one decimal when below 1 % so it does not read as 0."""
    value = _finite(x)
    if value is None:
        return MISSING
    return format_share(value, 1 if 0 < 100 * abs(value) < 1 else 0)


def format_seconds(x: Any) -> str:
    """Cost per sample in ms below one second, in s above: readable across CPU and GPU runs."""
    value = _finite(x)
    if value is None:
        return MISSING
    return f"{1000 * value:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"


def format_count(x: Any) -> str:
    """An integer count with thousands separators."""
    value = _finite(x)
    return MISSING if value is None else f"{int(round(value)):,}"


def format_change(new: Any, base: Any) -> str | None:
    """Relative change of `new` over `base` ('+28 %'); None when undefined (missing or zero base)."""
    a, b = _finite(new), _finite(base)
    if a is None or b is None or b == 0:
        return None
    pct = 100 * (a - b) / abs(b)
    return f"{pct:+.0f} %" if abs(pct) >= 10 else f"{pct:+.1f} %"


def _format_value(value: Any, formatter: Callable[[Any], str]) -> str:
    """Strings from data pass through (escaped later); numbers go through the column's formatter."""
    return value if isinstance(value, str) else formatter(value)


# --------------------------------------------------------------------------- validation


@dataclass
class _Arm:
    """An arm after validation: float score arrays, the in-support mask, NHWC/NHW uint8 images."""

    name: str
    n: int | None
    scores: dict[str, np.ndarray]
    summary: dict[str, Any]
    supported: np.ndarray | None  # True where Rarity is defined; None when neither rarity nor in_support given
    images: np.ndarray | None
    sample_ids: list[str] | None
    prompts: list[str] | None = None


def _check_images(name: str, images: Any, n: int | None) -> np.ndarray | None:
    """uint8 NHW / NHWC with 1, 3 or 4 channels, one image per score row."""
    if images is None:
        return None
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise InputError(f"arm {name!r}: images must be uint8, got {array.dtype}")
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    elif array.ndim != 3:
        raise InputError(f"arm {name!r}: images must be NHW or NHWC with 1, 3 or 4 channels, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise InputError(f"arm {name!r}: {len(array)} images but {n} score rows; images must be aligned with scores")
    return array


def _check_scores(name: str, scores: Any) -> tuple[dict[str, np.ndarray], int | None]:
    """1-D arrays of one common length; the length (None if no scores)."""
    if not isinstance(scores, dict):
        raise InputError(f"arm {name!r}: scores must be a dict of arrays, got {type(scores).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, values in scores.items():
        array = np.asarray(values)
        if array.ndim != 1:
            raise InputError(f"arm {name!r}: score {key!r} must be 1-D, got shape {array.shape}")
        if key != "in_support" and not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise InputError(f"arm {name!r}: score {key!r} must be numeric, got {array.dtype}")
        arrays[str(key)] = array
    lengths = {key: len(a) for key, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"arm {name!r}: score arrays differ in length: {lengths}")
    n = next(iter(lengths.values())) if lengths else None
    return {k: (a.astype(bool) if k == "in_support" else a.astype(np.float64)) for k, a in arrays.items()}, n


def _supported_mask(scores: dict[str, np.ndarray]) -> np.ndarray | None:
    """In support = flagged in_support (if given) and a finite Rarity (if given)."""
    mask = scores.get("in_support")
    if "rarity" in scores:
        finite = np.isfinite(scores["rarity"])
        mask = finite if mask is None else (mask & finite)
    return mask


def _validate_arm(arm: Any) -> _Arm:
    """One arm's checks; every message is one line naming the arm."""
    if not isinstance(arm, ArmResult):
        raise InputError(f"arms must be ArmResult instances, got {type(arm).__name__}")
    if not isinstance(arm.name, str) or not arm.name.strip():
        raise InputError(f"arm names must be non-empty strings, got {arm.name!r}")
    scores, n = _check_scores(arm.name, arm.scores)
    if arm.summary is not None and not isinstance(arm.summary, dict):
        raise InputError(f"arm {arm.name!r}: summary must be a dict, got {type(arm.summary).__name__}")
    images = _check_images(arm.name, arm.images, n)
    ids = None if arm.sample_ids is None else [str(s) for s in arm.sample_ids]
    if ids is not None and n is not None and len(ids) != n:
        raise InputError(f"arm {arm.name!r}: {len(ids)} sample_ids but {n} score rows")
    prompts = None
    if arm.prompts is not None:
        if isinstance(arm.prompts, str) or not all(isinstance(p, str) for p in arm.prompts):
            raise InputError(f"arm {arm.name!r}: prompts must be a list of strings, one per sample")
        prompts = list(arm.prompts)
        if n is not None and len(prompts) != n:
            raise InputError(f"arm {arm.name!r}: {len(prompts)} prompts but {n} score rows")
    return _Arm(arm.name, n, scores, dict(arm.summary or {}), _supported_mask(scores), images, ids, prompts)


def _validate(arms: Any, title: Any, notes: Any, descriptions: Any) -> list[_Arm]:
    """All input checks up front, so a bad call fails before any plotting."""
    if not isinstance(arms, Sequence) or isinstance(arms, str) or len(arms) == 0:
        raise InputError("build_report needs a non-empty list of ArmResult")
    checked = [_validate_arm(arm) for arm in arms]
    names = [arm.name for arm in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"arm names must be unique; repeated: {', '.join(map(repr, duplicates))}")
    if not isinstance(title, str):
        raise InputError(f"title must be a string, got {type(title).__name__}")
    if notes is not None and (isinstance(notes, str) or not all(isinstance(x, str) for x in notes)):
        raise InputError("notes must be a list of strings")
    if descriptions is not None and not isinstance(descriptions, dict):
        raise InputError("metric_descriptions must be a dict of metric name to text")
    return checked


# --------------------------------------------------------------------------- numbers per arm


def _stat(values: np.ndarray | None, fn: Callable[[np.ndarray], Any]) -> float | None:
    """fn over the finite values; None when there are none (never a silent 0 or NaN)."""
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else None


def _in_support_rarity(arm: _Arm) -> np.ndarray | None:
    """Rarity of in-support samples only: out-of-support rows are reported, never averaged."""
    rarity = arm.scores.get("rarity")
    if rarity is None:
        return None
    return rarity[arm.supported] if arm.supported is not None else rarity


def _plain(value: Any) -> Any:
    """JSON-friendly cell for the Prefect table: Python numbers, None for NaN, strings kept."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return _finite(value)


def _arm_row(arm: _Arm) -> dict[str, Any]:
    """The table row: name, summary numbers as given, score means/medians computed from the data."""
    summary = {str(k): _plain(v) for k, v in arm.summary.items()}
    samples = summary.pop("samples", None)
    oos_given = summary.pop("out_of_support_share", None)
    oos = 1.0 - float(arm.supported.mean()) if arm.supported is not None and arm.supported.size else oos_given
    row: dict[str, Any] = {"name": arm.name, "samples": samples if samples is not None else arm.n}
    row.update(summary)
    for metric in ("avgknn", "lof"):
        row[f"{metric}_mean"] = _stat(arm.scores.get(metric), np.mean)
        row[f"{metric}_median"] = _stat(arm.scores.get(metric), np.median)
    row["rarity_mean_in_support"] = _stat(_in_support_rarity(arm), np.mean)
    row["out_of_support_share"] = oos
    return row


# --------------------------------------------------------------------------- table columns


@dataclass(frozen=True)
class _Column:
    key: str
    header: str
    fmt: Callable[[Any], str]
    metric: str | None = None  # shown whenever this score is present, even if every value is missing


KNOWN_COLUMNS = (
    _Column("samples", "Samples", format_count),
    _Column("rare_share", "Rare-class share", format_share),
    _Column("confident_share", "Confident share", format_share),
    _Column("avgknn_mean", "AvgkNN mean", format_number, "avgknn"),
    _Column("avgknn_median", "AvgkNN median", format_number, "avgknn"),
    _Column("lof_mean", "LOF mean", format_number, "lof"),
    _Column("lof_median", "LOF median", format_number, "lof"),
    _Column("rarity_mean_in_support", "Rarity mean (in support)", format_number, "rarity"),
    _Column("out_of_support_share", "Out of support", format_share, "rarity"),
    _Column("precision", "Precision", format_number),
    _Column("recall", "Recall", format_number),
    _Column("density", "Density", format_number),
    _Column("coverage", "Coverage", format_number),
    _Column("fid", "FID", format_number),
    _Column("sfid", "sFID", format_number),
    _Column("seconds_per_sample", "Cost / sample", format_seconds),
)


def _columns(rows: list[dict[str, Any]], arms: list[_Arm]) -> list[_Column]:
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
            columns.append(_Column(key, key, format_number))
    return columns


def _cells(row: dict[str, Any], columns: list[_Column]) -> list[str]:
    """A row's formatted (unescaped) cell texts, '—' for missing."""
    return [_format_value(row.get(c.key), c.fmt) for c in columns]


# --------------------------------------------------------------------------- at a glance


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
        a, b = _finite(base.get(key)), _finite(row.get(key))
        if a is not None and b is not None and (key == "rare_share" or a > 0 or b > 0):
            parts.append(f"{label} {_short_share(a)} → {_short_share(b)}")
    a, b = _finite(base.get("seconds_per_sample")), _finite(row.get("seconds_per_sample"))
    if a and b is not None:
        parts.append(f"cost per sample {b / a:.2g}×")
    body = ", ".join(parts) if parts else "no comparable numbers"
    return f"{row['name']} vs {base['name']}: {body}"


def _glance(rows: list[dict[str, Any]]) -> list[str]:
    """One line per arm after the first, each against the first arm (the baseline)."""
    if len(rows) == 1:
        row = rows[0]
        return [f"{row['name']} only: AvgkNN mean {format_number(row.get('avgknn_mean'))}, "
                f"out of support {format_share(row.get('out_of_support_share'))}"]
    return [_glance_line(row, rows[0]) for row in rows[1:]]


# --------------------------------------------------------------------------- plots


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


def _metric_values(arm: _Arm, metric: str) -> np.ndarray | None:
    """Finite values to plot; Rarity keeps in-support samples only."""
    values = _in_support_rarity(arm) if metric == "rarity" else arm.scores.get(metric)
    return None if values is None else values[np.isfinite(values)]


def _rarity_note(arms: list[_Arm]) -> str | None:
    """How many samples the Rarity histogram leaves out, in total and per arm."""
    counts = [(arm.name, arm.n or 0, int((~arm.supported).sum())) for arm in arms if arm.supported is not None]
    total = sum(c for _, _, c in counts)
    if not counts:
        return None
    per_arm = ", ".join(f"{name}: {c} of {n}" for name, n, c in counts)
    return f"excludes {total} out-of-support sample{'s' if total != 1 else ''} ({per_arm})"


def _histogram_png(metric: str, arms: list[_Arm], colors: list[str], description: str) -> tuple[bytes, str | None]:
    """Overlaid density histograms (same bins) with each arm's mean as a dashed line."""
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


# --------------------------------------------------------------------------- image grids


def _mosaic(images: np.ndarray, cols: int = GRID_COLS, pad: int = 2) -> np.ndarray:
    """Tiles in a grid, each upscaled by an integer factor (nearest neighbour) to ≥ MIN_TILE_PX."""
    n, h, w = images.shape[:3]
    scale = max(1, math.ceil(MIN_TILE_PX / max(h, w)))
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hh, ww = h * scale, w * scale
    rows = math.ceil(n / cols)
    shape = (rows * (hh + pad) + pad, cols * (ww + pad) + pad) + images.shape[3:]
    canvas = np.full(shape, 200, dtype=np.uint8)  # light grey gutters separate black or white tiles
    for k, tile in enumerate(big):
        r, c = divmod(k, cols)
        canvas[pad + r * (hh + pad): pad + r * (hh + pad) + hh, pad + c * (ww + pad): pad + c * (ww + pad) + ww] = tile
    return canvas


def _array_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HW (grey) or HWC (RGB) array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _slug(name: str) -> str:
    """A file-name-safe form of an arm name (the index prefix keeps names unique)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "arm"


@dataclass
class _Grid:
    file: str
    caption: str
    png: bytes
    ids: list[tuple[str, float]]  # (sample id, AvgkNN) of the tiles, in order


def _tile_label(arm: _Arm, i: int) -> str:
    label = arm.sample_ids[i] if arm.sample_ids else f"#{i}"
    return f"{label} “{arm.prompts[i]}”" if arm.prompts is not None else label


PROMPT_ROWS_SHOWN = 50  # the HTML table lists the prompts with the highest mean AvgkNN first
RAREST_SHARE = 0.1  # "in the rarest 10 %": by AvgkNN within the arm


def prompt_rows(arm: _Arm) -> list[dict[str, Any]]:
    """Per prompt: how many samples, their mean AvgkNN and median LOF, the share out of support, and
    the share of them among the arm's rarest 10 % by AvgkNN (1.0 = every sample of it is there; the
    arm-wide rate is 0.1). Sorted by mean AvgkNN, rarest prompt first. Which prompts yield rare
    samples is the question a text-to-image user asks first."""
    if arm.prompts is None or not arm.n:
        return []
    prompts = np.asarray(arm.prompts, dtype=object)
    avgknn = arm.scores.get("avgknn")
    rarest = np.zeros(arm.n, dtype=bool)
    if avgknn is not None and np.isfinite(avgknn).any():
        finite = np.flatnonzero(np.isfinite(avgknn))
        count = max(1, int(round(RAREST_SHARE * len(finite))))
        rarest[finite[np.argsort(-avgknn[finite], kind="stable")[:count]]] = True
    rows = []
    for prompt in dict.fromkeys(arm.prompts):  # first-seen order, then sorted below
        mask = prompts == prompt
        rows.append({
            "prompt": prompt,
            "samples": int(mask.sum()),
            "avgknn_mean": _stat(None if avgknn is None else avgknn[mask], np.mean),
            "lof_median": _stat(arm.scores["lof"][mask], np.median) if "lof" in arm.scores else None,
            "out_of_support_share": None if arm.supported is None else float((~arm.supported[mask]).mean()),
            "rarest_share": float(rarest[mask].mean()) if avgknn is not None else None,
        })
    return sorted(rows, key=lambda r: (r["avgknn_mean"] is None, -(r["avgknn_mean"] or 0.0)))


def _html_prompt_table(arm: _Arm, rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>Prompt</th><th>Samples</th><th>AvgkNN mean</th><th>LOF median</th><th>Out of support</th><th>In the rarest 10 %</th></tr>"
    body = "".join(
        f'<tr><td>{_esc(r["prompt"])}</td><td class="num">{r["samples"]}</td><td class="num">{_esc(format_number(r["avgknn_mean"]))}</td>'
        f'<td class="num">{_esc(format_number(r["lof_median"]))}</td><td class="num">{_esc(format_share(r["out_of_support_share"]))}</td>'
        f'<td class="num">{_esc(format_share(r["rarest_share"]))}</td></tr>'
        for r in rows[:PROMPT_ROWS_SHOWN]
    )
    more = f'<p class="notes">{len(rows) - PROMPT_ROWS_SHOWN} more prompts not shown (all are in the Prefect artifact).</p>' if len(rows) > PROMPT_ROWS_SHOWN else ""
    return f"<h3>{_esc(arm.name)}</h3><table><thead>{head}</thead><tbody>{body}</tbody></table>{more}"


def _arm_grids(arm: _Arm, index: int) -> tuple[list[_Grid], str | None]:
    """The 16 rarest and 16 least rare images by AvgkNN; or why there are none."""
    if arm.images is None or len(arm.images) == 0:
        return [], None
    avgknn = arm.scores.get("avgknn")
    if avgknn is None:
        return [], "no AvgkNN scores to rank the images by"
    ranked = [i for i in np.argsort(avgknn, kind="stable") if np.isfinite(avgknn[i])]
    if not ranked:
        return [], "no finite AvgkNN scores to rank the images by"
    picks = (("rarest", "rarest (highest AvgkNN)", ranked[::-1][:GRID_COUNT]),
             ("least-rare", "least rare (lowest AvgkNN)", ranked[:GRID_COUNT]))
    grids = []
    for tag, words, order in picks:
        values = avgknn[order]
        ids = [(_tile_label(arm, i), float(avgknn[i])) for i in order]
        caption = f"{len(order)} {words}: AvgkNN {format_number(values.min())} to {format_number(values.max())}"
        grids.append(_Grid(f"grid-{index:02d}-{_slug(arm.name)}-{tag}.png", caption, _array_png(_mosaic(arm.images[order])), ids))
    return grids, None


# --------------------------------------------------------------------------- HTML


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.glance{background:#fff8e1;border-left:5px solid #f0a500;padding:.6rem 1rem;font-size:1.15rem}
.glance ul{margin:.2rem 0;padding-left:1.2rem}
.notes{color:#555}
table{border-collapse:collapse;font-size:.92rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.3rem .55rem}th{background:#f4f4f4;text-align:center}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.name{font-weight:600;white-space:nowrap}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em;vertical-align:middle}
figure{margin:.8rem 0}figcaption{color:#444;font-size:.9rem;max-width:760px}
img{max-width:100%}img.grid{image-rendering:pixelated;image-rendering:crisp-edges}
.pair{display:flex;flex-wrap:wrap;gap:2rem}
details{font-size:.85rem;color:#444}
"""


def _esc(text: Any) -> str:
    """Escape anything that came from data before it touches the page."""
    return html.escape(str(text), quote=True)


def _img(name: str, png: bytes, alt: str, css_class: str = "") -> str:
    """An <img> with the PNG inlined as a data URI (the page must work offline and alone)."""
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} src="data:image/png;base64,{data}" alt="{_esc(alt)}" data-file="{_esc(name)}">'


def _html_table(rows: list[dict[str, Any]], columns: list[_Column], colors: list[str]) -> str:
    """The headline table; a colour swatch ties each row to its curves in the plots."""
    head = "".join(f"<th>{_esc(c.header)}</th>" for c in columns)
    body = []
    for row, color in zip(rows, colors):
        cells = "".join(f'<td class="num">{_esc(text)}</td>' for text in _cells(row, columns))
        swatch = f'<span class="swatch" style="background:{color}"></span>'
        body.append(f'<tr><td class="name">{swatch}{_esc(row["name"])}</td>{cells}</tr>')
    return f'<table><thead><tr><th>Arm</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _html_grids(arm: _Arm, grids: list[_Grid], why_none: str | None) -> str:
    """One arm's two grids side by side, with the tiles' sample ids folded away below."""
    if why_none:
        return f"<h3>{_esc(arm.name)}</h3><p>{_esc(why_none)}</p>"
    figures = []
    for grid in grids:
        ids = ", ".join(f"{sid} ({format_number(v)})" for sid, v in grid.ids)
        figures.append(f"<figure>{_img(grid.file, grid.png, f'{arm.name}: {grid.caption}', 'grid')}"
                       f"<figcaption>{_esc(grid.caption)}</figcaption>"
                       f"<details><summary>sample ids, row by row</summary>{_esc(ids)}</details></figure>")
    return f'<h3>{_esc(arm.name)}</h3><div class="pair">{"".join(figures)}</div>'


def _html_page(title: str, glance: list[str], notes: list[str], table: str, plots: list[str], grids: list[str], prompt_tables: list[str]) -> str:
    """Assemble the page; every argument is already escaped HTML except title/glance/notes."""
    glance_items = "".join(f"<li>{_esc(line)}</li>" for line in glance)
    notes_html = f'<ul class="notes">{"".join(f"<li>{_esc(n)}</li>" for n in notes)}</ul>' if notes else ""
    grid_section = f"<h2>Rarest and least rare samples by AvgkNN</h2>{''.join(grids)}" if grids else ""
    prompt_section = (f"<h2>By prompt</h2><p class=\"notes\">Which prompts yield rare samples: rarest first; \"in the rarest 10 %\" "
                      f"is the share of the prompt's samples among its arm's rarest 10 % by AvgkNN.</p>{''.join(prompt_tables)}") if prompt_tables else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<section class="glance"><strong>At a glance</strong><ul>{glance_items}</ul></section>'
        f"{notes_html}<h2>Headline numbers</h2>{table}"
        "<p class=\"notes\">Means and medians are over each arm's scored samples; Rarity only over samples "
        "inside the reference support (out-of-support samples are counted separately, never averaged).</p>"
        f"<h2>Score distributions</h2>{''.join(plots)}{prompt_section}{grid_section}"
        "<footer class=\"notes\"><p>Generated by minority_core.report.</p></footer></body></html>\n"
    )


# --------------------------------------------------------------------------- markdown


def _md_cell(text: Any) -> str:
    """Markdown table cell: escaped like HTML (renderers accept entities), pipes and newlines neutralised."""
    return _esc(text).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, glance: list[str], rows: list[dict[str, Any]], columns: list[_Column]) -> str:
    """The headline table as GitHub markdown, the glance lines, and where the full report lives."""
    header = "| Arm | " + " | ".join(_md_cell(c.header) for c in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 1)
    lines = [f"## {_md_cell(title)}", ""] + [f"- {_md_cell(line)}" for line in glance] + ["", header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(x) for x in [row["name"], *_cells(row, columns)]) + " |")
    lines += ["", f"{LOCATION_PREFIX}`{REPORT_DIR}/{INDEX_NAME}` under the run's output root (self-contained HTML)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points


def build_report(
    arms: list[ArmResult],
    title: str,
    notes: list[str] | None = None,
    metric_descriptions: dict[str, str] | None = None,
) -> Report:
    """Build the page, its PNGs, the table rows and the markdown for a list of arms.

    The first arm is the baseline every other arm is compared to in the "at a glance" lines.
    Raises a one-line ValueError on bad input before any plotting.
    """
    checked = _validate(arms, title, notes, metric_descriptions)
    descriptions = {**DEFAULT_DESCRIPTIONS, **(metric_descriptions or {})}
    colors = [ARM_COLORS[i % len(ARM_COLORS)] for i in range(len(checked))]
    rows = [_arm_row(arm) for arm in checked]
    columns = _columns(rows, checked)
    glance = _glance(rows)
    pngs: dict[str, bytes] = {}
    plots = []
    for metric in METRICS:
        if not any(metric in arm.scores for arm in checked):
            continue
        png, caption = _histogram_png(metric, checked, colors, descriptions[metric])
        name = f"hist-{metric}.png"
        pngs[name] = png
        text = f"{METRIC_LABELS[metric]}: {descriptions[metric]}" + (f". Histogram {caption}." if caption else ".")
        plots.append(f"<figure>{_img(name, png, f'{METRIC_LABELS[metric]} histogram by arm')}"
                     f"<figcaption>{_esc(text)}</figcaption></figure>")
    grid_html = []
    for index, arm in enumerate(checked):
        grids, why_none = _arm_grids(arm, index)
        pngs.update({grid.file: grid.png for grid in grids})
        if grids or why_none:
            grid_html.append(_html_grids(arm, grids, why_none))
    by_prompt = {arm.name: prompt_rows(arm) for arm in checked if arm.prompts is not None}
    prompt_tables = [_html_prompt_table(arm, by_prompt[arm.name]) for arm in checked if by_prompt.get(arm.name)]
    page = _html_page(title, glance, list(notes or []), _html_table(rows, columns, colors), plots, grid_html, prompt_tables)
    return Report(html=page, pngs=pngs, table=rows, markdown=_markdown(title, glance, rows, columns), by_prompt=by_prompt)


def _is_local(fs: Any) -> bool:
    """Local disks need temp-and-rename for atomicity; object stores' single PUT already is atomic."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _put(fs: Any, path: str, data: bytes, local: bool) -> None:
    """Write `data` to `path` so a reader never sees it half-written."""
    if not local:
        fs.pipe_file(path, data)
        return
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if hasattr(f, "fileno"):
                os.fsync(f.fileno())
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_report(report: Report, fs: Any, root: str) -> str:
    """Write ``root/report/index.html`` and its PNGs with fsspec filesystem `fs`; return the index path.

    PNGs go first and the page last, so a visible index.html always has its files beside it.
    ``report.markdown``'s last line is updated to name the written location (for the artifact).
    """
    base = posixpath.join(root.rstrip("/"), REPORT_DIR)
    local = _is_local(fs)
    if local:
        fs.makedirs(base, exist_ok=True)
    for name, png in report.pngs.items():
        _put(fs, posixpath.join(base, name), png, local)
    index = posixpath.join(base, INDEX_NAME)
    _put(fs, index, report.html.encode("utf-8"), local)
    url = index if local else fs.unstrip_protocol(index)
    lines = report.markdown.split("\n")
    if lines and lines[-1].startswith(LOCATION_PREFIX):
        lines[-1] = f"{LOCATION_PREFIX}`{url}`"
        report.markdown = "\n".join(lines)
    return index
