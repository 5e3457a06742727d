"""Selecting the rarest samples of a scored run: a selection list (run, ids, scores), never a second
copy of the images (`minority_core.runs.export` makes the trainable copy). It reads the scores
shards, plus, for a text-to-image run, the prompt of each scored sample, and, for a confidence
filter, each sample's image, one samples shard at a time.

Only eligible rows are ever selected: a finite score (Rarity is NaN out of support, so a NaN is
never "rarest"), in support with `in_support`, classifier confidence ≥ `min_confidence`; a top
fraction is a fraction of the eligible rows. Sample ids restart in every run, so each selection
row carries its run (`run_name`): rows of two runs never share a key."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, Manifest, ShardStore, decode_png
from minority_core.runs.scoring import check_scores_cover_samples, score_table, scores_kind


def select_rarest(
    store: ShardStore, manifest: Manifest, metric: str = "avgknn", top_q: float | None = 0.1, threshold: float | None = None,
    name: str | None = None, per_prompt: bool = False, in_support: bool = False, min_confidence: float | None = None,
) -> dict:
    """Keep the rarest eligible samples by a score (top fraction, or above a threshold) and write the
    list to `selections/<name>/shard-00000.parquet` (run, sample id, scores, + confidence, + prompt).
    `per_prompt`: the top fraction of each prompt's eligible samples (at least one each), so every
    prompt contributes its own rare cases rather than the rarest prompt all of them."""
    check_rule(metric, top_q, threshold, per_prompt, min_confidence)
    from minority_core.io.lease import Lease

    with Lease.acquire(store, "filter"):  # a writer of the run like any other: refused while synthesize or score holds it
        return _select(store, manifest, metric, top_q, threshold, name, per_prompt, in_support, min_confidence)


def _select(store: ShardStore, manifest: Manifest, metric: str, top_q: float | None, threshold: float | None, name: str | None,
            per_prompt: bool, in_support: bool, min_confidence: float | None) -> dict:
    scores = score_table(store, manifest)
    if scores.num_rows == 0:
        raise InputError(f"{store.url} has no scores yet: run `minority-synth score` first")
    prompts = prompts_by_score_row(store, manifest, scores)
    if per_prompt and prompts is None:
        raise InputError(f"{store.url} has no prompts (not a text-to-image run): drop per_prompt")
    confidence = None if min_confidence is None else classifier_confidence(store, manifest, scores)
    rows = eligible_rows(store.url, scores, metric, in_support, confidence, min_confidence)
    values = scores.column(metric).to_numpy(zero_copy_only=False)
    keep = np.sort(choose(rows, values, top_q, threshold, prompts if per_prompt else None))
    table = selection_table(run_name(store, manifest), scores, keep, prompts, confidence)
    name = name or rule_name(metric, top_q, threshold, per_prompt, in_support, min_confidence)
    record = store.write_shard(f"selections/{name}", 0, table)
    return {"run": store.url, "selected": int(len(keep)), "eligible": int(len(rows)), "of": int(scores.num_rows),
            "selection": store.url_of(record.path)}


def check_rule(metric: str, top_q: float | None, threshold: float | None, per_prompt: bool, min_confidence: float | None = None) -> None:
    """A selection rule is one metric and exactly one of a top fraction or a threshold."""
    if metric not in SCORE_COLUMNS:
        raise InputError(f"metric must be one of {', '.join(SCORE_COLUMNS)}, got {metric!r}")
    if (top_q is None) == (threshold is None):
        raise InputError("give exactly one of top_q (a fraction in (0, 1]) or threshold")
    if top_q is not None and not 0 < top_q <= 1:
        raise InputError(f"top_q must be in (0, 1], got {top_q}")
    if threshold is not None and not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold}")
    if per_prompt and top_q is None:
        raise InputError("per_prompt selects a top fraction of each prompt's samples: give top_q, not threshold")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise InputError(f"min_confidence is a max-softmax probability: give a value in [0, 1], got {min_confidence}")


def run_name(store: ShardStore, manifest: Manifest) -> str:
    """The run column of selections and exports: the run's full URL and its identity hash (model,
    seed, sampler, ...), since sample ids restart at `00000-000000` in every run."""
    return f"{store.fs.unstrip_protocol(store.root)}@{manifest.config_hash[:12]}"


def rule_name(metric: str, top_q: float | None, threshold: float | None, per_prompt: bool, in_support: bool, min_confidence: float | None) -> str:
    """The default selection name: the rule, spelled out."""
    name = f"top-{top_q:g}-{metric}" if top_q is not None else f"{metric}-above-{threshold:g}"
    name += "-per-prompt" if per_prompt else ""
    name += "-in-support" if in_support else ""
    return name + (f"-confidence-{min_confidence:g}" if min_confidence is not None else "")


def eligible_rows(url: str, scores: pa.Table, metric: str, in_support: bool, confidence: np.ndarray | None,
                  min_confidence: float | None) -> np.ndarray:
    """The score rows a rule may select; a one-line error naming the filter that left none."""
    mask = np.isfinite(scores.column(metric).to_numpy(zero_copy_only=False))
    if not mask.any():
        why = " (Rarity is NaN out of support, and every sample is out of support)" if metric == "rarity" else ""
        raise InputError(f"{url}: no sample has a finite {metric}{why}: select by avgknn or lof instead")
    if in_support:
        mask &= scores.column("in_support").to_numpy(zero_copy_only=False)
        if not mask.any():
            raise InputError(f"{url}: none of its {scores.num_rows} samples is in support of the reference: drop in_support")
    if confidence is not None:
        mask &= confidence >= min_confidence
        if not mask.any():
            raise InputError(f"{url}: no{' in-support' if in_support else ''} sample has classifier confidence ≥ {min_confidence:g} "
                             f"(highest {float(confidence.max()):.3g}): lower min_confidence")
    return np.flatnonzero(mask)


def choose(rows: np.ndarray, values: np.ndarray, top_q: float | None, threshold: float | None, prompts: list[str] | None) -> np.ndarray:
    """The selected rows among the eligible `rows`: per prompt, top fraction, or above a threshold."""
    if prompts is not None:
        groups = np.asarray(prompts, dtype=object)[rows]
        return np.concatenate([top_fraction(rows[groups == p], values, top_q) for p in dict.fromkeys(groups.tolist())])
    if top_q is not None:
        return top_fraction(rows, values, top_q)
    return rows[values[rows] > threshold]


def top_fraction(rows: np.ndarray, values: np.ndarray, top_q: float) -> np.ndarray:
    """The top `top_q` fraction of `rows` by value (at least one; ties keep the earlier row)."""
    order = rows[np.argsort(-values[rows], kind="stable")]
    return order[: max(1, int(round(top_q * len(rows))))]


def selection_table(run: str, scores: pa.Table, keep: np.ndarray, prompts: list[str] | None, confidence: np.ndarray | None) -> pa.Table:
    """The selected rows: run, sample id, every score, + classifier confidence, + prompt."""
    take = pa.array(keep, pa.int64())
    columns = {"run": pa.array([run] * len(keep), pa.string())}
    columns.update({c: scores.column(c).take(take) for c in ("sample_id", *SCORE_COLUMNS, "in_support")})
    if confidence is not None:
        columns["confidence"] = pa.array(confidence[keep], pa.float32())
    if prompts is not None:
        columns["prompt"] = pa.array([prompts[i] for i in keep], pa.string())
    return pa.table(columns)


def classifier_confidence(store: ShardStore, manifest: Manifest, scores: pa.Table) -> np.ndarray:
    """Each scored sample's classifier confidence (max softmax), where the run's extractor is a
    classifier (demo-classifier); images decoded one samples shard at a time."""
    from minority_core.metrics.features import get_extractor

    name = manifest.config["extractor"]
    extractor = get_extractor(name)
    if not callable(getattr(extractor, "predict", None)):
        raise InputError(f"{store.url}: its extractor {name!r} is not a classifier, so its samples have no confidence: "
                         "drop min_confidence (runs featurised with demo-classifier have one)")
    parts = [np.zeros(0, np.float32)]
    for record in check_scores_cover_samples(store.url, store, manifest, scores):
        images = [decode_png(cell["bytes"]) for cell in store.read_shard(record).column("image").to_pylist()]
        if images:
            parts.append(extractor.predict(np.stack(images))[1])
    return np.concatenate(parts)


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
