"""The settings a reader needs to know what each arm is: model, sampler, guidance and seed, read
from the run's config as its manifest records it (`SynthesisConfig.output_identity`).

Only what is set is shown: guidance knobs only for a guided run, a baseline's knobs only for that
baseline, prompts only for text-to-image runs. Unknown keys are ignored, missing ones left out, so
manifests of older versions still give what they hold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minority_core.report.format import MISSING

# (label, path into the config, when it applies): the rows of the settings table, in reading order.
_Rule = tuple[str, tuple[str, ...], Callable[[dict[str, Any]], bool]]


def _always(config: dict[str, Any]) -> bool:
    return True


def _guided(config: dict[str, Any]) -> bool:
    return isinstance(_sampler(config).get("guidance"), dict)


def _method(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda config: _sampler(config).get("method") == name


def _ddim(config: dict[str, Any]) -> bool:
    return _sampler(config).get("sampler") == "ddim"


def _prompted(config: dict[str, Any]) -> bool:
    return bool(_sampler(config).get("prompts"))


RULES: tuple[_Rule, ...] = (
    ("Model", ("model",), _always),
    ("Preset", ("preset",), _always),
    ("Upsampler", ("upsampler",), _always),
    ("Method", ("sampler", "method"), _always),
    ("Sampler", ("sampler", "sampler"), _always),
    ("Steps", ("sampler", "steps"), _always),
    ("DDIM η", ("sampler", "eta"), _ddim),
    ("Guidance w", ("sampler", "guidance", "scale"), _guided),
    ("Perturb ratio", ("sampler", "guidance", "perturb_ratio"), _guided),
    ("Guide every", ("sampler", "guidance", "every"), _guided),
    ("Stop ratio", ("sampler", "guidance", "stop_ratio"), _guided),
    ("Distance", ("sampler", "guidance", "distance"), _guided),
    ("Scale type", ("sampler", "guidance", "scale_type"), _guided),
    ("MC samples", ("sampler", "guidance", "mc_samples"), _guided),
    ("Boost γ", ("sampler", "gamma"), _method("boost-and-skip")),
    ("Skipped steps", ("sampler", "skip"), _method("boost-and-skip")),
    ("Classifier", ("sampler", "classifier"), _method("minority-classifier")),
    ("Classifier scale", ("sampler", "classifier_scale"), _method("minority-classifier")),
    ("Class labels", ("sampler", "class_labels"), _always),
    ("Prompts", ("sampler", "prompts"), _prompted),
    ("CFG scale", ("sampler", "cfg_scale"), _prompted),
    ("Negative prompt", ("sampler", "negative_prompt"), _prompted),
    ("Seed", ("seed",), _always),
    ("Samples", ("num_samples",), _always),
    ("Shard size", ("shard_size",), _always),
    ("Extractor", ("extractor",), _always),
)
MAX_LISTED = 4  # class labels / prompts listed before "… (n in all)"


def run_settings(config: dict[str, Any] | None) -> dict[str, str]:
    """Label → printed value of every setting the config holds (empty for no config)."""
    if not config:
        return {}
    settings = {}
    for label, path, applies in RULES:
        value = _get(config, path)
        if value is not None and value != "" and applies(config):
            settings[label] = _text(value)
    if not _guided(config) and _sampler(config):
        settings["Guidance w"] = "none"  # the knob that tells a baseline from a guided arm, so always shown
    return {label: settings[label] for label, _, _ in RULES if label in settings}


def settings_table(configs: list[dict[str, Any] | None]) -> list[tuple[str, list[str]]]:
    """Rows (label, one value per arm) over every setting any arm has; '—' where an arm lacks it."""
    per_arm = [run_settings(config) for config in configs]
    labels = [label for label, _, _ in RULES if any(label in s for s in per_arm)]
    return [(label, [s.get(label, MISSING) for s in per_arm]) for label in labels]


def settings_line(config: dict[str, Any] | None) -> str:
    """The settings on one line (the Prefect markdown): 'Method self-guided, Steps 250, Seed 0, …'."""
    return ", ".join(f"{label} {value}" for label, value in run_settings(config).items())


def _sampler(config: dict[str, Any]) -> dict[str, Any]:
    sampler = config.get("sampler")
    return sampler if isinstance(sampler, dict) else {}


def _get(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = config
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    """Numbers as written (3.0 → '3', 0.4 → '0.4'), lists shortened, everything else as str."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_text(v) for v in value[:MAX_LISTED])
        return shown if len(value) <= MAX_LISTED else f"{shown}, … ({len(value)} in all)"
    return str(value)
