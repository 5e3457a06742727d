"""Latent pipelines (extension beyond the paper): a tiny random Stable-Diffusion-layout folder
built here (VAE + UNet2DConditionModel + text encoder + tokenizer + scheduler), loaded through
`load_latent_pipeline`, sampled with CFG and self-guided minority guidance on the latents."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from minority_core.diffusion.guidance import MinorityGuidance, l2_distance, minority_gradient
from minority_core.models.latent import expand_prompts, load_latent_pipeline, register_component, shard_prompts
from tests.tiny_latent import HAS_TRANSFORMERS, IMAGE, PROMPTS, ByteTokenizer, TinyTextEncoder, build_tiny_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """The tiny pipeline with CLIP where transformers is installed, else with the stand-in encoder."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    return load_latent_pipeline(build_tiny_pipeline(folder, "clip" if HAS_TRANSFORMERS else "own"))


def seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def test_loads_every_part_from_the_folder(pipe):
    assert pipe.latent_shape == (4, 8, 8)
    assert pipe.scaling_factor == pytest.approx(0.18215)
    assert len(pipe.schedule) == 1000 and pipe.prediction_type == "epsilon"
    assert type(pipe.text_encoder).__name__ == ("CLIPTextModel" if HAS_TRANSFORMERS else "TinyTextEncoder")
    assert all(not p.requires_grad for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    hidden = pipe.encode_prompts(PROMPTS)
    assert hidden.shape[0] == 2 and hidden.shape[-1] == 32
    assert not torch.equal(hidden[0], hidden[1])  # different prompts, different conditioning


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_guided_sampling_end_to_end_gives_decoded_images(pipe, sampler):
    guidance = MinorityGuidance(scale=1.0, every=1)
    images = pipe.sample(PROMPTS, guidance, steps=4, cfg_scale=3.0, generator=seed(0), sampler=sampler)
    assert images.shape == (2, *IMAGE) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1


def test_minority_guidance_changes_output_and_same_seed_repeats(pipe):
    guidance = MinorityGuidance(scale=2.0, every=1)
    plain = pipe.sample(PROMPTS, None, steps=4, cfg_scale=3.0, generator=seed(1))
    guided = pipe.sample(PROMPTS, guidance, steps=4, cfg_scale=3.0, generator=seed(1))
    again = pipe.sample(PROMPTS, guidance, steps=4, cfg_scale=3.0, generator=seed(1))
    other = pipe.sample(PROMPTS, guidance, steps=4, cfg_scale=3.0, generator=seed(2))
    assert (guided - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample moved
    assert torch.equal(guided, again)
    assert not torch.allclose(guided, other)
    # w = 0 keeps the guided steps' extra work but adds nothing (DDIM η = 0 draws no further noise).
    zero = pipe.sample(PROMPTS, MinorityGuidance(scale=0.0, every=1), steps=4, cfg_scale=3.0, generator=seed(1))
    torch.testing.assert_close(zero, plain)


def test_cfg_scale_one_is_the_conditional_prediction_and_cfg_combines(pipe):
    x = torch.randn(2, *pipe.latent_shape, generator=seed(3))
    t = torch.tensor([700, 200])
    with torch.no_grad():
        eps_c = pipe.unet(x, t, encoder_hidden_states=pipe.encode_prompts(PROMPTS)).sample
        eps_u = pipe.unet(x, t, encoder_hidden_states=pipe.encode_prompts(["", ""])).sample
        torch.testing.assert_close(pipe.denoiser(PROMPTS, 1.0)(x, t), eps_c)
        torch.testing.assert_close(pipe.denoiser(PROMPTS, 4.0)(x, t), eps_u + 4.0 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pipe.denoiser(PROMPTS, 0.0)(x, t), eps_u, atol=1e-5, rtol=1e-4)
        # one prompt per row: row 1 of a 2-prompt batch is the 1-prompt denoiser on that row
        torch.testing.assert_close(pipe.denoiser(PROMPTS, 4.0)(x, t)[1:], pipe.denoiser(PROMPTS[1:], 4.0)(x[1:], t[1:]), atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="class labels"):
            pipe.denoiser(PROMPTS, 1.0)(x, t, y=torch.tensor([0, 1]))


def test_v_prediction_is_converted_to_eps(pipe):
    v_pipe = dataclasses.replace(pipe, prediction_type="v_prediction")
    x = torch.randn(2, *pipe.latent_shape, generator=seed(4))
    t = torch.tensor([600, 600])
    abar = float(pipe.schedule.alphas_cumprod[600])
    with torch.no_grad():
        v = pipe.denoiser(PROMPTS, 2.0)(x, t)
        torch.testing.assert_close(v_pipe.denoiser(PROMPTS, 2.0)(x, t), abar**0.5 * v + (1 - abar) ** 0.5 * x)


def test_minority_gradient_wrt_latent_is_nonzero_finite_and_flows_through_cfg(pipe):
    grid = pipe.schedule.respace(10)
    guidance = MinorityGuidance(scale=1.0, normalize=False)
    x = torch.randn(2, *pipe.latent_shape, generator=seed(5))
    grad_cfg, _ = minority_gradient(pipe.denoiser(PROMPTS, 4.0), grid, x, 7, guidance, l2_distance, seed(6))
    grad_cond, _ = minority_gradient(pipe.denoiser(PROMPTS, 1.0), grid, x, 7, guidance, l2_distance, seed(6))
    assert grad_cfg.shape == x.shape and torch.isfinite(grad_cfg).all()
    assert (grad_cfg.flatten(1).abs().amax(dim=1) > 0).all()
    assert not torch.allclose(grad_cfg, grad_cond)  # the CFG combination is inside the graph


def test_prompts_broadcast_and_per_shard():
    assert expand_prompts("a cat", 3) == ["a cat"] * 3
    assert expand_prompts(["a cat"], 2) == ["a cat", "a cat"]
    assert expand_prompts(PROMPTS) == PROMPTS
    with pytest.raises(ValueError, match="one prompt per sample"):
        expand_prompts(PROMPTS, 3)
    prompts = ["p0", "p1", "p2"]
    whole = shard_prompts(prompts, 0, 7)
    assert whole == ["p0", "p1", "p2", "p0", "p1", "p2", "p0"]
    assert shard_prompts(prompts, 0, 4) + shard_prompts(prompts, 4, 3) == whole  # independent of the split


def test_one_prompt_broadcast_to_num_samples(pipe):
    images = pipe.sample("a cat", None, steps=3, cfg_scale=2.0, generator=seed(7), num_samples=3)
    assert images.shape == (3, *IMAGE)


def test_lpips_distance_is_refused_on_latents(pipe):
    with pytest.raises(ValueError, match="l2"):
        pipe.sample(PROMPTS, MinorityGuidance(scale=1.0, distance="lpips"), steps=3, generator=seed(0))
    with pytest.raises(ValueError, match="sampler"):
        pipe.sample(PROMPTS, None, steps=3, generator=seed(0), sampler="euler")


def test_stand_in_text_encoder_pipeline_loads_and_samples(tmp_path):
    """Without transformers: the tests' tiny text encoder + byte tokenizer, registered by name, saved and loaded."""
    pipe = load_latent_pipeline(build_tiny_pipeline(tmp_path, "own"))
    assert isinstance(pipe.text_encoder, TinyTextEncoder) and isinstance(pipe.tokenizer, ByteTokenizer)
    images = pipe.sample(PROMPTS, MinorityGuidance(scale=1.0, every=1), steps=3, cfg_scale=2.0, generator=seed(0))
    assert images.shape == (2, *IMAGE) and torch.isfinite(images).all()


def test_loader_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        load_latent_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ValueError, match="lacks"):
        load_latent_pipeline(tmp_path)
    (tmp_path / "p").mkdir()
    folder = build_tiny_pipeline(tmp_path / "p", "own")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["text_encoder"] = ["os", "system"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="only diffusers, transformers and minority_core"):
        load_latent_pipeline(folder)


def test_only_registered_minority_core_classes_load(tmp_path):
    """A folder naming an unregistered minority_core class is refused, naming the registry."""
    folder = build_tiny_pipeline(tmp_path, "own")
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["text_encoder"] = ["minority_core", "SomethingElse"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not registered.*register_component"):
        load_latent_pipeline(folder)
    with pytest.raises(ValueError, match="from_pretrained"):
        register_component("Nothing", object)
