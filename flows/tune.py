"""`minority-synth tune`: a pilot sweep over the guidance settings of a new model, each arm an
ordinary run, and the setting with the largest rarity gain whose quality loss stays within the
user's bound, written as a preset file (and into a dataset file when asked).

Each arm is a run under OUT/arms/<arm>/ made by `run_synthesis` (Ray actors, resumable) and
scored by `score_run`; one `report_runs` gives every arm's numbers (and OUT/report/index.html);
the choice is `minority_core.runs.tune.choose`, a pure function. Rerunning the same command
skips finished arms and shards. Everything is checked by `plan_tune` before any work.
"""

from __future__ import annotations

import base64
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runtime import artifact, run_logger
from flows.scoring import _named, ensure_reference, report_runs, score_run
from flows.synthesize import LANE_RUNNER, run_synthesis
from minority_core.config import SynthesisConfig, resolve_storage_options
from minority_core.config.presets import preset_for, resolve_sampler
from minority_core.errors import InputError
from minority_core.io import ShardStore
from minority_core.io.atomic import write_atomic
from minority_core.report.tune import tradeoff_png, tune_markdown, tune_page
from minority_core.runs.reference import reference_exists, reference_url
from minority_core.runs.results import RARE_CLASSES_BY_MODEL
from minority_core.runs.tune import Setting, assess, check_bounds, choose, guidance_rows, set_guidance, sweep

SCALE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # default grid: the preset's w times these
TABLE_NAME = "tune.json"
PRESET_NAME = "preset.yaml"


@dataclass
class TunePlan:
    """What a tune will do, checked: the arms, their run configs, the bounds, the dataset file to update."""

    model: str
    out: str
    reference: str
    reference_source: str | None
    extractor: str
    rarity: str
    bounds: dict[str, float]
    settings: list[Setting]
    configs: list[SynthesisConfig]
    storage_options: dict = field(default_factory=dict)
    dataset_file: str | None = None


def plan_tune(
    model: str,
    reference: str,
    out: str,
    scales: list[float] | None = None,
    perturb_ratios: list[float] | None = None,
    every: list[int] | None = None,
    stop_ratios: list[float] | None = None,
    num_samples: int = 256,
    shard_size: int = 64,
    steps: int | None = None,
    seed: int = 0,
    workers: int = 2,
    extractor: str | None = None,
    reference_source: str | None = None,
    max_precision_drop: float | None = 0.05,
    max_confidence_drop: float | None = None,
    rarity: str = "avgknn_mean",
    write_dataset: str | None = None,
    storage_options: dict | None = None,
    preset: str | None = None,
    device: str | None = None,
    ray_address: str | None = None,
) -> TunePlan:
    """Every check of a tune before any work (one line each): the grid, the bounds, the run sizes,
    the reference set, the dataset file. `scales` None: the preset's w × SCALE_FACTORS."""
    bounds = check_bounds({"precision": max_precision_drop, "confident_share": max_confidence_drop}, rarity)
    if ("confident_share" in bounds or rarity == "rare_share") and model not in RARE_CLASSES_BY_MODEL:
        raise InputError(
            f"classifier confidence and rare-class share need a model with a labelling classifier ({', '.join(RARE_CLASSES_BY_MODEL)}); "
            f"{model} has none: bound precision (--max-precision-drop) and use an AvgkNN/LOF/Rarity measure"
        )
    sampler_given, guidance_given = {"steps": steps}, {}
    if write_dataset is not None:
        sampler_given, guidance_given = _dataset_base(write_dataset, model, steps)
    base = resolve_sampler(model, preset, {**sampler_given, "guidance": {**guidance_given, "scale": 1.0}})
    if base.guidance is None:
        raise InputError(f"the sampler of this tune is {base.method!r}, not self-guided: tune sweeps self-guided minority guidance")
    if scales is None:
        preset_w = (preset_for(model, preset).sampler.guidance or base.guidance).scale
        scales = [round(preset_w * f, 6) for f in SCALE_FACTORS]
    settings = sweep(scales, base.guidance, perturb_ratios or (), every or (), stop_ratios or ())
    fixed = {
        "scale_type": base.guidance.scale_type,
        "distance": base.guidance.distance,
        "normalize": base.guidance.normalize,
        "mc_samples": base.guidance.mc_samples,
    }
    sampler_flat = {k: v for k, v in sampler_given.items() if v is not None and k != "method"}
    out = out.rstrip("/")
    configs = [
        SynthesisConfig.from_options(
            model=model,
            preset=preset,
            out=f"{out}/arms/{s.name}",
            arm=s.name,
            num_samples=num_samples,
            shard_size=shard_size,
            seed=seed,
            workers=workers,
            extractor=extractor,
            device=device,
            ray_address=ray_address,
            storage_options=storage_options or None,
            **sampler_flat,
            **s.flat(),
            **(fixed if s.scale else {}),
        )
        for s in settings
    ]
    resolved_extractor = configs[0].output.extractor
    if reference_source is None and not reference_exists(reference, resolved_extractor, resolve_storage_options(storage_options)):
        raise InputError(
            f"no reference set at {reference_url(reference, resolved_extractor)}: give --reference-source (real images) to build it, "
            "or run `minority-synth build-reference` first"
        )
    return TunePlan(model, out, reference, reference_source, resolved_extractor, rarity, bounds, settings, configs, dict(storage_options or {}), write_dataset)


def _dataset_base(path: str, model: str, steps: int | None) -> tuple[dict, dict]:
    """The dataset file's sampler and guidance settings, which the arms keep (only the swept keys
    change when it is written); refused in one line if it is not a valid dataset file of `model`,
    is not writable, or has an inline guidance mapping."""
    from minority_core.config.datasets import load_dataset_file

    entry = load_dataset_file(path)
    if entry.model_spec != model:
        raise InputError(f"{path} is a dataset of {entry.model_spec}, not {model}: tune that model, or write into a dataset file of {model}")
    if not Path(path).parent.is_dir() or not _writable(Path(path)):
        raise InputError(f"{path} is not writable: fix its permissions or write into a copy")
    method = entry.sampler.get("method", "self-guided")
    if method != "self-guided":
        raise InputError(f"{path}: sampler.method is {method!r}; tune sweeps self-guided guidance: drop sampler.method or tune another file")
    set_guidance(Path(path).read_text(encoding="utf-8"), {"scale": 1.0})  # an inline guidance mapping is refused here, before any work
    sampler = {**entry.sampler, **({"steps": steps} if steps is not None else {})}
    return sampler, {k: v for k, v in entry.guidance.items() if k != "scale"}


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def tune_guidance(
    model: str,
    reference: str,
    out: str,
    scales: list[float] | None = None,
    perturb_ratios: list[float] | None = None,
    every: list[int] | None = None,
    stop_ratios: list[float] | None = None,
    num_samples: int = 256,
    shard_size: int = 64,
    steps: int | None = None,
    seed: int = 0,
    workers: int = 2,
    extractor: str | None = None,
    reference_source: str | None = None,
    max_precision_drop: float | None = 0.05,
    max_confidence_drop: float | None = None,
    rarity: str = "avgknn_mean",
    write_dataset: str | None = None,
    storage_options: dict | None = None,
    preset: str | None = None,
    device: str | None = None,
    ray_address: str | None = None,
) -> dict:
    """The pilot sweep (see the module docstring); inside a flow run whose task runner is LANE_RUNNER
    (`tune`). Writes OUT/tune.json (every arm's numbers and verdict), OUT/report/tune.html with the
    trade-off plot, and, when a setting qualifies, OUT/preset.yaml and the dataset file's guidance.
    No qualifying setting: the table and report are written, then one InputError line."""
    plan = plan_tune(
        model,
        reference,
        out,
        scales,
        perturb_ratios,
        every,
        stop_ratios,
        num_samples,
        shard_size,
        steps,
        seed,
        workers,
        extractor,
        reference_source,
        max_precision_drop,
        max_confidence_drop,
        rarity,
        write_dataset,
        storage_options,
        preset,
        device,
        ray_address,
    )
    logger = run_logger()
    options = plan.storage_options
    for config in plan.configs:  # the model loads here first: a spec that does not load fails before the reference is built
        run_synthesis(config)
    ensure_reference(plan.reference, plan.extractor, plan.reference_source, options, plan.configs[0].execution.device)
    for config in plan.configs:
        score_run(config.output.out, plan.reference, storage_options=options, workers=config.execution.workers, ray_address=config.execution.ray_address)
    title = f"minority-synth tune: {plan.model}"
    result = report_runs([c.output.out for c in plan.configs], plan.reference, plan.out, title=title, storage_options=options, artifact_prefix="tune")
    by_name = guidance_rows(plan.settings)
    rows = [{**row, **by_name[row["name"]]} for row in result["table"]]
    assessed = assess(rows, plan.rarity, plan.bounds)
    try:
        chosen, refusal = choose(assessed, plan.rarity, plan.bounds), None
    except InputError as exc:
        chosen, refusal = None, exc
    verdict = _verdict(chosen, refusal, plan)
    store = ShardStore(plan.out, resolve_storage_options(options))
    table_url = _write_json(
        store,
        {
            "model": plan.model,
            "rarity": plan.rarity,
            "bounds": plan.bounds,
            "num_samples": num_samples,
            "seed": seed,
            "arms": assessed,
            "chosen": chosen and chosen["name"],
            "verdict": verdict,
        },
    )
    page = _write_page(store, title, assessed, plan, chosen, verdict)
    logger.info("tune: %s (arm table %s, report %s)", verdict, table_url, page)
    if refusal is not None:
        raise InputError(f"{refusal} (every arm's numbers: {table_url})")
    setting = by_name[chosen["name"]]
    guidance = {k: setting[k] for k in ("scale", "perturb_ratio", "every", "stop_ratio")}
    steps_used = plan.configs[0].sampler.steps
    preset_url = _write_preset(store, plan, guidance, steps_used, verdict)
    if plan.dataset_file:
        _write_dataset(plan.dataset_file, guidance)
        logger.info("wrote the chosen guidance into %s", plan.dataset_file)
    command = (
        f"minority-synth synthesize --model {plan.model} --steps {steps_used} --guidance-scale {guidance['scale']:g} "
        f"--perturb-ratio {guidance['perturb_ratio']:g} --every {guidance['every']} --stop-ratio {guidance['stop_ratio']:g} --num-samples N --out OUT"
    )
    return {
        "chosen": chosen["name"],
        "guidance": guidance,
        "steps": steps_used,
        "gain": chosen["gain"],
        "verdict": verdict,
        "preset": preset_url,
        "dataset": plan.dataset_file,
        "table": table_url,
        "report": page,
        "command": command,
    }


tune = flow(name="tune-guidance", flow_run_name=_named("tune", "out"), task_runner=LANE_RUNNER, log_prints=True)(tune_guidance)


def _verdict(chosen: dict | None, refusal: Exception | None, plan: TunePlan) -> str:
    if chosen is None:
        return f"No setting chosen: {refusal}"
    drops = ", ".join(f"{m} drop {chosen[f'{m}_drop']:.3f} ≤ {d:g}" for m, d in plan.bounds.items())
    return f"Chosen: {chosen['name']} (w={chosen['scale']:g}): {plan.rarity} +{chosen['gain']:.3f} over standard sampling, {drops}"


def _write_json(store: ShardStore, data: dict[str, Any]) -> str:
    path = posixpath.join(store.root, TABLE_NAME)
    write_atomic(store.fs, path, (json.dumps(data, indent=2, default=float) + "\n").encode())
    return store.fs.unstrip_protocol(path)


def _write_page(store: ShardStore, title: str, assessed: list[dict], plan: TunePlan, chosen: dict | None, verdict: str) -> str:
    """OUT/report/tune.html and tradeoff.png (beside the arms' report, index.html), and the Prefect artifacts."""
    png = tradeoff_png(assessed, plan.rarity, plan.bounds, chosen and chosen["name"])
    notes = [
        f"{len(plan.settings)} arms of {plan.configs[0].output.num_samples} samples each, seed {plan.configs[0].output.seed} "
        f"(the same starting noise in every arm), {plan.configs[0].sampler.steps} steps; features {plan.extractor}."
    ]
    base = posixpath.join(store.root, "report")
    write_atomic(store.fs, posixpath.join(base, "tradeoff.png"), png)
    page = posixpath.join(base, "tune.html")
    write_atomic(store.fs, page, tune_page(title, assessed, plan.rarity, plan.bounds, verdict, "tradeoff.png", notes).encode())
    markdown = tune_markdown(title, assessed, verdict) + f"\n\n![trade-off](data:image/png;base64,{base64.b64encode(png).decode()})\n"
    artifact(create_markdown_artifact, markdown, key="tune-tradeoff", description=title)
    artifact(create_table_artifact, [{k: v for k, v in r.items() if not isinstance(v, dict | list)} for r in assessed], key="tune-arms", description=title)
    return store.fs.unstrip_protocol(page)


def _write_preset(store: ShardStore, plan: TunePlan, guidance: dict, steps: int, verdict: str) -> str:
    """OUT/preset.yaml: the chosen setting as a dataset file's `model`, `sampler` and `guidance` keys."""
    body = yaml.safe_dump({"model": plan.model, "sampler": {"steps": steps}, "guidance": guidance}, sort_keys=False)
    header = f"# minority-synth tune: {verdict}\n# arm table: {TABLE_NAME}; paste these keys into a dataset file, or pass them to synthesize\n"
    path = posixpath.join(store.root, PRESET_NAME)
    write_atomic(store.fs, path, (header + body).encode())
    return store.fs.unstrip_protocol(path)


def _write_dataset(path: str, guidance: dict) -> None:
    """The dataset file with its guidance keys set, every other line as it was; checked to parse
    to the same data but those keys, and to validate, before it replaces the file atomically."""
    import fsspec

    from minority_core.config.datasets import DatasetEntry

    old_text = Path(path).read_text(encoding="utf-8")
    new_text = set_guidance(old_text, guidance)
    old, new = yaml.safe_load(old_text), yaml.safe_load(new_text)
    expected = {**old, "guidance": {**(old.get("guidance") or {}), **guidance}}
    if new != expected:
        raise RuntimeError(f"updating {path} would change more than its guidance keys: a bug in set_guidance")
    DatasetEntry(**new)
    write_atomic(fsspec.filesystem("file"), str(Path(path).resolve()), new_text.encode("utf-8"))
