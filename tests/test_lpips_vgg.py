"""LPIPS-VGG from local weight files the test builds (random, VGG-16-shaped, saved as torchvision
and lpips name them), checked against an independent float64 re-computation of the LPIPS v0.1
formula; and the minority-classifier baseline's scores with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minority_core.baselines.minority_classifier import minority_scores
from minority_core.diffusion.lpips import VGG16_FILE, load_lpips
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

# torchvision's VGG-16 `features`: (index, in, out) of each 3×3 conv; 2×2 max-pools after the
# convs at 2, 7, 14 and 21 (indices 4, 9, 16, 23); LPIPS taps relu1_2 … relu5_3.
CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
         (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
TAPPED = (2, 7, 14, 21, 28)  # the conv whose ReLU is tapped
POOLED = (2, 7, 14, 21)
SHIFT = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)  # LPIPS's ScalingLayer
SCALE = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips-vgg")
    g = torch.Generator().manual_seed(0)
    backbone = {}
    for index, cin, cout in CONVS:
        backbone[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        backbone[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.1
    backbone["classifier.0.weight"] = torch.zeros(1, 1)  # torchvision's file holds the classifier too: ignored
    heads = {f"lin{k}.model.1.weight": torch.rand(1, CONVS[[c[0] for c in CONVS].index(t)][2], 1, 1, generator=g) for k, t in enumerate(TAPPED)}
    torch.save(backbone, root / VGG16_FILE)
    torch.save(heads, root / "vgg.pth")
    return {"root": root, "backbone": backbone, "heads": heads}


def reference_lpips(x, y, backbone, heads):
    """Σ_layers mean_hw( w_l · (x̂_l − ŷ_l)² ), x̂ = features / ‖features‖ over channels (float64)."""

    def taps(img):
        h = (img.double() - SHIFT) / SCALE
        out = []
        for index, _, _ in CONVS:
            h = F.relu(F.conv2d(h, backbone[f"features.{index}.weight"].double(), backbone[f"features.{index}.bias"].double(), padding=1))
            if index in TAPPED:
                out.append(h)
            if index in POOLED:
                h = F.max_pool2d(h, 2)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total += (w * (nx - ny) ** 2).sum(1).mean(dim=(1, 2))
    return total


def test_vgg_lpips_is_the_documented_formula(vgg_files):
    lpips = load_lpips(net="vgg", backbone=vgg_files["root"] / VGG16_FILE, heads=vgg_files["root"] / "vgg.pth")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        got = lpips(x, y)
    want = reference_lpips(x, y, vgg_files["backbone"], vgg_files["heads"])
    assert (want > 0).all()
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-4)
    with torch.no_grad():
        assert torch.equal(lpips(x, x.clone()), torch.zeros(2))


def test_minority_scores_with_lpips_vgg(vgg_files, monkeypatch):
    """distance='lpips-vgg' finds the files where they go (TORCH_HOME, the heads' folder) and scores
    as the loaded network does; L2 scores differ."""
    checkpoints = vgg_files["root"] / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / VGG16_FILE).write_bytes((vgg_files["root"] / VGG16_FILE).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(vgg_files["root"] / "torch"))
    monkeypatch.setenv("MINORITY_LPIPS_HEADS", str(vgg_files["root"]))  # a folder holding vgg.pth

    def model(x, t):
        return 0.1 * x

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    schedule = NoiseSchedule.linear(1000)
    named = minority_scores(model, schedule, images, draws=1, distance="lpips-vgg", generator=torch.Generator().manual_seed(3))
    loaded = minority_scores(model, schedule, images, draws=1, distance=load_lpips(net="vgg"), generator=torch.Generator().manual_seed(3))
    l2 = minority_scores(model, schedule, images, draws=1, distance="l2", generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(named, loaded)
    assert named.shape == (3,) and (named > 0).all() and not np.allclose(named, l2)


def test_missing_vgg_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_lpips(net="vgg")
    assert VGG16_FILE in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="'alex' or 'vgg'"):
        load_lpips(net="squeeze")
