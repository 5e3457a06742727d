"""Datasets as configuration: one YAML file per dataset in `deployments/datasets/`.

An entry names the model, the reference data and extractor, the output location, default
guidance and run sizes, and a schedule. Validated once, with errors that name the file and field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class GuidanceEntry(_Strict):
    guidance_scale: float | None = Field(default=None, ge=0)
    perturb_ratio: float | None = Field(default=None, gt=0, le=1)
    every: int | None = Field(default=None, ge=1)
    stop_ratio: float | None = Field(default=None, ge=-1, lt=1)
    scale_type: Literal["var", "fixed"] | None = None
    distance: Literal["l2", "lpips"] | None = None
    mc_samples: int | None = Field(default=None, ge=1)
    steps: int | None = Field(default=None, ge=2)
    sampler: Literal["ancestral", "ddim"] = "ancestral"
    class_labels: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)  # class-conditional models; None = uniform


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
    guidance: GuidanceEntry = GuidanceEntry()
    prompts: PromptsEntry | None = None
    run: RunEntry = RunEntry()
    schedule: ScheduleEntry = ScheduleEntry()
    tags: list[str] = []

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        from minority_core.models import parse_spec

        parse_spec(value)
        return value

    @model_validator(mode="after")
    def _prompts_match_model(self) -> DatasetEntry:
        text_model = self.model.startswith("latent:")
        if text_model and self.prompts is None:
            raise InputError("a latent: (text-to-image) model needs a prompts section (items or file)")
        if self.prompts is not None and not text_model:
            raise InputError("prompts apply to latent: (text-to-image) models only")
        return self

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
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"{path}: {problems}") from None
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
