"""Datasets as configuration: one YAML file per dataset in a datasets folder.

An entry names the model, the reference data and extractor, the output location, default
guidance and run sizes, and a schedule. `load_dataset_file` checks the schema; `check_dataset`
then checks what a run will need (paths, the model's config, the extractor's weights, the cron),
before any work and offline, with one-line errors that name the file, the field and the fix.

The datasets folder is `--datasets-dir`, else `$MINORITY_DATASETS_DIR`, else the project's own
`deployments/datasets`. Relative paths in a file are taken from the project root for files inside the
project, else from the file's own folder, so a datasets folder kept elsewhere is self-contained.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from minority_core.config.guidance import MinorityGuidance
from minority_core.config.synthesis import KNOBS, Count, SynthesisConfig, describe_validation_error
from minority_core.errors import InputError, MissingFileError, UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = PROJECT_ROOT / "deployments" / "datasets"  # the default folder: the project's own (see datasets_dir)
DATASETS_ENV = "MINORITY_DATASETS_DIR"
OFFLINE_EXTRACTOR = "pixels"  # needs no weights: what a dataset scores with when its default extractor cannot load
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def stays_inside(path: str) -> str:
    """A relative local path must not climb out of the folder relative paths start at (`../..`
    reaches /etc or another project's data); URLs and absolute paths are explicit and stay as given."""
    if "://" in path or os.path.expanduser(path).startswith("/"):
        return path
    if os.path.normpath(path).split(os.sep)[0] == "..":
        raise InputError(f"{path!r} climbs out of the folder relative paths start at (the project root, or the dataset file's own folder "
                         "outside the project): keep it inside that folder, or give an absolute path")
    return path


LocalPath = Annotated[str, AfterValidator(stays_inside)]


class ReferenceEntry(_Strict):
    source: LocalPath
    extractor: str | None = None  # None: the model's default, or OFFLINE_EXTRACTOR when its weights are absent
    url: LocalPath


class PromptsEntry(_Strict):
    """Text-to-image (latent:) datasets: the prompts, inline (`items`) or a file of one per line."""

    items: list[str] | None = Field(default=None, min_length=1)
    file: LocalPath | None = None
    cfg_scale: float | None = Field(default=None, ge=0)
    negative_prompt: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptsEntry:
        if (self.items is None) == (self.file is None):
            raise InputError("give the prompts as items (a list) or file (a path), exactly one of them")
        if self.file is not None and "://" in self.file:
            raise InputError(f"prompts file must be a local path (absolute, or relative like the file's other paths), got the URL {self.file!r}")
        return self


class RunEntry(_Strict):
    num_samples: Count = Field(default=512, gt=0)
    shard_size: Count = Field(default=256, gt=0)
    workers: Count = Field(default=2, ge=0)
    seed: Count | None = Field(default=None, ge=0)  # None: drawn from the flow run (flows/dataset_runs.py), so runs differ
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
    output: LocalPath
    sampler: dict[str, Any] = {}  # SamplerConfig fields (steps, sampler, method, class_labels, ...); omitted: the model's preset
    guidance: dict[str, Any] = {}  # MinorityGuidance fields (scale, perturb_ratio, every, ...); omitted: the model's preset
    prompts: PromptsEntry | None = None
    run: RunEntry = RunEntry()
    schedule: ScheduleEntry = ScheduleEntry()
    baseline: bool = False  # also run a standard arm (w = 0, same seed and sizes) beside the guided one: `baseline_config`
    tags: list[str] = []
    _base: Path = PrivateAttr(default=PROJECT_ROOT)  # where relative paths start (set by load_dataset_file)
    _file: Path | None = PrivateAttr(default=None)  # the file it was read from, for messages

    @field_validator("model")
    @classmethod
    def _model_path_inside(cls, value: str) -> str:
        scheme, _, target = value.partition(":")
        return value if scheme == "bundled" else f"{scheme}:{stays_inside(target)}"

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
        config = self.synthesis_config(read_prompts=False)
        if self.baseline and config.sampler.method == "standard":
            raise InputError("baseline: the dataset's own arm is already standard sampling (w = 0): drop baseline, or guide it (guidance.scale > 0)")
        return self

    def synthesis_config(self, read_prompts: bool = True, **overrides: Any) -> SynthesisConfig:
        """The SynthesisConfig of one run of this dataset: its settings as flat options, with the
        given flat `overrides` (None = not given) on top. Default output: OUTPUT/<name>-<UTC time>;
        default seed: the entry's, else today's date; a run with w = 0 is the `standard` arm."""
        now = dt.datetime.now(dt.UTC)
        run = self.run.model_dump()
        seed = run.pop("seed")
        flat: dict[str, Any] = dict(
            model=self.model_spec, preset=self.preset, **self.sampler, **_flat_guidance(self.guidance), **run,
            out=f"{self.output_url}/{self.name}-{now:%Y%m%d-%H%M%S}", seed=seed if seed is not None else int(f"{now:%Y%m%d}"),
            extractor=self.reference.extractor, reference=self.reference_url, reference_source=self.reference_source,
        )
        if self.prompts is not None:
            flat.update(self.prompt_fields() if read_prompts else {"prompts": ["(read when a run starts)"]})
        flat.update({k: v for k, v in overrides.items() if v is not None})
        config = SynthesisConfig.from_options(**flat)
        return config.replace(arm="standard") if config.sampler.method == "standard" and "arm" not in overrides else config

    def baseline_config(self, guided: SynthesisConfig) -> SynthesisConfig:
        """The standard arm beside `guided` (this dataset's run config): the same model, seed,
        sizes, sampler and steps, without guidance (w = 0), named `standard`, written beside it at
        `<guided out>-standard`; so a report compares the arms sample for sample."""
        return guided.replace(method="standard", arm="standard", out=f"{guided.output.out.rstrip('/')}-standard")

    def prompt_fields(self) -> dict:
        """SynthesisConfig's text fields (empty for pixel models); a prompts file is read now,
        relative like the file's other paths, so a run records the prompts themselves."""
        if self.prompts is None:
            return {}
        from minority_core.models.latent import read_prompts_file

        items = self.prompts.items if self.prompts.items is not None else read_prompts_file(self.resolve(self.prompts.file))
        return {"prompts": items, "cfg_scale": self.prompts.cfg_scale, "negative_prompt": self.prompts.negative_prompt}

    def resolve(self, path: str, key: str = "path") -> str:
        """URLs and absolute paths stay as they are; relative local paths start at the file's base
        (the project root for files inside the project, else the file's folder) and stay inside it."""
        if "://" in path:
            return path
        try:
            stays_inside(path)
        except InputError as exc:
            raise InputError(f"{key}: {exc}") from None
        path = os.path.expanduser(path)
        return path if path.startswith("/") else str(self._base / path)

    @property
    def model_spec(self) -> str:
        """The model spec with a relative local path resolved like the other paths; a hub id
        (`diffusers:owner/name` with no such folder) stays as given."""
        scheme, _, target = self.model.partition(":")
        if scheme == "bundled":
            return self.model
        local = self.resolve(target)
        if scheme == "diffusers" and not Path(local).exists() and _hub_id(target):
            return self.model
        return f"{scheme}:{local}"

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


# --------------------------------------------------------------------------- files and folders


def datasets_dir(given: str | Path | None = None) -> Path:
    """The folder of dataset files: `given` (`--datasets-dir`), else $MINORITY_DATASETS_DIR, else
    the project's deployments/datasets; read at each call, so a worker's environment counts."""
    if given is not None or os.environ.get(DATASETS_ENV):
        how = "--datasets-dir" if given is not None else f"${DATASETS_ENV}"
        folder = Path(given if given is not None else os.environ[DATASETS_ENV]).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"datasets folder {folder} (from {how}) does not exist: point {how} at the folder holding your <name>.yaml dataset files")
        return folder
    if not DATASETS_DIR.is_dir():
        raise MissingFileError(f"no datasets folder: {DATASETS_DIR} does not exist: "
                               f"pass --datasets-dir DIR or set {DATASETS_ENV}=DIR, a folder of <name>.yaml dataset files")
    return DATASETS_DIR


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1}): keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_dataset_file(path: str | Path) -> DatasetEntry:
    """Parse and validate one dataset file's schema; every problem becomes one line naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"dataset file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
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
    entry._base, entry._file = _relative_base(path), path
    return entry


def list_datasets(directory: str | Path | None = None) -> list[str]:
    return sorted(p.stem for p in datasets_dir(directory).glob("*.yaml"))


def dataset_path(name: str, directory: str | Path | None = None) -> Path:
    """The file of dataset `name` in the datasets folder; an unknown name lists the known ones."""
    folder = datasets_dir(directory)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_datasets(folder)) or "none"
        raise InputError(f"unknown dataset {name!r}: known datasets are {known} (files in {folder})")
    return path


def get_dataset(name: str, directory: str | Path | None = None, extra_checks: Sequence[Callable[[DatasetEntry], list[str]]] = ()) -> DatasetEntry:
    """Dataset `name`, schema and run requirements checked (`check_dataset`); what a run uses.
    Each warning (an extractor fallback) is logged."""
    checked = check_dataset(load_dataset_file(dataset_path(name, directory)), extra_checks)
    for warning in checked.warnings:
        log.warning("dataset %s: %s", name, warning)
    return checked.entry


def _relative_base(path: Path) -> Path:
    """Where a file's relative paths start: the project root for a file of this checkout; the
    working directory for a file shipped in an installed wheel (never site-packages, which is
    no place for runs); else the file's own folder."""
    path = path.resolve()
    if not path.is_relative_to(PROJECT_ROOT):
        return path.parent
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def _hub_id(target: str) -> bool:
    """`owner/name`, as the diffusers loader tells a hub id from a path."""
    return not target.startswith((".", "/", "~")) and target.count("/") == 1


def _flat_guidance(guidance: dict[str, Any]) -> dict[str, Any]:
    """A dataset file's guidance section (MinorityGuidance's field names) as flat options."""
    flat_of = {k.path[-1]: k.flat for k in KNOBS if k.path[:2] == ("sampler", "guidance")}
    unknown = sorted(set(guidance) - set(flat_of))
    if unknown:
        raise InputError(f"unknown guidance setting(s) {', '.join(unknown)}: known are {', '.join(flat_of)}")
    return {flat_of[k]: v for k, v in guidance.items()}


# --------------------------------------------------------------------------- what a run will need


@dataclasses.dataclass(frozen=True)
class CheckedDataset:
    """A dataset whose run requirements were checked: the entry to run (its extractor filled in,
    possibly the offline fallback) and the warnings to show."""

    entry: DatasetEntry
    warnings: list[str]


def check_dataset(entry: DatasetEntry, extra_checks: Sequence[Callable[[DatasetEntry], list[str]]] = ()) -> CheckedDataset:
    """Everything a run of `entry` needs, checked offline before any work: the model's files and
    config, the reference source, the prompts file, the extractor and its weights, plus the
    `extra_checks` of the layers above (the cron, as Prefect parses it: deployments/specs.py).
    All problems are one InputError line (`FILE: field: problem: fix; …`); an unpinned extractor
    without weights falls back to OFFLINE_EXTRACTOR with a warning."""
    where = entry._file or f"dataset {entry.name}"
    extractor, extractor_problems, warnings = _choose_extractor(entry)
    extra = [problem for check in extra_checks for problem in check(entry)]
    problems = [*_model_problems(entry), *_labels_problems(entry), *_source_problems(entry), *_prompts_problems(entry), *extra, *extractor_problems]
    if problems:
        raise InputError(f"{where}: {'; '.join(problems)}")
    checked = entry.model_copy(update={"reference": entry.reference.model_copy(update={"extractor": extractor})})
    return CheckedDataset(checked, warnings)


def _model_problems(entry: DatasetEntry) -> list[str]:
    """The model's files exist and its config (not its weights) loads, as the loader would read them."""
    scheme, _, target = entry.model.partition(":")
    spec = entry.model_spec
    path = Path(spec.partition(":")[2])
    if scheme == "bundled":
        return _bundled_problems(target)
    if scheme == "adm":
        return _adm_problems(path, entry)
    if scheme == "latent":
        return _latent_problems(path)
    if spec == entry.model and _hub_id(target):  # no such folder: a hub id
        return _hub_problems(target, entry)
    return _diffusers_problems(path)


def _bundled_problems(target: str) -> list[str]:
    from minority_core.models import BUNDLED_DIR

    config = BUNDLED_DIR / target / "unet" / "config.json"
    return [] if config.is_file() else [f"model: the bundled {target} model is missing ({config}): run `minority-synth train-demo` to rebuild it"]


def _adm_problems(path: Path, entry: DatasetEntry) -> list[str]:
    from minority_core.config.presets import ADM_PRESETS

    problems = [] if path.is_file() else [f"model: no ADM checkpoint at {path}: put the .pt file there ({_relative_hint(entry)})"]
    if entry.preset is None:
        problems.append(f"preset: adm: models need one to describe their architecture: add preset: with one of {', '.join(ADM_PRESETS)}")
    return problems


def _diffusers_problems(folder: Path) -> list[str]:
    """A save_pretrained folder: the UNet's config.json parses, a scheduler config gives a noise schedule, weights are there."""
    from minority_core.models.diffusers_unet import _find_scheduler_config, schedule_from_scheduler_config

    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        return [f"model: {folder} {what}: give the folder written by save_pretrained (config.json or unet/config.json, and scheduler/)"]
    unet = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    problem = _json_problem(unet / "config.json", "model")
    if problem:
        return [problem]
    try:
        scheduler = _find_scheduler_config(folder)
        if scheduler is None:
            return [f"model: no scheduler config beside the UNet in {folder}: add scheduler/scheduler_config.json (DDPMScheduler.save_pretrained)"]
        schedule_from_scheduler_config(scheduler)
    except (ValueError, UserError) as exc:
        return [f"model: the scheduler config in {folder} does not load ({_first_line(exc)})"]
    if not any(unet.glob("*.safetensors")) and not any(unet.glob("*.bin")):
        return [f"model: no weights in {unet} (diffusion_pytorch_model.safetensors or .bin): save the UNet with save_pretrained there"]
    return []


def _hub_problems(repo_id: str, entry: DatasetEntry) -> list[str]:
    """A hub id works offline only from the local Hugging Face cache (the loader reads unet/config.json)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "unet/config.json"), str):
        return []
    return [f"model: diffusers:{repo_id} is neither a folder ({entry.resolve(repo_id)} does not exist) nor in the Hugging Face cache: "
            f"give an existing folder, or download it first (huggingface-cli download {repo_id})"]


def _latent_problems(root: Path) -> list[str]:
    """A Stable-Diffusion-layout folder: model_index.json parses, every part's folder is there, the scheduler loads."""
    from minority_core.models.diffusers_unet import schedule_from_scheduler_config
    from minority_core.models.latent import PARTS

    if not root.is_dir():
        return [f"model: no pipeline folder at {root}: give the folder with model_index.json, {', '.join(p + '/' for p in PARTS)}"]
    problem = _json_problem(root / "model_index.json", "model")
    missing = [p + "/" for p in PARTS if not (root / p).is_dir()]
    if problem or missing:
        return [problem or f"model: the pipeline in {root} lacks {', '.join(missing)}: copy the whole pipeline folder"]
    problem = _json_problem(root / "scheduler" / "scheduler_config.json", "model")
    if problem:
        return [problem]
    try:
        schedule_from_scheduler_config(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    except (ValueError, UserError) as exc:
        return [f"model: the scheduler config in {root} does not load ({_first_line(exc)})"]
    return []


def _json_problem(path: Path, field: str) -> str | None:
    if not path.is_file():
        return f"{field}: {path} does not exist: give the folder written by save_pretrained"
    try:
        if isinstance(json.loads(path.read_text()), dict):
            return None
    except (ValueError, UnicodeDecodeError):
        pass
    return f"{field}: {path} is not a JSON object: re-save the model with save_pretrained"


def _labels_problems(entry: DatasetEntry) -> list[str]:
    """sampler.class_labels against the classes the model's config declares (none: unconditional)."""
    from minority_core.config.resources import check_class_labels

    if "class_labels" not in entry.sampler:
        return []
    try:
        check_class_labels(entry.model_spec, entry.synthesis_config(read_prompts=False).sampler.class_labels)
    except InputError as exc:
        return [f"sampler.class_labels: {_first_line(exc)}"]
    return []


def _source_problems(entry: DatasetEntry) -> list[str]:
    """The real data a reference is built from: bundled:digits, or an existing local folder or file. Its
    contents are read when the reference is built (they may still be arriving), URLs too (credentials
    may not be here)."""
    source = entry.reference.source
    if source.startswith("bundled:"):
        return [] if source == "bundled:digits" else [f"reference.source: unknown bundled data {source!r}: use bundled:digits, an image folder or Parquet"]
    if "://" in source:
        return []
    path = Path(entry.reference_source)
    if not path.exists():
        return [f"reference.source: {path} does not exist: give the folder of real images or the Parquet file/folder ({_relative_hint(entry)})"]
    return []


def _prompts_problems(entry: DatasetEntry) -> list[str]:
    try:
        entry.prompt_fields()
    except UserError as exc:
        return [f"prompts.file: {_first_line(exc)}"]
    return []


def _choose_extractor(entry: DatasetEntry) -> tuple[str, list[str], list[str]]:
    """(extractor to score with, problems, warnings): the pinned one must exist and have its
    weights; the model's default falls back to OFFLINE_EXTRACTOR when its weights are absent."""
    from minority_core.config.presets import preset_for
    from minority_core.metrics.features.registry import extractor_info

    pinned = entry.reference.extractor
    name = pinned or preset_for(entry.model, entry.preset).extractor
    try:
        info = extractor_info(name)
    except InputError as exc:
        return name, [f"reference.extractor: {_first_line(exc)}"], []
    if info.weights_present:
        return name, [], []
    if pinned:
        return name, [f"reference.extractor: {name} needs its weights at {info.weights}, which is not there (see `minority-synth doctor`): "
                      f"put the file there, or choose another extractor ({OFFLINE_EXTRACTOR} needs no weights)"], []
    return OFFLINE_EXTRACTOR, [], [f"reference.extractor: the model's default extractor {name} has no weights at {info.weights}; scoring "
                                  f"with {OFFLINE_EXTRACTOR} instead (works offline): put the weights there, or pin reference.extractor"]


def _relative_hint(entry: DatasetEntry) -> str:
    return f"relative paths start at {entry._base}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
