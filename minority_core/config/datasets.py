"""Datasets as configuration: one YAML file per dataset in `deployments/datasets/`.

An entry names the model, the reference data and extractor, the output location, default
guidance and run sizes, and a schedule. Validated once, with errors that name the file and field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from minority_core.config.guidance import MinorityGuidance
from minority_core.config.synthesis import KNOBS, SynthesisConfig, describe_validation_error
from minority_core.errors import InputError, MissingFileError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = Path(os.environ.get("MINORITY_DATASETS_DIR", PROJECT_ROOT / "deployments" / "datasets"))
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceEntry(_Strict):
    source: str
    extractor: str | None = None
    url: str


class PromptsEntry(_Strict):
    """Text-to-image (latent:) datasets: the prompts, inline (`items`) or a file of one per line."""

    items: list[str] | None = Field(default=None, min_length=1)
    file: str | None = None
    cfg_scale: float | None = Field(default=None, ge=0)
    negative_prompt: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptsEntry:
        if (self.items is None) == (self.file is None):
            raise InputError("give the prompts as items (a list) or file (a path), exactly one of them")
        if self.file is not None and "://" in self.file:
            raise InputError(f"prompts file must be a local path (absolute, or relative to the project root), got the URL {self.file!r}")
        return self


class RunEntry(_Strict):
    num_samples: int = Field(default=512, gt=0)
    shard_size: int = Field(default=256, gt=0)
    workers: int = Field(default=2, ge=0)
    seed: int | None = Field(default=None, ge=0)  # None: derived from the run date, so scheduled runs differ
    device: str = "cpu"


class ScheduleEntry(_Strict):
    cron: str | None = None
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise InputError(f"cron must have 5 fields (minute hour day month weekday), got {value!r}")
        return value


class DatasetEntry(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: str
    preset: str | None = None
    reference: ReferenceEntry
    output: str
    sampler: dict[str, Any] = {}  # SamplerConfig fields (steps, sampler, method, class_labels, ...); omitted: the model's preset
    guidance: dict[str, Any] = {}  # MinorityGuidance fields (scale, perturb_ratio, every, ...); omitted: the model's preset
    prompts: PromptsEntry | None = None
    run: RunEntry = RunEntry()
    schedule: ScheduleEntry = ScheduleEntry()
    tags: list[str] = []

    @model_validator(mode="after")
    def _prompts_match_model(self) -> DatasetEntry:
        text_model = self.model.startswith("latent:")
        if text_model and self.prompts is None:
            raise InputError("a latent: (text-to-image) model needs a prompts section (items or file)")
        if self.prompts is not None and not text_model:
            raise InputError("prompts apply to latent: (text-to-image) models only")
        return self

    @field_validator("guidance")
    @classmethod
    def _guidance_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Each guidance setting on its own, so an error names its field (`guidance.every: …`)."""
        known = {f.name for f in dataclasses.fields(MinorityGuidance)}
        problems = []
        for key, item in value.items():
            if key not in known:
                problems.append(f"guidance.{key}: unknown setting; known are {', '.join(sorted(known))}")
                continue
            try:
                MinorityGuidance(**{"scale": 1.0, key: item})
            except InputError as exc:
                problems.append(f"guidance.{key}: {exc}")
        if problems:
            raise InputError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _settings_valid(self) -> DatasetEntry:
        """The sampler and guidance settings are checked by the same code as any run's, now."""
        self.synthesis_config(read_prompts=False)
        return self

    def synthesis_config(self, read_prompts: bool = True, **overrides: Any) -> SynthesisConfig:
        """The SynthesisConfig of one run of this dataset: its settings as flat options, with the
        given flat `overrides` (None = not given) on top. Default output: OUTPUT/<name>-<UTC time>;
        default seed: the entry's, else today's date; a run with w = 0 is the `standard` arm."""
        now = dt.datetime.now(dt.UTC)
        run = self.run.model_dump()
        seed = run.pop("seed")
        flat: dict[str, Any] = dict(
            model=self.model, preset=self.preset, **self.sampler, **_flat_guidance(self.guidance), **run,
            out=f"{self.output_url}/{self.name}-{now:%Y%m%d-%H%M%S}", seed=seed if seed is not None else int(f"{now:%Y%m%d}"),
            extractor=self.reference.extractor, reference=self.reference_url, reference_source=self.reference_source,
        )
        if self.prompts is not None:
            flat.update(self.prompt_fields() if read_prompts else {"prompts": ["(read when a run starts)"]})
        flat.update({k: v for k, v in overrides.items() if v is not None})
        config = SynthesisConfig.from_options(**flat)
        return config.replace(arm="standard") if config.sampler.method == "standard" and "arm" not in overrides else config

    def prompt_fields(self) -> dict:
        """SynthesisConfig's text fields (empty for pixel models); a prompts file is read now,
        relative to the project root, so a run records the prompts themselves."""
        if self.prompts is None:
            return {}
        from minority_core.models.latent import read_prompts_file

        items = self.prompts.items if self.prompts.items is not None else read_prompts_file(self.resolve(self.prompts.file))
        return {"prompts": items, "cfg_scale": self.prompts.cfg_scale, "negative_prompt": self.prompts.negative_prompt}

    def resolve(self, path: str) -> str:
        """URLs stay as they are; relative local paths are taken from the project root."""
        return path if "://" in path or path.startswith("/") else str(PROJECT_ROOT / path)

    @property
    def reference_url(self) -> str:
        return self.resolve(self.reference.url)

    @property
    def output_url(self) -> str:
        return self.resolve(self.output)

    @property
    def reference_source(self) -> str:
        source = self.reference.source
        return source if source.startswith("bundled:") else self.resolve(source)

    def deployment_tags(self) -> list[str]:
        return [f"dataset:{self.name}", f"model:{self.model}", *self.tags]


def load_dataset_file(path: str | Path) -> DatasetEntry:
    """Parse and validate one dataset file; every problem becomes one line naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"dataset file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a dataset file must be a mapping with name, model, reference, output")
    try:
        entry = DatasetEntry(**data)
    except ValidationError as exc:
        raise InputError(f"{path}: {describe_validation_error(exc).removeprefix('invalid config: ')}") from None
    if entry.name != path.stem:
        raise InputError(f"{path}: name {entry.name!r} must match the file name {path.stem!r}")
    return entry


def list_datasets(directory: Path = DATASETS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def get_dataset(name: str, directory: Path = DATASETS_DIR) -> DatasetEntry:
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_datasets(directory)) or "none"
        raise InputError(f"unknown dataset {name!r}: known datasets are {known} (files in {directory})")
    return load_dataset_file(path)


def _flat_guidance(guidance: dict[str, Any]) -> dict[str, Any]:
    """A dataset file's guidance section (MinorityGuidance's field names) as flat options."""
    flat_of = {k.path[-1]: k.flat for k in KNOBS if k.path[:2] == ("sampler", "guidance")}
    unknown = sorted(set(guidance) - set(flat_of))
    if unknown:
        raise InputError(f"unknown guidance setting(s) {', '.join(unknown)}: known are {', '.join(flat_of)}")
    return {flat_of[k]: v for k, v in guidance.items()}
