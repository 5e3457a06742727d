"""`minority-synth`: the command line. Bad input exits with code 2 and one line naming the problem."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from minority_core.errors import InputError
from minority_synth.env import apply_defaults

apply_defaults()  # before prefect/ray/faiss are imported



class CliError(click.ClickException):
    exit_code = 2


def friendly_errors(fn):
    """A `UserError` (bad input, storage, data) becomes `error: <one line>` and exit code 2;
    anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from minority_core.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            text = str(exc).strip()
            raise CliError(text.splitlines()[0] if text else type(exc).__name__) from None

    return wrapper


def knob_options(sections: tuple[str, ...], include: tuple[str, ...] = (), **defaults):
    """Click options generated from the config's knobs (minority_core.config.KNOBS) of `sections`
    (plus the knobs named in `include`): one declaration serves the schema, the Python API and the
    CLI. Unset options are None (the schema or the model's preset decides); `defaults` gives some
    a command's own default."""
    from minority_core.config import KNOBS

    def decorate(fn):
        chosen = [k for k in KNOBS if (k.path[0] in sections or k.flat in include) and k.base_type is not None]
        for knob in reversed(chosen):
            fn = click.option(*_knob_decls(knob), knob.flat, **_knob_kwargs(knob, defaults))(fn)
        return fn

    return decorate


def _knob_decls(knob) -> tuple[str, ...]:
    if knob.base_type is bool and knob.flat != "overwrite":
        return (f"--{knob.cli}/--no-{knob.cli}",)
    return (f"--{knob.cli}",)


def _knob_kwargs(knob, defaults: dict) -> dict:
    kwargs: dict = {"help": knob.help}
    preset_decides = knob.path[0] == "sampler"
    if knob.flat == "overwrite":
        return {**kwargs, "is_flag": True}
    if knob.repeated:
        kwargs.update(multiple=True, type=knob.base_type)
    elif knob.choices:
        kwargs["type"] = click.Choice(knob.choices)
    elif knob.base_type is not bool:
        kwargs["type"] = knob.base_type
    if knob.flat in defaults:
        kwargs.update(default=defaults[knob.flat], show_default=True)
    elif knob.default is None and knob.path[-1] in ("out", "num_samples"):
        kwargs["required"] = True
    elif not knob.repeated:
        kwargs["default"] = None
        if knob.default not in (None, "") and not preset_decides:
            kwargs["help"] += f"  [default: {knob.default}]"
        elif preset_decides and knob.flat != "class_labels":
            kwargs["help"] += f"  [default: the model's preset: {_preset_defaults(knob)}]"
    return kwargs


def _preset_defaults(knob) -> str:
    """A sampler knob's value in each preset (`bundled:digits 3.0, latent: 0.4, others 0.4`), so
    --help shows what a run really gets, not a generic default the preset overrides."""
    from minority_core.config.presets import DIGITS, GENERIC, LATENT

    def value(preset):
        node = preset.sampler
        for part in knob.path[1:]:
            node = getattr(node, part, None) if node is not None else None
        return "—" if node is None else node.value if hasattr(node, "value") else node

    shown = [(name, value(p)) for name, p in (("bundled:digits", DIGITS), ("latent:", LATENT), ("generic", GENERIC))]
    if len({v for _, v in shown}) == 1:
        return f"{shown[0][1]}; adm: the paper's"
    return ", ".join(f"{name} {v}" for name, v in shown) + "; adm: the paper's"


def config_from_cli(options: dict, prompts_file: str | None = None, storage_option: tuple[str, ...] = ()):
    """The SynthesisConfig of a command's generated options: repeated options as lists (empty =
    not given), `--prompts-file` read, local `--out` made absolute, credentials put in the
    environment of this process only."""
    from minority_core.config import SynthesisConfig

    given = {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in options.items()}
    given["prompts"] = read_prompts(given.get("prompts"), prompts_file)
    given["out"] = normalise_out(given["out"])
    plain = _storage(storage_option)
    return SynthesisConfig.from_options(**given, storage_options=plain or None)


def _storage_block() -> None:
    """Credentials from the Prefect block named by $MINORITY_STORAGE_BLOCK (aws-credentials/NAME or s3-bucket/NAME), if set."""
    from tasks.storage_blocks import STORAGE_BLOCK_ENV, use_storage_block

    if os.environ.get(STORAGE_BLOCK_ENV):
        prefect_api_url()  # the block lives on the server: say so in one line if none answers
        use_storage_block()


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str] | None:
    """`--prompt` values or the lines of `--prompts-file` (not both); None when neither is given."""
    if prompt and prompts_file:
        raise InputError("give --prompt or --prompts-file, not both")
    if not prompts_file:
        return prompt or None
    from minority_core.models.latent import read_prompts_file

    return read_prompts_file(prompts_file)


prompts_file_option = click.option("--prompts-file", type=click.Path(dir_okay=False), default=None, help="latent: models: prompts, one per line (UTF-8; blank lines skipped)")
def storage_option(fn):
    """A command's storage options: `--storage-option` for plain ones (argv is public: credentials
    are refused there) and `--storage-options-file` for credentials (docs/DESIGN.md §9)."""
    fn = click.option("--storage-options-file", type=click.Path(dir_okay=False), default=None, expose_value=False, callback=_keep_options_file,
                      help="JSON file of fsspec options with credentials, chmod 600; read here, handed to the workers only  "
                           "[default: $MINORITY_STORAGE_OPTIONS_FILE]")(fn)
    return click.option("--storage-option", "storage_option", multiple=True,
                        help="key=value fsspec option that is no credential (repeatable); credentials go in --storage-options-file")(fn)


def _keep_options_file(ctx, param, path: str | None) -> None:
    """The file's options, kept in this process's memory (never a flow parameter, never the environment)."""
    from minority_core.config.storage import keep_secret_options, read_options_file

    if path:
        try:
            keep_secret_options(read_options_file(path))
        except InputError as exc:
            raise CliError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="minority-synth", prog_name="minority-synth")
@click.pass_context
def main(ctx):
    """Synthesize minority (rare, low-density) samples with diffusion models, and score them.

    Self-guided minority guidance (Um & Ye, ECCV 2024): no classifier, only the diffusion model.
    """
    from minority_synth.supervise import SUPERVISED_COMMANDS, should_supervise, supervise

    if ctx.invoked_subcommand in SUPERVISED_COMMANDS and should_supervise(sys.argv):  # Ctrl-C/SIGTERM stop it and all it started
        ctx.exit(supervise(sys.argv))


@main.command()
@knob_options(("model", "sampler"), include=("num_samples", "seed", "arm", "device", "out"), num_samples=64)
@prompts_file_option
@friendly_errors
def sample(prompts_file, **options):
    """Sample in this process: writes OUT/grid.png and OUT/samples/shard-00000.parquet."""
    from minority_core.config.synthesis import check_device_available
    from minority_core.io import ShardStore
    from minority_core.io.images import grid_png, to_uint8_nhwc
    from minority_core.io.lease import Lease
    from minority_core.models import load_model
    from minority_core.runs.generate import check_class_labels
    from minority_core.runs.plan import ShardSpec, check_sample_out
    from minority_core.runs.worker import sample_shard

    config = config_from_cli(options, prompts_file)
    check_device_available(config.execution.device)  # sampled here, whatever --workers says
    out, n = config.output.out, config.output.num_samples
    store = ShardStore(out)
    check_sample_out(store)  # never into a synthesize run: its committed shard 0 would be overwritten
    loaded = load_model(config.model.spec, config.execution.device, **config.model.load_options())
    check_class_labels(loaded, config.sampler)  # before anything is written
    with Lease.acquire(store, "sample"):  # (checks OUT is writable first)
        images, table = sample_shard(loaded, config.sampler, ShardSpec(0, n, config.output.seed, 0), config.output.arm, config.execution.device)
        record = store.write_shard("samples", 0, table)
        (Path(out) / "grid.png").write_bytes(grid_png(to_uint8_nhwc(images)))
    click.echo(json.dumps({"samples": n, "parquet": store.url_of(record.path), "grid": str(Path(out) / "grid.png")}))


def one_shot(flow, body):
    """A one-shot command's callable: the flow (a recorded flow run) where a Prefect server is
    configured, else its plain body, so no temporary Prefect server starts (~15-20 s)."""
    from flows.runtime import prefect_configured

    return flow if prefect_configured() else body


def normalise_out(out: str) -> str:
    """Local paths become absolute (Ray workers may run in another working directory); an empty
    one is refused (it would mean the current directory)."""
    if not out or not out.strip():
        raise InputError("an output or run location is empty: give a folder or a URL (e.g. --out runs/my-run)")
    return out if "://" in out else str(Path(out).expanduser().resolve())


@main.command()
@knob_options(("model", "sampler", "output", "execution"))
@prompts_file_option
@storage_option
@friendly_errors
def synthesize(prompts_file, storage_option, **options):
    """Run the synthesis flow (Prefect + Ray + Parquet shards); rerunning the same command resumes."""
    config = config_from_cli(options, prompts_file, storage_option)
    from minority_core.config.resources import check_fits_here

    check_fits_here(config)  # workers against CPUs, the batch against memory, labels against the model: before Ray or Prefect starts
    from minority_core.runs.plan import resolve_out

    resolve_out(config.output.out, config.execution.workers)  # memory:// with Ray workers: one line before Prefect starts
    if config.execution.workers:  # before Prefect starts: a wrong address is one line in seconds
        from tasks.ray_address import check_ray_address

        check_ray_address(config.execution.ray_address or os.environ.get("RAY_ADDRESS"))
    from flows.synthesize import synthesize as flow

    click.echo(json.dumps(flow(config, progress=True), indent=2))


@main.command()
@click.option("--out", default="runs/demo", show_default=True, help="output folder or URL")
@click.option("--num-samples", type=int, default=512, show_default=True, help="per arm")
@click.option("--shard-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--guidance-scale", type=float, default=None, help="default: the bundled model's tuned w")
@click.option("--steps", type=int, default=None)
@friendly_errors
def demo(out, num_samples, shard_size, workers, seed, guidance_scale, steps):
    """The embedded default: bundled digits, standard vs minority-guided, scored, with an HTML report."""
    from flows.demo import demo as flow

    result = flow(normalise_out(out), num_samples=num_samples, shard_size=shard_size, workers=workers, seed=seed, guidance_scale=guidance_scale, steps=steps)
    rows = {row["arm"] if "arm" in row else row.get("name"): row for row in result["table"]}
    click.echo("")
    click.echo(f"report: {result['report']}")
    for name, row in rows.items():
        fields = ", ".join(f"{k} {_fmt(row.get(k))}" for k in ("rare_share", "avgknn_mean", "lof_mean", "confident_share", "precision", "recall") if k in row)
        click.echo(f"  {name}: {fields}")


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


@main.command("build-reference")
@click.option("--source", default="bundled:digits", show_default=True, help="bundled:digits, an image folder, or Parquet with an image column")
@click.option("--reference", required=True, help="where to write the reference set (folder or URL)")
@click.option("--extractor", default="demo-classifier", show_default=True)
@click.option("--index", type=click.Choice(["auto", "exact", "ivf"]), default="auto", show_default=True, help="kNN index: exact scans all; ivf prunes lists and is certified exact per query")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="rebuild a reference set already at --reference (runs scored against the old one then refuse to mix)")
@storage_option
@friendly_errors
def build_reference_cmd(source, reference, extractor, index, device, overwrite, storage_option):
    """Features of real data + precomputed kNN radii and LOF densities, saved once (a built set is
    refused unless --overwrite)."""
    from flows.scoring import build_reference, make_reference

    plain = _storage(storage_option)
    click.echo(json.dumps(one_shot(build_reference, make_reference)(source, normalise_out(reference), extractor=extractor, index=index, device=device,
                                                                    storage_options=plain, overwrite=overwrite), indent=2))


@main.command("score")
@click.option("--run", "run_url", required=True, help="a synthesize output (folder or URL)")
@click.option("--reference", required=True)
@click.option("--k", "k_avg", type=int, default=5, show_default=True, help="k of AvgkNN")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Ray actors that score shards in parallel, each loading the reference set once; 0 = in-process  [default: 2; 0 for memory://]")
@storage_option
@friendly_errors
def score_cmd(run_url, reference, k_avg, workers, storage_option):
    """AvgkNN, LOF and Rarity of every sample of a run (resumes: scored shards are skipped)."""
    from flows.scoring import score, score_run

    run = one_shot(score, score_run)
    click.echo(json.dumps(run(normalise_out(run_url), normalise_out(reference), k_avg=k_avg, storage_options=_storage(storage_option), workers=workers), indent=2))


@main.command("verify")
@click.option("--run", "run_url", required=True, help="a run (folder or URL)")
@click.option("--repair", is_flag=True, help="forget and delete the bad shards, so the next synthesize/score regenerates exactly those")
@click.option("--workers", type=int, default=4, show_default=True, help="shards read in parallel")
@storage_option
@friendly_errors
def verify_cmd(run_url, repair, workers, storage_option):
    """Read back every committed shard of a run and check size, sha256 and rows (resume only lists
    files). Exit 1 if a shard is bad and was not repaired."""
    from minority_core.runs.scoring import open_run
    from minority_core.runs.verify import verify_run

    store, manifest = open_run(normalise_out(run_url), _storage(storage_option), check=False)  # a record beyond the plan is one verify names
    result = verify_run(store, manifest, workers=workers, repair=repair)
    click.echo(json.dumps(result, indent=2))
    if result["bad"] and not result["repaired"]:
        raise SystemExit(1)


@main.command("filter")
@click.option("--run", "run_url", required=True)
@click.option("--metric", type=click.Choice(["avgknn", "lof", "rarity"]), default="avgknn", show_default=True)
@click.option("--top-q", type=float, default=None, help="keep this fraction of the rarest samples")
@click.option("--threshold", type=float, default=None, help="keep samples whose metric exceeds this")
@click.option("--name", default=None, help="selection name (default from the rule)")
@click.option("--per-prompt", is_flag=True, help="text-to-image runs: the top fraction of each prompt's samples (at least one each)")
@click.option("--in-support", is_flag=True, help="only samples inside the reference's support (most of the rarest are outside it)")
@click.option("--min-confidence", type=float, default=None,
              help="only samples the run's extractor classifies with max softmax ≥ this (demo-classifier runs)")
@storage_option
@friendly_errors
def filter_cmd(run_url, metric, top_q, threshold, name, per_prompt, in_support, min_confidence, storage_option):
    """Select the rarest samples: writes selections/<name>/shard-00000.parquet (run, ids, scores).
    A sample with a NaN score (Rarity out of support) is never selected; --top-q is a fraction
    of the samples that pass --in-support and --min-confidence."""
    from flows.scoring import filter_samples, select_samples
    from minority_core.runs.select import check_rule

    if top_q is None and threshold is None:
        top_q = 0.1
    check_rule(metric, top_q, threshold, per_prompt, min_confidence)  # before anything starts
    select = one_shot(filter_samples, select_samples)
    click.echo(json.dumps(select(normalise_out(run_url), metric=metric, top_q=top_q, threshold=threshold, name=name, storage_options=_storage(storage_option),
                                 per_prompt=per_prompt, in_support=in_support, min_confidence=min_confidence), indent=2))


@main.command("export")
@click.option("--run", "runs", multiple=True, required=True, help="a scored run (repeat to export several runs into one dataset)")
@click.option("--selection", default=None, help="a selection `filter` wrote (its --name, in every --run)  [default: every scored sample]")
@click.option("--out", required=True, help="an empty folder or URL for the dataset")
@click.option("--format", "fmt", type=click.Choice(["parquet", "imagefolder"]), default="parquet", show_default=True,
              help="parquet: data/*.parquet + a dataset card; imagefolder: train/<label>/*.png + metadata.jsonl")
@storage_option
@friendly_errors
def export_cmd(runs, selection, out, fmt, storage_option):
    """Copy a selection's images, labels/prompts, scores and provenance (run, seeds) into a dataset
    that `datasets.load_dataset(OUT)` loads."""
    from minority_core.io import ShardStore
    from minority_core.runs.export import export_runs
    from minority_core.runs.scoring import open_run

    options = _storage(storage_option)
    opened = [open_run(normalise_out(r), options) for r in runs]
    click.echo(json.dumps(export_runs(opened, ShardStore(normalise_out(out), options), selection=selection, fmt=fmt), indent=2))


@main.command("report")
@click.option("--run", "runs", multiple=True, required=True, help="a scored run (repeat for each arm)")
@click.option("--reference", required=True)
@click.option("--out", required=True, help="where report/index.html goes")
@click.option("--title", default="minority-synth report", show_default=True)
@storage_option
@friendly_errors
def report_cmd(runs, reference, out, title, storage_option):
    """One self-contained HTML report comparing runs, plus Prefect artifacts (with a server configured)."""
    from flows.scoring import report, report_runs

    result = one_shot(report, report_runs)([normalise_out(r) for r in runs], normalise_out(reference), normalise_out(out), title=title, storage_options=_storage(storage_option))
    click.echo(result["report"])


@main.command()
def doctor():
    """Which weights are present (AlexNet, Inception, ADM, bundled) and what each unlocks."""
    from minority_core.doctor import doctor_report, format_report

    click.echo(format_report(doctor_report()))


def _storage(pairs: tuple[str, ...]) -> dict:
    """Plain options for flow parameters; credentials (a block's, $MINORITY_STORAGE_OPTIONS) are
    kept in this process's memory, out of the environment the Prefect server and Ray inherit, and
    every source is read now, so a bad one is one line before any work."""
    from minority_core.config import parse_storage_options, resolve_storage_options
    from minority_core.config.storage import adopt_environment_secrets

    plain = parse_storage_options(pairs)
    _storage_block()
    adopt_environment_secrets()
    resolve_storage_options(plain)
    return plain


datasets_dir_option = click.option(
    "--datasets-dir", type=click.Path(file_okay=False), default=None,
    help="folder of <name>.yaml dataset files  [default: $MINORITY_DATASETS_DIR, else the project's deployments/datasets]",
)


@main.group()
def datasets():
    """Dataset files (<name>.yaml in the datasets folder): list, show, validate.

    The folder is --datasets-dir, else $MINORITY_DATASETS_DIR, else the project's own
    deployments/datasets. Extractors (reference.extractor): pixels (no
    weights), demo-classifier (bundled digits classifier), inception-pool3 and inception-spatial
    (Inception-V3 weights; `minority-synth doctor` shows where). Without reference.extractor the
    model's default is used, or pixels when the default's weights are absent.
    """


def _load_checked(target: str, datasets_dir: str | None):
    """A dataset by file path or by name in the datasets folder, with its run requirements checked."""
    from minority_core.config.datasets import check_dataset, dataset_path, load_dataset_file

    path = Path(target) if target.endswith((".yaml", ".yml")) or os.sep in target or Path(target).is_file() else dataset_path(target, datasets_dir)
    from deployments.specs import schedule_problems

    checked = check_dataset(load_dataset_file(path), extra_checks=(schedule_problems,))
    for warning in checked.warnings:
        click.echo(f"warning: {checked.entry.name}: {warning}", err=True)
    return checked.entry


@datasets.command("list")
@datasets_dir_option
@friendly_errors
def datasets_list(datasets_dir):
    """The dataset names in the datasets folder (the folder on stderr)."""
    from minority_core.config.datasets import datasets_dir as find_folder
    from minority_core.config.datasets import list_datasets

    folder = find_folder(datasets_dir)
    for name in list_datasets(folder):
        click.echo(name)
    click.echo(f"({folder})", err=True)


@datasets.command("show")
@click.argument("name")
@datasets_dir_option
@friendly_errors
def datasets_show(name, datasets_dir):
    """A dataset as a run uses it (checked; its extractor filled in), as JSON."""
    click.echo(json.dumps(_load_checked(name, datasets_dir).model_dump(), indent=2))


@datasets.command("validate")
@click.argument("targets", nargs=-1)
@datasets_dir_option
@friendly_errors
def datasets_validate(targets, datasets_dir):
    """Check dataset files (paths or names; none: every file in the datasets folder) before any run:
    the schema, the model's folder and config, the reference source, the prompts file, the cron,
    the extractor and its weights (an unpinned one without weights falls back to pixels, with a warning)."""
    from minority_core.config.datasets import datasets_dir as find_folder
    from minority_core.config.datasets import list_datasets

    if not targets and not list_datasets(datasets_dir):
        raise InputError(f"no dataset files in {find_folder(datasets_dir)}: add <name>.yaml files there, or name the files to check")
    for target in targets or list_datasets(datasets_dir):
        entry = _load_checked(target, datasets_dir)
        prompts = entry.prompt_fields().get("prompts")
        detail = f", {len(prompts)} prompts" if prompts else ""
        baseline = ", + standard baseline arm" if entry.baseline else ""
        click.echo(f"ok: {entry.name} ({entry.model}, extractor {entry.reference.extractor}, output {entry.output_url}{detail}{baseline})")


def prefect_api_url() -> str:
    """The configured Prefect server, checked to answer; a clear error otherwise."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError("no Prefect server configured: start one with `minority-synth server` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise InputError(f"Prefect server at {url} is unreachable ({type(exc).__name__}): start it with `minority-synth server`") from None
    return url.rstrip("/")


@main.command()
@click.argument("dataset")
@click.option("--num-samples", type=int, default=None, help="samples in the run  [default: the dataset file's]")
@click.option("--shard-size", type=int, default=None, help="samples per Parquet shard  [default: the dataset file's]")
@click.option("--guidance-scale", type=float, default=None, help="minority guidance w (0 = standard sampling)  [default: the dataset file's]")
@click.option("--steps", type=int, default=None, help="sampling steps  [default: the dataset file's, else the model's preset]")
@click.option("--seed", type=int, default=None, help="pin the seed  [default: the dataset file's, else one drawn from the flow run]")
@click.option("--workers", type=int, default=None, help="Ray actors (0 = in the flow's process)  [default: the dataset file's]")
@click.option("--out", default=None, help="output folder or URL  [default: the dataset's output/<dataset>-<start time>-<run id>]")
@click.option("--watch", is_flag=True, help="follow the run until it ends; print the report location")
@click.option("--timeout", type=float, default=3600, show_default=True, help="seconds to watch")
@friendly_errors
def trigger(dataset, num_samples, shard_size, guidance_scale, steps, seed, workers, out, watch, timeout):
    """Run the `synthesize/DATASET` deployment on the Prefect server (see `minority-synth deploy`)."""
    import datetime as dt
    import time

    from minority_core.config.datasets import get_dataset

    entry = get_dataset(dataset)
    overrides = dict(num_samples=num_samples, shard_size=shard_size, guidance_scale=guidance_scale, steps=steps, seed=seed, workers=workers,
                     out=normalise_out(out) if out else None)
    entry.synthesis_config(read_prompts=False, **overrides)  # bad values fail here, in one line, before anything is submitted
    api = prefect_api_url()
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.dataset_runs import dataset_run_name

    parameters = {"dataset": dataset, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        run = run_deployment(name=f"synthesize/{dataset}", parameters=parameters, timeout=0)
    except ObjectNotFound:
        raise InputError(f"no deployment synthesize/{dataset} on {api}: register it with `minority-synth deploy` (or `python deployments/serve.py`)") from None
    if run.expected_start_time is None:
        run = _read_flow_run(run.id)
    name = dataset_run_name(dataset, run.id, run.expected_start_time)  # what the flow names itself and its folder
    out = overrides["out"] or f"{entry.output_url}/{name}"
    ui = api[: -len("/api")] if api.endswith("/api") else api
    click.echo(f"flow run {name} ({run.id}): {ui}/runs/flow-run/{run.id}")
    click.echo(f"output: {out}")
    if not watch:
        return
    state, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = _read_flow_run(run.id).state
        if current is not None and current.name != state:
            state = current.name
            click.echo(f"  {dt.datetime.now():%H:%M:%S} {state}")
        if current is not None and current.is_final():
            if current.is_completed():
                click.echo(f"report: {out}/report/index.html")
                return
            raise click.ClickException(f"run ended {state}: {current.message or 'see the Prefect UI'}")
        time.sleep(2)
    raise click.ClickException(f"still {state} after {timeout:.0f} s; follow it at {ui}/runs/flow-run/{run.id}")


def _read_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


@main.command()
@click.option("--port", type=int, default=4200, show_default=True, help="port of the API and UI")
@click.option("--host", default="127.0.0.1", show_default=True, help="loopback by default; expose deliberately")
def server(port, host):
    """Start `prefect server start` with the project's settings (UI at http://HOST:PORT).

    SIGTERM and SIGINT are passed on to Prefect's server, so stopping this command stops it."""
    import signal
    import subprocess

    env = dict(os.environ)  # the project's defaults (minority_synth.env) are already in it
    click.echo(f"Prefect UI: http://{host}:{port}   (export PREFECT_API_URL=http://{host}:{port}/api)")
    child = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)], env=env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    raise SystemExit(child.wait())


@main.command()
@click.option("--pool", default="minority-process", show_default=True, help="Prefect work pool (a process pool, created if missing)")
@click.option("--dataset", "names", multiple=True, help="register only these datasets  [default: every file in the datasets folder]")
@click.option("--notify-block", default=None, help="Prefect notification block told of failed runs, <type slug>/<name> (e.g. slack-webhook/data-team)")
@click.option("--storage-block", default=None, help="prefect-aws block with the storage credentials of the runs: aws-credentials/NAME or s3-bucket/NAME")
@friendly_errors
def deploy(pool, names, notify_block, storage_block):
    """Register every dataset's deployments (synthesize/build-reference/score) on a work pool;
    then `prefect worker start --pool POOL` runs them."""
    from minority_core.config.datasets import list_datasets

    names = list(names) or list_datasets()
    if not names:
        raise InputError("no dataset files found: put <name>.yaml files in the datasets folder (set MINORITY_DATASETS_DIR)")
    prefect_api_url()
    from deployments.register import deploy_all

    result = deploy_all(names, pool, failure_block=notify_block, storage_block=storage_block)
    click.echo(f"work pool {result['pool']} ({'created' if result['pool_created'] else 'exists'}); deployments:")
    for name in result["deployments"]:
        click.echo(f"  {name}")
    click.echo(f"start a worker: prefect worker start --pool {result['pool']}")


@main.command()
@click.option("--dataset", default="digits", show_default=True)
@click.option("--out", default="runs/compare", show_default=True)
@click.option("--num-samples", type=int, default=512, show_default=True, help="per method")
@click.option("--shard-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None)
@click.option("--classifier-steps", type=int, default=3000, show_default=True, help="training steps of the minority-classifier baseline")
@friendly_errors
def compare(dataset, out, num_samples, shard_size, workers, seed, steps, classifier_steps):
    """Every method (standard, self-guided, boost-and-skip, minority-classifier) side by side, one report."""
    from flows.compare import compare as flow

    result = flow(normalise_out(out), dataset=dataset, num_samples=num_samples, shard_size=shard_size, workers=workers, seed=seed, steps=steps, classifier_steps=classifier_steps)
    click.echo(f"report: {result['report']}")
    for row in result["table"]:
        fields = ", ".join(f"{k} {_fmt(row.get(k))}" for k in ("rare_share", "avgknn_mean", "lof_mean", "confident_share", "fid", "seconds_per_sample") if k in row)
        click.echo(f"  {row['name']}: {fields}")


def _numbers(option: str, text: str | None, kind=float) -> list | None:
    """A comma-separated list of numbers (`0.5,1,2`); None when the option is not given."""
    if text is None:
        return None
    values = []
    for item in (part.strip() for part in text.split(",") if part.strip()):  # "" is an empty grid, refused by the sweep
        try:
            values.append(kind(item))
        except ValueError:
            raise InputError(f"{option}: {item!r} is not {'an integer' if kind is int else 'a number'}: give comma-separated values, e.g. {option} 0.5,1,2") from None
    return values


@main.command()
@click.option("--model", required=True, help="the model to tune: bundled:digits, diffusers:PATH_OR_ID, adm:PATH, latent:PATH")
@click.option("--reference", required=True, help="its reference set (build-reference's output), built from --reference-source when absent")
@click.option("--reference-source", default=None, help="real images to build --reference from: bundled:digits, an image folder, or Parquet")
@click.option("--out", default="runs/tune", show_default=True, help="OUT/arms/<arm>/ (one run per setting), OUT/tune.json, OUT/preset.yaml, OUT/report/tune.html")
@click.option("--scales", default=None, help="w values to sweep, comma-separated; w = 0 (standard sampling) always runs as the baseline  [default: the preset's w × 0.25,0.5,1,2,4]")
@click.option("--perturb-ratios", default=None, help="perturb_ratio values to sweep as well  [default: the preset's]")
@click.option("--every", "every_values", default=None, help="every values to sweep as well  [default: the preset's]")
@click.option("--stop-ratios", default=None, help="stop_ratio values to sweep as well  [default: the preset's]")
@click.option("--max-precision-drop", type=float, default=0.05, show_default=True, help="largest precision loss allowed against standard sampling")
@click.option("--max-confidence-drop", type=float, default=None, help="largest loss of the confident share allowed (models with a labelling classifier: bundled:digits)")
@click.option("--rarity", type=click.Choice(["avgknn_mean", "lof_mean", "rarity_mean_in_support", "rare_share"]), default="avgknn_mean", show_default=True,
              help="the rarity measure whose gain is maximised")
@click.option("--write-dataset", type=click.Path(dir_okay=False), default=None, help="a dataset file of this model: its guidance keys are set to the chosen setting, the rest kept")
@click.option("--num-samples", type=int, default=256, show_default=True, help="per arm (a pilot: small)")
@click.option("--shard-size", type=int, default=64, show_default=True)
@click.option("--steps", type=int, default=None, help="sampling steps  [default: the dataset file's, else the model's preset]")
@click.option("--seed", type=int, default=0, show_default=True, help="the same seed (starting noise) in every arm")
@click.option("--workers", type=int, default=2, show_default=True, help="Ray actors per arm (0 = in this process)")
@click.option("--extractor", default=None, help="feature extractor  [default: the model's preset]")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps")
@storage_option
@friendly_errors
def tune(model, reference, reference_source, out, scales, perturb_ratios, every_values, stop_ratios, max_precision_drop, max_confidence_drop, rarity,
         write_dataset, num_samples, shard_size, steps, seed, workers, extractor, device, storage_option):
    """Pilot sweep over w (and optionally perturb_ratio, every, stop_ratio): each arm a resumable run,
    scored; writes the setting with the largest rarity gain within the allowed quality loss."""
    kwargs = dict(
        scales=_numbers("--scales", scales), perturb_ratios=_numbers("--perturb-ratios", perturb_ratios), every=_numbers("--every", every_values, int),
        stop_ratios=_numbers("--stop-ratios", stop_ratios), num_samples=num_samples, shard_size=shard_size, steps=steps, seed=seed, workers=workers,
        extractor=extractor, reference_source=reference_source, max_precision_drop=max_precision_drop, max_confidence_drop=max_confidence_drop,
        rarity=rarity, write_dataset=write_dataset, storage_options=_storage(storage_option), device=device,
    )
    args = (model, normalise_out(reference), normalise_out(out))
    from flows.tune import plan_tune

    plan_tune(*args, **kwargs)  # every check before Prefect starts: bad input is one line in seconds
    if workers:
        from tasks.ray_address import check_ray_address

        check_ray_address(os.environ.get("RAY_ADDRESS"))
    from flows.tune import tune as flow

    click.echo(json.dumps(flow(*args, **kwargs), indent=2))


@main.command("augment-eval")
@click.option("--dataset", default="digits", show_default=True)
@click.option("--out", default="runs/augment", show_default=True)
@click.option("--num-samples", type=int, default=512, show_default=True, help="generated samples per arm added to the real data")
@click.option("--seeds", default="0,1,2", show_default=True, help="training seeds of the downstream classifier")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--steps", type=int, default=None)
@friendly_errors
def augment_eval_cmd(dataset, out, num_samples, seeds, epochs, workers, steps):
    """Train a classifier on real, real + standard and real + minority-guided samples; compare on held-out data."""
    from flows.applications import augment_eval_flow

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    result = augment_eval_flow(normalise_out(out), dataset=dataset, num_samples=num_samples, seeds=seed_list, epochs=epochs, workers=workers, steps=steps)
    click.echo(result["table"])
    click.echo(f"results: {result['results']}")


@main.command("train-demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="default: the bundled model folder")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--unet-steps", type=int, default=None, help="training steps of the diffusion model (default 4000)")
@click.option("--classifier-epochs", type=int, default=None)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads; the bundled weights were made with 1 (results depend on it)")
@friendly_errors
def train_demo(out_dir, seed, unet_steps, classifier_epochs, threads):
    """Retrain the bundled digits model and classifier from a seed (≈15 min on 2 cores)."""
    import torch

    from minority_core.models import BUNDLED_DIR

    torch.set_num_threads(threads)
    from minority_core.demo.train import TrainConfig
    from minority_core.demo.train import train_demo as run

    overrides = {k: v for k, v in dict(seed=seed, unet_steps=unet_steps, classifier_epochs=classifier_epochs).items() if v is not None}
    stats = run(Path(out_dir) if out_dir else BUNDLED_DIR / "digits", TrainConfig(**overrides), log=click.echo)
    click.echo(json.dumps(stats, indent=2))


if __name__ == "__main__":
    sys.exit(main())
