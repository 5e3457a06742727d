"""`minority-synth`: the command line. Bad input exits with code 2 and one line naming the problem."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click



class CliError(click.ClickException):
    exit_code = 2


def friendly_errors(fn):
    """Turn the library's validation errors into `error: <one line>` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, PermissionError, TypeError) as exc:
            raise CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except Exception as exc:
            if type(exc).__name__ in ("StorageError", "CorruptShardError", "NonFiniteSampleError"):
                raise CliError(str(exc).splitlines()[0]) from None
            raise

    return wrapper


def sampler_options(fn):
    """Options shared by `sample` and `synthesize`; None means "the model's preset default"."""
    options = [
        click.option("--model", "model_spec", default="bundled:digits", show_default=True, help="bundled:digits, diffusers:PATH_OR_ID or adm:PATH"),
        click.option("--preset", default=None, help="ADM preset for adm: specs (celeba64, lsun256, imagenet64, imagenet64to256)"),
        click.option("--guidance-scale", type=float, default=None, help="w; 0 = standard sampling (no guidance). Default: the model's preset."),
        click.option("--perturb-ratio", type=float, default=None, help="s = ⌊ratio·steps⌋ for the re-noising (default 0.8)"),
        click.option("--every", type=int, default=None, help="guide every k-th step (default 5)"),
        click.option("--stop-ratio", type=float, default=None, help="guide only while t > ratio·steps (default −1: always)"),
        click.option("--scale-type", type=click.Choice(["var", "fixed"]), default=None, help="scale the gradient by the step variance (var) or not"),
        click.option("--distance", type=click.Choice(["l2", "lpips"]), default=None, help="minority loss distance"),
        click.option("--mc-samples", type=int, default=None, help="re-noising draws averaged per guided step (default 1)"),
        click.option("--steps", type=int, default=None, help="sampling steps on the respaced grid"),
        click.option("--sampler", type=click.Choice(["ancestral", "ddim"]), default="ancestral", show_default=True),
        click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM η"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=int, default=256, show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_sampler_config(model_spec, **options):
    """Typed sampler config from CLI values; the model's preset fills what was not given."""
    from minority_core.presets import sampler_config_for

    names = ("guidance_scale", "perturb_ratio", "every", "stop_ratio", "scale_type", "distance", "mc_samples", "steps", "sampler", "eta", "batch_size")
    return sampler_config_for(model_spec, **{k: options[k] for k in names})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Synthesize minority (rare, low-density) samples with diffusion models, and score them.

    Self-guided minority guidance (Um & Ye, ECCV 2024): no classifier, only the diffusion model.
    """


@main.command()
@sampler_options
@click.option("--num-samples", type=int, default=64, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="output folder (PNG grid + Parquet)")
@friendly_errors
def sample(out_dir, num_samples, seed, device, preset, **options):
    """Sample in this process: writes OUT/grid.png and OUT/samples/shard-00000.parquet."""
    from minority_core.generate import generate
    from minority_core.images import grid_png, to_uint8_nhwc
    from minority_core.labeling import label_samples
    from minority_core.models import load_model
    from minority_core.shards import ShardStore, samples_table

    config = build_sampler_config(**options)
    loaded = load_model(options["model_spec"], device, **({"preset": preset} if preset else {}))
    store = ShardStore(str(Path(out_dir).resolve()))
    store.check_writable()
    images, class_labels = generate(loaded, num_samples, config, seed, device, progress=True)
    uint8 = to_uint8_nhwc(images)
    labels = label_samples(loaded.spec, images) if class_labels is None else class_labels.numpy()
    scale = 0.0 if config.guidance is None else config.guidance.scale
    record = store.write_shard("samples", 0, samples_table(uint8, 0, seed, labels=labels, guidance=scale, arm="standard" if scale == 0 else "guided"))
    (Path(out_dir) / "grid.png").write_bytes(grid_png(uint8))
    click.echo(json.dumps({"samples": num_samples, "parquet": store.url_of(record.path), "grid": str(Path(out_dir) / "grid.png")}))


def parse_storage_options(pairs: tuple[str, ...]) -> tuple[dict, dict]:
    """`key=value` pairs → (plain options for the flow, credential options kept out of Prefect)."""
    from flows.config import SECRET_KEY

    plain, secret = {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option must be key=value, got {pair!r}")
        parsed = json.loads(value) if value[:1] in "{[" or value in ("true", "false") else value
        target = secret if SECRET_KEY.search(key) else plain
        if key == "endpoint_url":  # s3fs takes it inside client_kwargs
            target.setdefault("client_kwargs", {})["endpoint_url"] = parsed
        else:
            target[key] = parsed
    return plain, secret


def normalise_out(out: str) -> str:
    """Local paths become absolute (Ray workers may run in another working directory)."""
    return out if "://" in out else str(Path(out).expanduser().resolve())


@main.command()
@sampler_options
@click.option("--num-samples", type=int, required=True)
@click.option("--shard-size", type=int, default=256, show_default=True)
@click.option("--out", required=True, help="output location: a folder, file://, s3://, gs:// or memory:// URL")
@click.option("--arm", default="guided", show_default=True, help="name of this arm in reports (e.g. standard, guided)")
@click.option("--extractor", default=None, help="feature extractor for scoring (default: the model's preset)")
@click.option("--workers", type=int, default=2, show_default=True, help="CPU Ray actors (one per GPU where there are GPUs); 0 = in-process")
@click.option("--ray-address", default=None, help="an existing Ray cluster (default: local Ray, or $RAY_ADDRESS)")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for fsspec (repeatable); credentials stay out of Prefect")
@click.option("--overwrite", is_flag=True, help="replace a different earlier run at --out")
@friendly_errors
def synthesize(out, num_samples, shard_size, arm, extractor, workers, ray_address, storage_option, overwrite, seed, device, preset, model_spec, **sampler):
    """Run the synthesis flow (Prefect + Ray + Parquet shards); rerunning the same command resumes."""
    import os

    from flows.config import STORAGE_OPTIONS_ENV, SynthesisConfig

    plain, secret = parse_storage_options(storage_option)
    if secret:
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(secret)
    config = SynthesisConfig(
        model=model_spec, preset=preset, num_samples=num_samples, shard_size=shard_size, out=normalise_out(out), arm=arm,
        extractor=extractor, workers=workers, ray_address=ray_address, device=device, overwrite=overwrite, seed=seed,
        storage_options=plain, **sampler,
    )
    from flows.synthesize import synthesize as flow

    click.echo(json.dumps(flow(config, progress=True), indent=2))


@main.command("train-demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="default: the bundled model folder")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--unet-steps", type=int, default=None, help="training steps of the diffusion model (default 4000)")
@click.option("--classifier-epochs", type=int, default=None)
@friendly_errors
def train_demo(out_dir, seed, unet_steps, classifier_epochs):
    """Retrain the bundled digits model and classifier from a seed (≈15 min on 2 cores)."""
    from minority_core.models import BUNDLED_DIR
    from minority_core.train_demo import TrainConfig
    from minority_core.train_demo import train_demo as run

    overrides = {k: v for k, v in dict(seed=seed, unet_steps=unet_steps, classifier_epochs=classifier_epochs).items() if v is not None}
    stats = run(Path(out_dir) if out_dir else BUNDLED_DIR / "digits", TrainConfig(**overrides), log=click.echo)
    click.echo(json.dumps(stats, indent=2))


if __name__ == "__main__":
    sys.exit(main())
