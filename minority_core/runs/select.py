"""Selecting the rarest samples of a scored run: a selection list (ids + score), never a second
copy of the images. It reads the scores shards, plus, for a text-to-image run, the prompt of each
scored sample, one samples shard at a time: no image is decoded or held."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, Manifest, ShardStore
from minority_core.runs.scoring import score_table, scores_kind


def select_rarest(
    store: ShardStore, manifest: Manifest, metric: str = "avgknn", top_q: float | None = 0.1, threshold: float | None = None,
    name: str | None = None, per_prompt: bool = False,
) -> dict:
    """Keep the rarest samples by a score (top fraction, or above a threshold) and write the list to
    `selections/<name>/shard-00000.parquet` (sample ids + score, + prompt for text-to-image runs).
    `per_prompt`: the top fraction of each prompt's samples (at least one each), so every prompt
    contributes its own rare cases rather than the rarest prompt all of them."""
    check_rule(metric, top_q, threshold, per_prompt)
    scores = score_table(store, manifest)
    if scores.num_rows == 0:
        raise InputError(f"{store.url} has no scores yet: run `minority-synth score` first")
    prompts = prompts_by_score_row(store, manifest, scores)
    if per_prompt and prompts is None:
        raise InputError(f"{store.url} has no prompts (not a text-to-image run): drop per_prompt")
    values = np.nan_to_num(scores.column(metric).to_numpy(zero_copy_only=False), nan=-np.inf)
    if per_prompt:
        groups = np.asarray(prompts, dtype=object)
        keep = np.concatenate([top_fraction(np.flatnonzero(groups == p), values, top_q) for p in dict.fromkeys(prompts)])
    elif top_q is not None:
        keep = top_fraction(np.arange(len(values)), values, top_q)
    else:
        keep = np.flatnonzero(values > threshold)
    keep = np.sort(keep)
    columns = {"sample_id": scores.column("sample_id").take(keep), metric: scores.column(metric).take(keep)}
    if prompts is not None:
        columns["prompt"] = pa.array([prompts[i] for i in keep], pa.string())
    name = name or (f"top-{top_q:g}-{metric}" + ("-per-prompt" if per_prompt else "") if top_q is not None else f"{metric}-above-{threshold:g}")
    record = store.write_shard(f"selections/{name}", 0, pa.table(columns))
    return {"run": store.url, "selected": int(len(keep)), "of": int(scores.num_rows), "selection": store.url_of(record.path)}


def check_rule(metric: str, top_q: float | None, threshold: float | None, per_prompt: bool) -> None:
    """A selection rule is one metric and exactly one of a top fraction or a threshold."""
    if metric not in SCORE_COLUMNS:
        raise InputError(f"metric must be one of {', '.join(SCORE_COLUMNS)}, got {metric!r}")
    if (top_q is None) == (threshold is None):
        raise InputError("give exactly one of top_q (a fraction in (0, 1]) or threshold")
    if top_q is not None and not 0 < top_q <= 1:
        raise InputError(f"top_q must be in (0, 1], got {top_q}")
    if per_prompt and top_q is None:
        raise InputError("per_prompt selects a top fraction of each prompt's samples: give top_q, not threshold")


def top_fraction(rows: np.ndarray, values: np.ndarray, top_q: float) -> np.ndarray:
    """The top `top_q` fraction of `rows` by value (at least one; ties keep the earlier row)."""
    order = rows[np.argsort(-values[rows], kind="stable")]
    return order[: max(1, int(round(top_q * len(rows))))]


def prompts_by_score_row(store: ShardStore, manifest: Manifest, scores: pa.Table) -> list[str] | None:
    """Each scored sample's prompt (None for runs without prompts), matched by sample id. Only a
    text-to-image run (prompts in its recorded sampler config) has its samples shards read, one at
    a time: each scores shard's samples shard (the same index)."""
    if not (manifest.config.get("sampler") or {}).get("prompts"):
        return None
    samples_records = {r.index: r for r in manifest.records("samples")}
    prompts: list[str] = []
    for record in manifest.records(scores_kind(manifest)):
        if record.index not in samples_records:
            raise InputError(f"{store.url}: scores shard {record.index:05d} has no committed samples shard; rerun `minority-synth synthesize`")
        samples = store.read_shard(samples_records[record.index])
        shard_prompts = prompts_of(samples)
        if shard_prompts is None:
            return None
        by_id = dict(zip(samples.column("sample_id").to_pylist(), shard_prompts, strict=True))
        start = len(prompts)
        try:
            prompts.extend(by_id[i] for i in scores.column("sample_id").slice(start, record.rows).to_pylist())
        except KeyError as err:
            raise InputError(f"{store.url}: scored sample {err.args[0]} is not in samples shard {record.index:05d}; rerun `minority-synth score`") from None
    return prompts


def prompts_of(samples: pa.Table) -> list[str] | None:
    """The samples' prompts in row order; None unless every sample has one (a text-to-image run)."""
    if samples.num_rows == 0 or "prompt" not in samples.column_names or samples.column("prompt").null_count:
        return None
    return samples.column("prompt").to_pylist()
