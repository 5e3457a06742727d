"""Choosing w from a pilot sweep: the grid of settings, the verdict per arm, the chosen setting,
and writing it into a dataset file. Pure functions over plain data (no models, no storage), so the
selection rule is tested on a hand-made arm table (tests/test_tune.py) and the flow
(`flows/tune.py`) only runs the arms and hands their numbers here.

w is not portable across models (docs/DESIGN.md §7): a pilot sweep on the model itself, with
standard sampling (w = 0) and the same seeds as the baseline, is what finds a good one.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minority_core.config.guidance import MinorityGuidance
from minority_core.errors import InputError

SWEPT = ("scale", "perturb_ratio", "every", "stop_ratio")  # the MinorityGuidance fields a sweep varies
RARITY_METRICS = ("avgknn_mean", "lof_mean", "rarity_mean_in_support", "rare_share")  # report-table columns: larger = rarer
QUALITY_METRICS = {"precision": "--max-precision-drop", "confident_share": "--max-confidence-drop"}  # larger = better
MAX_ARMS = 64  # a grid larger than this is a mistake for a pilot (each arm is a run)
BASELINE = "standard"  # the w = 0 arm's name


@dataclass(frozen=True)
class Setting:
    """One arm of the sweep: the swept guidance fields, fully resolved (w = 0: standard sampling)."""

    scale: float
    perturb_ratio: float
    every: int
    stop_ratio: float

    @property
    def name(self) -> str:
        """The arm's name and folder (`w1pt5-p0pt4-e2-s0pt5`; `standard` for w = 0): arm names and
        Prefect artifact keys allow only lowercase letters, digits and dashes, so a decimal point
        is written `pt` and a minus sign `neg`."""
        if self.scale == 0:
            return BASELINE
        return f"w{_num(self.scale)}-p{_num(self.perturb_ratio)}-e{self.every}-s{_num(self.stop_ratio)}"

    def guidance(self) -> dict[str, Any]:
        """The dataset-file `guidance:` keys of this setting (MinorityGuidance field names)."""
        return {"scale": float(self.scale), "perturb_ratio": float(self.perturb_ratio), "every": int(self.every), "stop_ratio": float(self.stop_ratio)}

    def flat(self) -> dict[str, Any]:
        """The same as `SynthesisConfig.from_options` keywords (w = 0: no guidance keys but the scale)."""
        if self.scale == 0:
            return {"guidance_scale": 0.0}
        return {"guidance_scale": float(self.scale), "perturb_ratio": float(self.perturb_ratio), "every": int(self.every), "stop_ratio": float(self.stop_ratio)}


def _num(value: float) -> str:
    return f"{value:g}".replace(".", "pt").replace("-", "neg")


def sweep(
    scales: Sequence[float], base: MinorityGuidance, perturb_ratios: Sequence[float] = (), every: Sequence[int] = (), stop_ratios: Sequence[float] = ()
) -> list[Setting]:
    """The arms of a sweep: standard sampling first, then every combination of the given values
    (an empty list keeps `base`'s value). Refused in one line before any work: no w, a negative or
    non-finite w, only w = 0, a value MinorityGuidance refuses, or more than MAX_ARMS arms."""
    scales = list(scales)
    if not scales:
        raise InputError("the sweep has no guidance scales: give at least one w > 0 (e.g. --scales 0.5,1,2)")
    bad = [w for w in scales if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0]
    if bad:
        raise InputError(
            f"guidance scales must be finite numbers ≥ 0, got {bad[0]!r}: w = 0 is standard sampling (always run as the baseline), larger w pushes harder"
        )
    guided = sorted({float(w) for w in scales if w > 0})
    if not guided:
        raise InputError("the sweep has only w = 0 (standard sampling, the baseline it always runs): give at least one w > 0")
    grid = itertools.product(guided, list(perturb_ratios) or [base.perturb_ratio], list(every) or [base.every], list(stop_ratios) or [base.stop_ratio])
    settings = [Setting(0.0, base.perturb_ratio, base.every, base.stop_ratio)]
    for w, p, e, s in grid:
        MinorityGuidance(scale=w, perturb_ratio=p, every=e, stop_ratio=s)  # one line naming the bad field
        setting = Setting(w, float(p), int(e), float(s))
        if setting not in settings:
            settings.append(setting)
    if len(settings) > MAX_ARMS:
        raise InputError(
            f"the sweep has {len(settings)} arms (each one a run): keep a pilot to at most {MAX_ARMS}, e.g. sweep w first, then perturb_ratio/every/stop_ratio around the best w"
        )
    names = [s.name for s in settings]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise InputError(f"two settings of the sweep share the arm name {clash!r}: give values that differ in their first 6 significant digits")
    return settings


def check_bounds(max_drops: Mapping[str, float | None], rarity: str) -> dict[str, float]:
    """The quality bounds that are set (metric → allowed drop from standard sampling), checked;
    refused in one line: an unknown metric, a non-finite drop, no bound at all."""
    if rarity not in RARITY_METRICS:
        raise InputError(f"unknown rarity measure {rarity!r}: use one of {', '.join(RARITY_METRICS)}")
    bounds = {}
    for metric, drop in max_drops.items():
        if metric not in QUALITY_METRICS:
            raise InputError(f"unknown quality measure {metric!r}: use one of {', '.join(QUALITY_METRICS)}")
        if drop is None:
            continue
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not math.isfinite(drop):
            raise InputError(f"{QUALITY_METRICS[metric]} must be a finite number (the largest allowed drop from standard sampling), got {drop!r}")
        bounds[metric] = float(drop)
    if not bounds:
        raise InputError("no quality bound: give --max-precision-drop (e.g. 0.05) and/or --max-confidence-drop")
    return bounds


def assess(rows: Sequence[Mapping[str, Any]], rarity: str, bounds: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each arm's row (the report's numbers plus its setting's `scale`, ...) with its verdict:
    `gain` (its rarity minus the baseline's), `<metric>_drop` (baseline minus its value), `meets`
    (every bound holds) and `eligible` (meets the bounds with a positive gain). The baseline is the
    row with scale 0; it is never eligible."""
    base = _baseline(rows)
    assessed = []
    for row in rows:
        out = dict(row)
        value, base_value = row.get(rarity), base.get(rarity)
        out["gain"] = None if value is None or base_value is None else float(value) - float(base_value)
        meets = True
        for metric, allowed in bounds.items():
            value, base_value = row.get(metric), base.get(metric)
            drop = None if value is None or base_value is None else float(base_value) - float(value)
            out[f"{metric}_drop"] = drop
            meets = meets and drop is not None and drop <= allowed + 1e-12
        out["meets"] = meets
        out["eligible"] = bool(row.get("scale")) and meets and out["gain"] is not None and out["gain"] > 0
        assessed.append(out)
    return assessed


def choose(assessed: Sequence[Mapping[str, Any]], rarity: str, bounds: Mapping[str, float]) -> dict[str, Any]:
    """The eligible arm with the largest rarity gain (ties: the smaller w, then the earlier arm).
    None eligible: one InputError line saying which bound failed, by how much, and what to change."""
    eligible = [r for r in assessed if r["eligible"]]
    if eligible:
        return max(eligible, key=lambda r: (r["gain"], -float(r["scale"])))
    base = _baseline(assessed)
    guided = [r for r in assessed if r.get("scale")]
    allowed = ", ".join(f"{m} drop ≤ {d:g} (standard: {_fmt(base.get(m))})" for m, d in bounds.items())
    meeting = [r for r in guided if r["meets"]]
    if not meeting:
        measured = [r for r in guided if all(r.get(f"{m}_drop") is not None for m in bounds)]
        if not measured:
            return _refuse(f"no arm of the sweep has every bounded measure ({', '.join(bounds)}): too few samples per arm? raise --num-samples")
        best = min(measured, key=lambda r: max(r[f"{m}_drop"] - d for m, d in bounds.items()))  # the smallest excess over a bound
        failing = [m for m, d in bounds.items() if best[f"{m}_drop"] > d + 1e-12]
        drops = " and ".join(f"{m} by {best[f'{m}_drop']:.3f}" for m in failing)
        flags = " / ".join(QUALITY_METRICS[m] for m in failing)
        return _refuse(f"no setting of the sweep keeps {allowed}; the closest, {best['name']}, drops {drops}: allow a larger drop ({flags}) or sweep smaller w")
    return _refuse(
        f"no setting that keeps {allowed} raises {rarity} above standard sampling's {_fmt(base.get(rarity))}: sweep larger w, or allow a larger quality drop"
    )


def _refuse(message: str) -> dict[str, Any]:
    raise InputError(message)


def _baseline(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    for row in rows:
        if row.get("scale") == 0:
            return row
    raise InputError("the arm table has no standard-sampling arm (scale 0) to compare with")


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


# --------------------------------------------------------------------------- dataset files

_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:(.*)$")


def set_guidance(text: str, values: Mapping[str, Any]) -> str:
    """A dataset file's text with its top-level `guidance:` keys set to `values`; every other
    line (comments, order, other keys) kept as it was. An existing key keeps its indentation and
    trailing comment; a missing key is added at the end of the block; no block: one is appended.
    The caller checks that the result parses to the old data with only these keys changed."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if (m := _TOP_KEY.match(line)) and m.group(1) == "guidance"), None)
    rendered = {k: _yaml_scalar(v) for k, v in values.items()}
    if start is None:
        tail = "" if not text or text.endswith("\n") else "\n"
        return text + tail + "guidance:\n" + "".join(f"  {k}: {v}\n" for k, v in rendered.items())
    inline = _TOP_KEY.match(lines[start]).group(2)
    value, _, comment = inline.partition("#")
    if value.strip() not in ("", "{}"):
        raise InputError("the dataset file's guidance is written inline (guidance: {...}): write it as a block, one key per line, to let tune update it")
    if value.strip() == "{}":
        lines[start] = "guidance:" + (f"  #{comment}" if comment else "") + "\n"
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    body = range(start + 1, end)
    indent = next((re.match(r"^(\s+)", lines[i]).group(1) for i in body if lines[i].strip() and not lines[i].lstrip().startswith("#")), "  ")
    for key, rendered_value in rendered.items():
        pattern = re.compile(rf"^({re.escape(indent)}{re.escape(key)}\s*:\s*)([^#\n]*?)(\s*#.*)?(\r?\n)?$")
        found = next((i for i in body if pattern.match(lines[i])), None)
        if found is not None:
            m = pattern.match(lines[found])
            lines[found] = f"{m.group(1)}{rendered_value}{m.group(3) or ''}{m.group(4) or ''}"
            continue
        last = max((i for i in body if lines[i].strip() and not lines[i].lstrip().startswith("#")), default=start)
        if not lines[last].endswith("\n"):
            lines[last] += "\n"
        lines.insert(last + 1, f"{indent}{key}: {rendered_value}\n")
        end += 1
        body = range(start + 1, end)
    return "".join(lines)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"a guidance value must be a number, got {value!r}")
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def guidance_rows(settings: Iterable[Setting]) -> dict[str, dict[str, Any]]:
    """Arm name → its setting's swept fields, to join with the report's rows by name."""
    return {s.name: {"name": s.name, **s.guidance()} for s in settings}
