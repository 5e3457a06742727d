"""The numbers per arm and per prompt, computed from the scores (the table rows and Prefect artifacts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minority_core.report.format import finite_or_none
from minority_core.report.model import CheckedArm, in_support_rarity

RAREST_SHARE = 0.1  # "in the rarest 10 %": by AvgkNN within the arm


def arm_row(arm: CheckedArm) -> dict[str, Any]:
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
    row["rarity_mean_in_support"] = _stat(in_support_rarity(arm), np.mean)
    row["out_of_support_share"] = oos
    return row


def prompt_rows(arm: CheckedArm) -> list[dict[str, Any]]:
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


def _stat(values: np.ndarray | None, fn: Callable[[np.ndarray], Any]) -> float | None:
    """fn over the finite values; None when there are none (never a silent 0 or NaN)."""
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else None


def _plain(value: Any) -> Any:
    """JSON-friendly cell for the Prefect table: Python numbers, None for NaN, strings kept."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return finite_or_none(value)
