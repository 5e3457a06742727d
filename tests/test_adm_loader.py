"""adm: specs end to end with small random ADMs: load (pt, safetensors), guided sampling on the
learned-variance path, class labels, the two-stage 64→256 sampler, one-line errors; and the doctor.

Sampling runs on reduced models (image_size 16/64, channel_mult 1,2, one res block per level):
the full-structure 64 px model costs ~0.4 s per forward on this CPU, and a 256 px upsampler
~1.5 s, which several guided steps would multiply past the suite's budget. The two-stage test
therefore keeps the 4× ratio of 64→256 at 16→64 (the upsampler's small_size follows image_size).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from minority_core import doctor
from minority_core.config.presets import preset_for
from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.diffusion.samplers import ancestral_sample
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.models import load_model
from minority_core.models.adm import build_adm
from minority_core.models.adm_loader import ADMSuperResModel
from minority_core.models.two_stage import sample_imagenet256
from tests.configs import sampler_for
from tests.sampling_helpers import run_sampler

# Same module structure as the presets, reduced width (head width follows width: no parameter).
FULL_STRUCTURE = dict(num_channels=32, num_head_channels=32)
TINY = dict(num_channels=32, num_head_channels=32, image_size=16, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8")
TINY_SR = dict(num_channels=32, image_size=64, channel_mult="1,2", num_res_blocks=1, attention_resolutions="16")
GUIDED = MinorityGuidance(scale=0.4, every=2, distance="l2")  # LPIPS needs weights this machine may lack


def save_random(path, preset: str, fmt: str = "pt", seed: int = 0, **flags) -> str:
    """A random-weight checkpoint (every weight drawn: ADM's zeroed output convs would give ε ≡ 0)."""
    torch.manual_seed(seed)
    net = build_adm(preset, **(flags | {"use_fp16": False}))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    state = net.state_dict()
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("adm")
    return {
        "celeba_tiny": save_random(folder / "celeba_tiny.pt", "celeba64", **TINY),
        "imagenet_tiny": save_random(folder / "imagenet_tiny.safetensors", "imagenet64", "safetensors", seed=1, **TINY),
        "upsampler_tiny": save_random(folder / "upsampler_tiny.pt", "imagenet64to256", seed=2, **TINY_SR),
    }


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_load_full_structure_checkpoint(fmt: str, tmp_path) -> None:
    path = save_random(tmp_path / f"celeba.{fmt}", "celeba64", fmt, **FULL_STRUCTURE)
    loaded = load_model("adm:" + path, preset="celeba64", **FULL_STRUCTURE)
    expected = torch.load(path, weights_only=True) if fmt == "pt" else load_file(path)
    state = loaded.model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())
    assert loaded.shape == (3, 64, 64) and loaded.num_classes is None and loaded.spec == "adm:" + path
    np.testing.assert_allclose(loaded.schedule.betas, NoiseSchedule.cosine(1000).betas)
    assert not loaded.model.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in loaded.model.parameters())  # no fp16 on CPU


def test_guided_sampling_learned_variance(ckpts) -> None:
    loaded = load_model("adm:" + ckpts["celeba_tiny"], preset="celeba64", **TINY)
    x = torch.zeros(2, *loaded.shape)
    assert loaded.model(x, torch.tensor([10, 500])).shape == (2, 6, 16, 16)  # ε and v: learned Σ

    def run(guidance):
        return run_sampler(ancestral_sample, loaded.model, loaded.schedule, (2, *loaded.shape), guidance=guidance, steps=4,
                                generator=torch.Generator().manual_seed(0))

    guided = run(GUIDED)
    assert guided.shape == (2, 3, 16, 16) and torch.isfinite(guided).all()
    assert torch.equal(guided, run(GUIDED))
    assert not torch.allclose(guided, run(None))


def test_class_conditional_labels(ckpts) -> None:
    loaded = load_model("adm:" + ckpts["imagenet_tiny"], preset="imagenet64", **TINY)
    assert loaded.num_classes == 1000
    np.testing.assert_allclose(loaded.schedule.betas, NoiseSchedule.cosine(1000).betas)
    x, t = torch.randn(2, *loaded.shape), torch.tensor([300, 300])
    assert not torch.allclose(loaded.model(x, t, y=torch.tensor([1, 1])), loaded.model(x, t, y=torch.tensor([2, 2])))
    out = run_sampler(ancestral_sample, loaded.model, loaded.schedule, (2, *loaded.shape), guidance=GUIDED, steps=3,
                           generator=torch.Generator().manual_seed(0), extra={"y": torch.tensor([3, 999])})
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_two_stage_imagenet256(ckpts) -> None:
    base = load_model("adm:" + ckpts["imagenet_tiny"], preset="imagenet64", **TINY)
    up = load_model("adm:" + ckpts["upsampler_tiny"], preset="imagenet64to256", **TINY_SR)
    assert isinstance(up.model, ADMSuperResModel) and up.model.small_size == 16 and up.shape == (3, 64, 64)
    np.testing.assert_allclose(up.schedule.betas, NoiseSchedule.linear(1000).betas)

    def run(seed: int, labels=None):
        return sample_imagenet256(base, up, 2, GUIDED, steps=3, generator=torch.Generator().manual_seed(seed), class_labels=labels)

    out = run(0)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(out, run(0))  # labels and both stages' noise come from the one generator
    assert torch.isfinite(run(1, torch.tensor([5, 6]))).all()
    assert up.model.low_res is None  # the conditioning lasts only for the second stage
    with pytest.raises(ValueError, match="low-res"):
        up.model(torch.zeros(1, 3, 64, 64), torch.tensor([1]), y=torch.tensor([0]))
    with pytest.raises(ValueError, match="upsampler"):
        sample_imagenet256(base, base, 1, None, steps=2)
    with pytest.raises(ValueError, match="class_labels"):
        run(0, torch.tensor([5, 1000]))


def test_explicit_flags_without_preset(ckpts) -> None:
    flags = TINY | dict(noise_schedule="linear", learn_sigma=True, resblock_updown=True, use_new_attention_order=True)
    loaded = load_model("adm:" + ckpts["celeba_tiny"], **flags)
    assert loaded.shape == (3, 16, 16)
    np.testing.assert_allclose(loaded.schedule.betas, NoiseSchedule.linear(1000).betas)


# --------------------------------------------------------------------------- errors


def one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_wrong_preset_is_one_line_error(ckpts) -> None:
    with pytest.raises(ValueError, match="num_classes") as err:
        load_model("adm:" + ckpts["celeba_tiny"], preset="imagenet64", **TINY)
    assert ckpts["celeba_tiny"] in one_line(err)


def test_missing_file_names_path(tmp_path) -> None:
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError) as err:
        load_model("adm:" + path, preset="celeba64")
    assert path in one_line(err)


def test_unreadable_file_is_one_line_error(tmp_path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt: not a readable") as err:
        load_model(f"adm:{path}", preset="celeba64", **TINY)
    one_line(err)


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({}, "preset.*missing: image_size, num_channels"),
        ({"image_size": 16}, "missing: num_channels"),
        ({"preset": "celeba128"}, "unknown ADM preset 'celeba128'.*celeba64"),
        ({"preset": "celeba64", "num_chanels": 32}, "num_chanels.*valid:.*num_channels"),
        ({"preset": "celeba64", "noise_schedule": "quadratic"}, "noise_schedule 'quadratic'"),
    ],
)
def test_bad_options_are_clear(ckpts, options, expect) -> None:
    with pytest.raises(ValueError, match=expect) as err:
        load_model("adm:" + ckpts["celeba_tiny"], **(TINY if options.get("preset") == "celeba64" else {}) | options)
    one_line(err)


def test_paper_guidance_defaults() -> None:
    celeba = preset_for("adm:x.pt", "celeba64").sampler
    assert celeba.guidance == MinorityGuidance(scale=0.4, perturb_ratio=0.8, every=5, scale_type="var", distance="lpips") and celeba.steps == 250
    assert preset_for("adm:x.pt", "lsun256").sampler == celeba
    assert preset_for("adm:x.pt", "imagenet64").sampler.guidance == MinorityGuidance(scale=0.2, every=2, distance="lpips")
    assert preset_for("adm:x.pt", "imagenet64to256") == preset_for("adm:x.pt", "imagenet64")  # the upsampler stage is unguided
    assert sampler_for("adm:x.pt", preset="imagenet64", distance="l2").guidance.distance == "l2"


# --------------------------------------------------------------------------- doctor


def test_doctor_flags_presence(tmp_path, monkeypatch) -> None:
    torch_home, models, bundled = tmp_path / "torch", tmp_path / "models", tmp_path / "bundled"
    for folder in (torch_home / "hub" / "checkpoints", models, bundled / "digits" / "unet", bundled / "digits" / "scheduler"):
        folder.mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    (models / "celeba64.pt").write_bytes(b"x")
    (models / "64x64_diffusion.pt").write_bytes(b"x")
    (bundled / "digits" / "unet" / "config.json").write_text("{}")  # weights missing: not present
    (bundled / "digits" / "classifier.safetensors").write_bytes(b"x")
    inception = tmp_path / "inception.pth"
    inception.write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("MINORITY_MODELS_DIR", str(models))
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(tmp_path / "absent-alex.pth"))
    monkeypatch.setenv("MINORITY_INCEPTION_WEIGHTS", str(inception))
    monkeypatch.setattr(doctor, "BUNDLED_DIR", bundled)

    checks = {c.name: c for c in doctor.doctor_report()}
    present = {name for name, c in checks.items() if c.present}
    assert {"LPIPS AlexNet backbone", "Inception-V3 (FID)", "ADM celeba64", "ADM imagenet64", "bundled digit classifier"} <= present
    assert not present & {"LPIPS linear heads", "ADM lsun256", "ADM imagenet64to256", "bundled demo model"}
    assert checks["torch CUDA"].present == torch.cuda.is_available()
    assert "FAISS GPUs" in checks
    assert checks["transformers (text encoders)"].present == (importlib.util.find_spec("transformers") is not None)
    assert "latent:PATH" in checks["transformers (text encoders)"].unlocks
    assert str(inception) in checks["Inception-V3 (FID)"].looks_for
    assert str(models / "lsun_bedroom.pt") in checks["ADM lsun256"].looks_for
    assert "--preset celeba64" in checks["ADM celeba64"].unlocks
    assert "--distance lpips" in checks["LPIPS linear heads"].unlocks
    assert "inception-pool3" in checks["Inception-V3 (FID)"].unlocks
    assert "missing unet/diffusion_pytorch_model.safetensors" in checks["bundled demo model"].detail

    monkeypatch.delenv("MINORITY_INCEPTION_WEIGHTS")  # falls back to the torch hub cache
    assert not {c.name: c for c in doctor.doctor_report()}["Inception-V3 (FID)"].present
    (torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert {c.name: c for c in doctor.doctor_report()}["Inception-V3 (FID)"].present

    table = doctor.format_report(list(checks.values())).splitlines()
    assert len(table) == len(checks) + 3  # header, rule, rows, summary
    assert all(any(name in line for line in table) for name in checks)
    assert table[-1] == f"{len(present)} of {len(checks)} present"


def test_imagenet256_is_one_load_and_one_generate(ckpts) -> None:
    """`adm:BASE --preset imagenet64to256 --upsampler UP`: generate() runs the guided 64 px stage,
    then the upsampler unguided (here at reduced sizes, 16 → 64, the same 4× ratio)."""
    from minority_core.config.sampler import SamplerConfig
    from minority_core.runs.generate import generate

    loaded = load_model("adm:" + ckpts["imagenet_tiny"], preset="imagenet64to256", upsampler=ckpts["upsampler_tiny"], upsampler_options=TINY_SR, **TINY)
    assert loaded.upsampler is not None and loaded.num_classes == 1000
    images, labels = generate(loaded, 2, SamplerConfig(steps=3, guidance=GUIDED), seed=0)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all() and labels.shape == (2,)
    with pytest.raises(ValueError, match="self-guided or standard ancestral sampling only"):
        generate(loaded, 1, SamplerConfig(steps=3, method="boost-and-skip"), seed=0)


# --------------------------------------------------------------------------- explicit flags from the CLI / flow


def tiny_flag_args(flags: dict) -> list[str]:
    return [arg for key, value in flags.items() for arg in ("--adm-flag", f"{key}={value}")]


def test_parse_adm_flags_types_and_errors() -> None:
    from minority_core.models.adm_loader import parse_adm_flags

    assert parse_adm_flags(["num_channels=256", "learn_sigma=true", "attention_resolutions=32,16,8", "num_classes=none", "dropout=0.1",
                            "noise-schedule=linear"]) == {
        "num_channels": 256, "learn_sigma": True, "attention_resolutions": "32,16,8", "num_classes": None, "dropout": 0.1, "noise_schedule": "linear"}
    assert parse_adm_flags(["num_head_channels=-1", "class_cond=true"]) == {"num_head_channels": None, "num_classes": 1000}  # guided-diffusion spellings
    for bad, message in [("num_channels=wide", "takes an integer"), ("learn_sigma=yes", "true or false"), ("colour=red", "unknown ADM flag 'colour'"),
                         ("num_channels", "key=value"), ("image_size=none", "takes an integer"), ("num_channels=-1", "must be ≥ 1"),
                         ("attention_resolutions=abc", "comma-separated numbers"), ("channel_mult=1,0", "positive"),
                         ("noise_schedule=cosinus", "linear or cosine"), ("class_cond=maybe", "true or false")]:
        with pytest.raises(ValueError, match=message):
            parse_adm_flags([bad])


def test_cli_sample_with_explicit_adm_flags(ckpts, tmp_path) -> None:
    """`--preset celeba64` plus `--adm-flag`s describing the reduced checkpoint: the CLI builds and loads it."""
    from click.testing import CliRunner
    from PIL import Image

    from minority_core.io import ShardStore
    from minority_synth.cli import main

    out = tmp_path / "run"
    args = ["sample", "--model", "adm:" + ckpts["celeba_tiny"], "--preset", "celeba64", *tiny_flag_args(TINY), "--distance", "l2",
            "--steps", "3", "--num-samples", "2", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = ShardStore(str(out)).read_shard(("samples", 0))
    assert Image.open(__import__("io").BytesIO(table.column("image")[0].as_py()["bytes"])).size == (16, 16)

    without = CliRunner().invoke(main, [a for a in args if a not in tiny_flag_args(TINY)] + ["--out", str(tmp_path / "other")])
    assert without.exit_code == 2 and "\n" not in without.output.strip()  # the full-size preset does not fit the reduced weights
    wrong = CliRunner().invoke(main, ["sample", "--adm-flag", "num_channels=32", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "apply to adm: models only" in wrong.output  # the one message the config gives, CLI or Python


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_synthesis_config_carries_adm_flags_to_the_workers(ckpts, tmp_path) -> None:
    from flows.synthesize import synthesize
    from minority_core.config import SynthesisConfig

    flags = [f"{k}={v}" for k, v in TINY.items()]
    config = SynthesisConfig.from_options(model="adm:" + ckpts["celeba_tiny"], preset="celeba64", adm_flags=flags, num_samples=3, shard_size=2, steps=2,
                             distance="l2", out=str(tmp_path / "run"), workers=1, extractor="pixels")
    assert config.output_identity()["adm_flags"] == dict(sorted(TINY.items()))
    respelled = config.replace(adm_flags=[f.replace("_", "-") for f in reversed(flags)])
    assert respelled.output_identity() == config.output_identity()  # same flags, other spelling/order: same run
    assert "adm_flags" not in SynthesisConfig.from_options(model="bundled:digits", num_samples=2, out=str(tmp_path)).output_identity()
    assert synthesize(config)["samples"] == 3  # a Ray actor built the reduced ADM from the flags
    with pytest.raises(ValueError, match="differs in: adm_flags"):  # the same out without the flags is another run
        synthesize(config.replace(adm_flags=()))
    with pytest.raises(ValueError, match="adm_flags apply to adm: models only"):
        SynthesisConfig.from_options(model="bundled:digits", adm_flags=["num_channels=32"], num_samples=2, out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown ADM flag 'width'"):
        SynthesisConfig.from_options(model="adm:/x.pt", preset="celeba64", adm_flags=["width=3"], num_samples=2, out=str(tmp_path))


def test_super_res_on_a_preset_without_small_size_names_the_fix(tmp_path) -> None:
    path = save_random(tmp_path / "sr.pt", "celeba64", super_res=True, **TINY)
    with pytest.raises(ValueError, match="super_res=true with preset celeba64 needs small_size"):
        load_model("adm:" + path, preset="celeba64", super_res=True, **TINY)
    loaded = load_model("adm:" + path, preset="celeba64", super_res=True, small_size=4, **TINY)
    assert loaded.shape == (3, 16, 16)


# --------------------------------------------------------------------------- fixed variance


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"learn_sigma": False}, "fixed_large"), ({"learn_sigma": False, "sigma_small": True}, "fixed_small"), ({"learn_sigma": True}, "fixed_small")],
)
def test_fixed_variance_follows_the_checkpoint_flags(tmp_path, flags, expected) -> None:
    """guided-diffusion: learn_sigma=False samples with β_t (β̃_1 at index 0) unless sigma_small."""
    path = save_random(tmp_path / "m.pt", "celeba64", **TINY, learn_sigma=flags["learn_sigma"])
    loaded = load_model("adm:" + path, preset="celeba64", **TINY, **flags)
    assert loaded.schedule.fixed_variance == expected
    grid = loaded.schedule.respace(25)
    abar = NoiseSchedule.cosine(1000).alphas_cumprod[grid.timesteps]  # the formula, from the kept ᾱ
    beta = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    tilde = beta[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # β̃ at indices 1 … 24
    want = np.log(np.concatenate([[tilde[0]], beta[1:] if expected == "fixed_large" else tilde]))
    np.testing.assert_allclose([grid.fixed_log_variance(i) for i in range(25)], want, rtol=1e-10)


def test_fixed_large_sampling_by_hand(tmp_path) -> None:
    """A learn_sigma=False ADM's ancestral step adds √β_t·z: two steps recomputed from the formula."""
    path = save_random(tmp_path / "m.pt", "celeba64", **TINY, learn_sigma=False)
    loaded = load_model("adm:" + path, preset="celeba64", **TINY, learn_sigma=False)
    grid = loaded.schedule.respace(2)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = ancestral_sample(loaded.model, x, grid, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    abar = NoiseSchedule.cosine(1000).alphas_cumprod[grid.timesteps]
    state = x.double()
    for i in (1, 0):
        with torch.no_grad():
            eps = loaded.model(state.float(), torch.full((2,), int(grid.timesteps[i]))).double()
        x0 = ((state - (1 - abar[i]) ** 0.5 * eps) / abar[i] ** 0.5).clamp(-1, 1)
        prev = abar[i - 1] if i else 1.0
        beta = 1 - abar[i] / prev
        mean = beta * prev**0.5 / (1 - abar[i]) * x0 + (1 - prev) * (1 - beta) ** 0.5 / (1 - abar[i]) * state
        state = mean + beta**0.5 * torch.randn(x.shape, generator=g).double() if i else mean
    torch.testing.assert_close(got.double(), state, atol=1e-4, rtol=1e-4)
