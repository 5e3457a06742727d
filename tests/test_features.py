"""Feature extractors: shapes, input formats, batching, errors, the strict Inception weight load
and the TF1 bilinear resize against an independent numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minority_core.demo.classifier import DigitClassifier
from minority_core.metrics import features as fx
from minority_core.metrics.features import (
    INCEPTION_WEIGHTS_FILE,
    DemoClassifierFeatures,
    FeatureExtractor,
    InceptionV3,
    RawPixels,
    available_extractors,
    get_extractor,
    register_extractor,
    resize_bilinear_tf1,
)
from minority_core.metrics.features import registry as registry_module
from minority_core.models import BUNDLED_DIR

# ---------------------------------------------------------------- data


def uint8_images(n: int, c: int, h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def as_float_nchw(images: np.ndarray) -> torch.Tensor:
    """The sampler's view of stored uint8 NHWC images: float NCHW in [−1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------- raw pixels


def test_pixels_shape_dtype_and_scale():
    images = uint8_images(5, 3, 4, 6)
    out = RawPixels()(images)
    assert out.shape == (5, 72) and out.dtype == np.float32 and np.isfinite(out).all()
    chw = images.transpose(0, 3, 1, 2).reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(out, chw / 127.5 - 1.0, atol=1e-6)
    assert isinstance(RawPixels(shape=(3, 4, 6)), FeatureExtractor)


def test_pixels_formats_and_batching_agree():
    images = uint8_images(7, 1)
    ref = RawPixels(batch_size=3)(images)
    np.testing.assert_array_equal(RawPixels(batch_size=100)(as_float_nchw(images)), ref)
    np.testing.assert_array_equal(RawPixels(batch_size=2)(as_float_nchw(images).numpy()), ref)
    # Without quantisation, float input differs from its stored uint8 by at most half a level.
    noisy = as_float_nchw(images) + 0.003
    assert np.abs(RawPixels(quantized=False)(noisy.clamp(-1, 1)) - ref).max() <= 0.5 / 127.5 + 1e-6


def test_pixels_dim_fixed_by_shape_or_first_batch():
    assert RawPixels(shape=(1, 8, 8)).dim == 64
    ext = RawPixels()
    with pytest.raises(AttributeError, match="shape="):
        _ = ext.dim
    assert "dim=?" in repr(ext)
    ext(uint8_images(2, 3, 5, 5))
    assert ext.dim == 75
    with pytest.raises(ValueError, match="fixed to"):
        ext(uint8_images(2, 1, 5, 5))


def test_empty_batch_gives_empty_features():
    out = RawPixels(shape=(1, 8, 8))(np.zeros((0, 8, 8, 1), np.uint8))
    assert out.shape == (0, 64) and out.dtype == np.float32


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "images, message",
    [
        ([[1, 2]], "numpy array or torch tensor"),
        (np.zeros((8, 8, 1), np.uint8), "4-D"),
        (np.zeros((2, 8, 8, 4), np.uint8), "uint8 images must be NHWC"),
        (torch.zeros(2, 8, 8, 1), "float images must be NCHW"),
        (np.zeros((2, 1, 8, 8), np.int64), "dtype int64"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN or inf"),
        (np.full((2, 1, 8, 8), np.inf, np.float32), "NaN or inf"),
        (torch.full((2, 1, 8, 8), 255.0), r"\[-1, 1\]"),
    ],
)
def test_bad_inputs_give_one_line_errors(images, message):
    with pytest.raises(ValueError, match=message) as info:
        RawPixels()(images)
    assert "\n" not in str(info.value)


def test_read_only_numpy_is_accepted():
    images = uint8_images(2, 1)
    images.flags.writeable = False
    assert RawPixels()(images).shape == (2, 64)


# ---------------------------------------------------------------- demo classifier


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory) -> str:
    """The bundled weights when present; else a random-weight classifier saved as safetensors
    (the bundled one may still be training)."""
    bundled = BUNDLED_DIR / "digits" / "classifier.safetensors"
    if bundled.is_file():
        return str(bundled)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    save_file(DigitClassifier().state_dict(), str(path))
    return str(path)


def test_classifier_features_and_predictions(classifier_path):
    ext = DemoClassifierFeatures(path=classifier_path, batch_size=4)
    images = uint8_images(10, 1)
    out = ext(images)
    assert (ext.name, ext.dim) == ("demo-classifier", 64)
    assert out.shape == (10, 64) and out.dtype == np.float32 and np.isfinite(out).all()
    # Same images as float NCHW, other batch size: identical (float input is quantised first).
    np.testing.assert_allclose(DemoClassifierFeatures(path=classifier_path, batch_size=3)(as_float_nchw(images)), out, atol=1e-5)
    labels, confidence = ext.predict(images)
    assert labels.dtype == np.int64 and confidence.dtype == np.float32 and labels.shape == confidence.shape == (10,)
    with torch.no_grad():
        logits = ext.model(as_float_nchw(images))
    np.testing.assert_array_equal(labels, logits.argmax(1).numpy())
    np.testing.assert_allclose(confidence, torch.softmax(logits, 1).max(1).values.numpy(), atol=1e-6)


def test_classifier_rejects_wrong_image_size(classifier_path):
    with pytest.raises(ValueError, match="1×8×8"):
        DemoClassifierFeatures(path=classifier_path)(uint8_images(2, 3))


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_name():
    names = tuple(info.name for info in available_extractors())
    assert names == ("pixels", "demo-classifier", "inception-pool3", "inception-spatial")
    assert all(name.replace("-", "").isalnum() and name == name.lower() for name in names)
    assert get_extractor("pixels", batch_size=5).batch_size == 5
    with pytest.raises(ValueError, match="valid names are pixels, demo-classifier"):
        get_extractor("inception")


def test_available_extractors_report_weights_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(fx.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    infos = {info.name: info for info in available_extractors()}
    assert all(info.description and "\n" not in info.description for info in infos.values())
    assert (infos["pixels"].weights, infos["pixels"].weights_present) == (None, True)
    assert (infos["demo-classifier"].weights, infos["demo-classifier"].weights_present) == (None, True)
    hub_file = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    for name in ("inception-pool3", "inception-spatial"):
        assert (infos[name].weights, infos[name].weights_present) == (hub_file, False)
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"x")
    assert all(info.weights_present for info in available_extractors())


def test_register_extractor(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    register_extractor("pixels-8", lambda device, **kw: RawPixels(device, shape=(1, 8, 8), **kw), description="8x8 pixels")
    assert get_extractor("pixels-8", batch_size=3).dim == 64
    assert available_extractors()[-1].name == "pixels-8"
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("pixels", RawPixels, description="again")
    with pytest.raises(ValueError, match="lowercase"):
        register_extractor("Pixels_2", RawPixels, description="bad name")
    with pytest.raises(ValueError, match="one-line description"):
        register_extractor("pixels-2", RawPixels, description="two\nlines")


# ---------------------------------------------------------------- TF1 bilinear resize


def tf1_resize_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), written from its
    definition per output pixel in float64: source = index · in/out, neighbours floor and
    floor + 1 clamped to the last row/column, linear weights."""
    in_h, in_w = image.shape

    def taps(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = i * n_in / n_out
        lo = int(np.floor(src))
        return lo, min(lo + 1, n_in - 1), src - lo

    out = np.empty((out_h, out_w))
    for y in range(out_h):
        y0, y1, fy = taps(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, fx_ = taps(x, in_w, out_w)
            out[y, x] = ((1 - fy) * ((1 - fx_) * image[y0, x0] + fx_ * image[y0, x1])
                         + fy * ((1 - fx_) * image[y1, x0] + fx_ * image[y1, x1]))
    return out


def test_tf1_resize_hand_computed():
    # 1×2 → 1×4: sources 0, .5, 1, 1.5 → the last one clamps to the edge (torch's
    # half-pixel align_corners=False would give 0, 2.5, 7.5, 10 instead).
    x = torch.tensor([[[[0.0, 10.0]]]])
    np.testing.assert_allclose(resize_bilinear_tf1(x, (1, 4))[0, 0, 0].numpy(), [0, 5, 10, 10])


@pytest.mark.parametrize("in_hw, out_hw", [((5, 7), (12, 9)), ((9, 6), (4, 3)), ((3, 3), (3, 3))])
def test_tf1_resize_matches_numpy_reference(in_hw, out_hw):
    image = np.random.default_rng(1).uniform(0, 255, size=in_hw)
    ours = resize_bilinear_tf1(torch.tensor(image, dtype=torch.float32)[None, None], out_hw)[0, 0].numpy()
    np.testing.assert_allclose(ours, tf1_resize_reference(image, *out_hw), atol=1e-3)


# ---------------------------------------------------------------- Inception


def test_inception_missing_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(fx.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE) as info:
        get_extractor("inception-pool3")
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv(fx.INCEPTION_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match="MINORITY_INCEPTION_WEIGHTS"):
        get_extractor("inception-spatial")


def test_inception_rejects_wrong_layout(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match="do not match the torch-fidelity layout") as info:
        fx.load_inception(bad)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def inception_home(tmp_path_factory) -> str:
    """A TORCH_HOME holding random weights of the right architecture, saved as torch-fidelity's
    converter writes them: a plain dict of tensors without BatchNorm's num_batches_tracked."""
    torch.manual_seed(0)
    net = InceptionV3()
    for module in net.modules():  # variance-preserving init, so activations don't vanish
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    return str(home)


def test_inception_strict_load_and_features(inception_home, monkeypatch):
    monkeypatch.delenv(fx.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", inception_home)
    pool = get_extractor("inception-pool3", batch_size=2)
    assert (pool.name, pool.dim) == ("inception-pool3", 2048)
    images = uint8_images(2, 3, 16, 16, seed=3)

    captured = []  # mixed_6/conv ≙ Mixed_6d.branch1x1: capture it to check the slice
    hook = pool.network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.append(o))
    both = pool.extract_all(images)
    hook.remove()
    p, s = both["inception-pool3"], both["inception-spatial"]
    assert p.shape == (2, 2048) and s.shape == (2, 2023)
    assert p.dtype == s.dtype == np.float32 and np.isfinite(p).all() and np.isfinite(s).all() and p.std() > 0
    expected = captured[0][:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy()  # TF NHWC flatten
    np.testing.assert_array_equal(s, expected)

    # Same images as float NCHW, one per batch, through the spatial extractor sharing the net.
    spatial = fx.InceptionSpatialFeatures(batch_size=1, network=pool.network)
    assert (spatial.name, spatial.dim) == ("inception-spatial", 2023)
    again = spatial.extract_all(as_float_nchw(images))
    np.testing.assert_allclose(again["inception-pool3"], p, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again["inception-spatial"], s, rtol=1e-4, atol=1e-5)


class StubInception(nn.Module):
    """Stands in for the network to check the extractors' plumbing without a 299² forward."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey → RGB
        n = x.shape[0]
        means = x.float().mean((1, 2, 3))[:, None]
        return means.expand(n, 2048), -means.expand(n, 2023)


def test_inception_extractors_pick_their_output_and_expand_grey():
    images = uint8_images(3, 1, 5, 5)
    means = images.reshape(3, -1).mean(1, dtype=np.float64)[:, None]
    pool = fx.InceptionV3Features(network=StubInception(), batch_size=2)
    spatial = get_extractor("inception-spatial", network=StubInception())
    np.testing.assert_allclose(pool(images), np.broadcast_to(means, (3, 2048)), rtol=1e-6)
    np.testing.assert_allclose(spatial(as_float_nchw(images)), -np.broadcast_to(means, (3, 2023)), rtol=1e-6)


def test_inception_weights_resolution_order(inception_home, tmp_path, monkeypatch):
    hub_file = Path(inception_home) / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", inception_home)
    monkeypatch.delenv(fx.INCEPTION_WEIGHTS_ENV, raising=False)
    assert fx.inception_weights_path() == hub_file
    monkeypatch.setenv(fx.INCEPTION_WEIGHTS_ENV, str(other))
    assert fx.inception_weights_path() == other
    assert fx.inception_weights_path(hub_file) == hub_file
