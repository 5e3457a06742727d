"""Minority guidance (Um, Lee & Ye, "Don't Play Favorites: Minority Guidance for Diffusion
Models", ICLR 2024, arXiv:2301.12334; code github.com/soobin-um/minority-guidance).

The predecessor of the self-guided method (docs/DESIGN.md §1): it needs a classifier trained offline.

1. `minority_scores`: per *real* sample x0, l(x0) = E_ε d(x0, x̂0(x_s)), x_s = √ᾱ_s x0 + √(1−ᾱ_s) ε,
   at grid index s = 60 of a 100-step respaced grid (≈ 0.6 T), averaged over 5 draws of ε — the
   authors' `construct_ms_dataset.py` (`timestep_respacing="100"`, `perturb_t=60`, `n_iter=5`).
   Like theirs, x̂0 is clipped to [−1, 1] (their `p_mean_variance` default). They use LPIPS-VGG:
   `"lpips-vgg"`; also `"lpips"` (LPIPS-AlexNet) and `"l2"` (unsquared per-sample norm, no weights
   needed; the default, since the LPIPS files may be absent). LPIPS weights come from disk
   (`minority_core.lpips_files`), or pass a loaded `load_lpips(net="vgg", backbone=..., heads=...)`.
2. `quantile_levels`: L quantile bins, thresholds q_j = quantile(l, (j+1)/L), label j for
   q_{j−1} < l ≤ q_j (their labelling loop); level L−1 holds the highest scores.
3. `LevelClassifier` + `train_level_classifier`: a noise-conditional classifier p(level | x_t, t)
   trained with cross-entropy on x_t = q(x_t | x0), t uniform on the *training* schedule
   (0 … T−1), as their `classifier_train.py` (`noised=True`, uniform schedule sampler). Theirs is
   an ADM encoder head over a frozen ADM ImageNet classifier's features; ours is a tiny CNN with
   a timestep embedding (adequate for the 8×8 demo; a weaker classifier than theirs on ADM data).
4. Guided sampling: `ClassifierGuidanceTerm` (`minority_core.baselines.classifier_guidance`), the
   Dhariwal & Nichol classifier guidance toward the top level, added to the plain ancestral
   sampler. Reference scale s = 3.5 (LSUN-Bedrooms, class 99 of 100).

This module holds steps 1-3 (the offline preparation: scores, levels, the trained classifier).

Levels on the demo: the authors use L = 100 on datasets of 10⁵+ images. The digits model was
trained on 1203 images: 100 levels would leave ~12 images per level (the top level, the one we
guide toward, would be 12 images), far too few for a noise-conditional classifier to separate
adjacent levels, so the demo uses `DIGITS_LEVELS = 10` (~120 per level). Measured (l2 scores,
seed 0): the top decile holds 11.6 % rare-class digits (8, 9) against 4.0 % in the split, and the
rare share rises almost monotonically over the levels (0 % in the bottom three).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minority_core.diffusion.guidance import Distance, l2_distance
from minority_core.diffusion.model_api import DenoisingModel, call_model, model_device
from minority_core.diffusion.noise import draw_noise
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

# Reference settings (authors' code) and the demo's.
SCORE_STEPS = 100
SCORE_PERTURB_INDEX = 60
SCORE_DRAWS = 5
DEFAULT_LEVELS = 100
DIGITS_LEVELS = 10

WEIGHTS_FILE = "level_classifier.safetensors"
CONFIG_FILE = "level_classifier.json"
FORMAT = "minority-level-classifier/1"


# --------------------------------------------------------------------------- minority scores


def minority_scores(
    model: DenoisingModel,
    schedule: NoiseSchedule,
    images: torch.Tensor | np.ndarray,
    steps: int = SCORE_STEPS,
    perturb_index: int = SCORE_PERTURB_INDEX,
    draws: int = SCORE_DRAWS,
    distance: Literal["l2", "lpips", "lpips-vgg"] | Distance = "l2",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    class_labels: torch.Tensor | None = None,
    clip_range: tuple[float, float] | None = (-1.0, 1.0),
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Minority score of each real image (float NCHW in [−1, 1]): float64 [N], higher = rarer.

    Per batch, the ε draws are taken in order draw 1 … draws, each of the batch's shape, from
    `generator` (noise drawn on the generator's device), so a seed fixes the scores.
    """
    if not callable(distance) and distance not in ("l2", "lpips", "lpips-vgg"):
        raise InputError(f"distance must be 'l2', 'lpips' (AlexNet), 'lpips-vgg' or a distance function, got {distance!r}")
    if not _is_int(draws) or draws < 1:
        raise InputError(f"draws must be an integer ≥ 1, got {draws!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    grid = schedule.respace(steps)
    if not _is_int(perturb_index) or not 0 <= perturb_index < len(grid):
        raise InputError(f"perturb_index must be an integer in [0, {len(grid) - 1}] for {steps} steps, got {perturb_index!r}")
    device = torch.device(device) if device is not None else model_device(model)
    images = _as_tensor(images)
    if images.dim() < 2 or not images.is_floating_point():
        raise InputError(f"images must be a float batch (N, C, ...) in [-1, 1], got {images.dtype} shape {tuple(images.shape)}")
    if class_labels is not None and class_labels.shape != (images.shape[0],):
        raise InputError(f"class_labels must have shape ({images.shape[0]},), got {tuple(class_labels.shape)}")
    if callable(distance):
        dist = distance
    elif distance == "l2":
        dist = l2_distance
    else:
        from minority_core.diffusion.lpips import load_lpips

        dist = load_lpips(device, "vgg" if distance == "lpips-vgg" else "alex")

    scores = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x0 = images[start : start + batch_size].to(device=device, dtype=torch.float32)
            y = None if class_labels is None else class_labels[start : start + batch_size].to(device)
            total = torch.zeros(x0.shape[0], dtype=torch.float64, device=device)
            for _ in range(draws):
                noise = draw_noise(x0.shape, generator, device)
                x_s = grid.q_sample(x0, perturb_index, noise)
                x0_hat = grid.predict_x0(x_s, perturb_index, call_model(model, x_s, grid, perturb_index, None if y is None else {"y": y}).eps)
                if clip_range is not None:
                    x0_hat = x0_hat.clamp(*clip_range)
                total += dist(x0, x0_hat).double()
            scores.append((total / draws).cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def quantile_levels(scores: np.ndarray | torch.Tensor, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """int64 labels 0 … levels−1 by quantile binning; level levels−1 holds the highest scores.

    Thresholds q_j = quantile(scores, (j+1)/levels) (linear interpolation, as torch.quantile);
    a score gets the first j with score ≤ q_j (the authors' labelling loop, ties included).
    """
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
        raise InputError(f"scores must be a non-empty 1-D array of finite values, got shape {scores.shape}")
    if not _is_int(levels) or levels < 2:
        raise InputError(f"levels must be an integer ≥ 2, got {levels!r}")
    thresholds = level_thresholds(scores, levels)
    return np.searchsorted(thresholds, scores, side="left").astype(np.int64)


def level_thresholds(scores: np.ndarray, levels: int) -> np.ndarray:
    """The upper edges q_0 … q_{L−1} of the quantile bins (q_{L−1} = max score)."""
    return np.quantile(np.asarray(scores, dtype=np.float64), np.arange(1, levels + 1) / levels)


# --------------------------------------------------------------------------- the classifier


class LevelClassifier(nn.Module):
    """p(level | x_t, t): a small CNN over x_t whose blocks are shifted by a timestep embedding.

    t is the integer timestep on the diffusion model's *original* grid (0 … num_timesteps−1),
    embedded sinusoidally (ADM's `timestep_embedding`) and passed through a 2-layer MLP. Each
    resolution has one conv block (conv → GroupNorm → + t-projection → SiLU); a stride-2 conv
    halves the resolution between them; global average pooling and a linear head give logits.
    """

    def __init__(self, in_channels: int = 1, num_levels: int = DIGITS_LEVELS, width: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), time_dim: int = 64, num_timesteps: int = 1000) -> None:
        super().__init__()
        if num_levels < 2:
            raise InputError(f"num_levels must be ≥ 2, got {num_levels}")
        self.config = {
            "in_channels": int(in_channels), "num_levels": int(num_levels), "width": int(width),
            "channel_mults": [int(m) for m in channel_mults], "time_dim": int(time_dim), "num_timesteps": int(num_timesteps),
        }
        self.num_levels = int(num_levels)
        self.time_dim = int(time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), nn.SiLU(), nn.Linear(2 * time_dim, 2 * time_dim))
        channels = [width * m for m in channel_mults]
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.t_proj = nn.ModuleList()
        self.downs = nn.ModuleList()
        for k, c in enumerate(channels):
            self.blocks.append(nn.Conv2d(c, c, 3, padding=1))
            self.norms.append(nn.GroupNorm(min(8, c), c))
            self.t_proj.append(nn.Linear(2 * time_dim, c))
            if k + 1 < len(channels):
                self.downs.append(nn.Conv2d(c, channels[k + 1], 3, stride=2, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(min(8, channels[-1]), channels[-1]), nn.SiLU())
        self.out = nn.Linear(channels[-1], num_levels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        h = self.stem(x)
        for k, (conv, norm, proj) in enumerate(zip(self.blocks, self.norms, self.t_proj)):
            h = h + F.silu(norm(conv(h)) + proj(temb)[:, :, None, None])
            if k < len(self.downs):
                h = self.downs[k](h)
        return self.out(self.head(h).mean(dim=(2, 3)))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's sinusoidal embedding of integer timesteps: [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def train_level_classifier(
    model_schedule: NoiseSchedule,
    images: torch.Tensor | np.ndarray,
    levels: np.ndarray | torch.Tensor,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    num_levels: int | None = None,
    width: int = 32,
    weight_decay: float = 0.0,
    anneal_lr: bool = True,
    device: torch.device | str = "cpu",
    classifier: LevelClassifier | None = None,
    progress: bool = False,
) -> LevelClassifier:
    """Train a `LevelClassifier` on noisy x_t, t ~ U{0 … T−1} on `model_schedule` (the model's
    training schedule), x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε; AdamW, lr linearly annealed to 0 if asked
    (as the authors' `--anneal_lr True`). Returns the classifier in eval mode, on `device`;
    `classifier.train_log` holds (step, mean loss over the last ≤ 50 steps) every 50 steps.
    """
    if not _is_int(steps) or steps < 1:
        raise InputError(f"steps must be an integer ≥ 1, got {steps!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise InputError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    device = torch.device(device)
    x_all = _as_tensor(images).to(device, torch.float32)
    y_all = _as_tensor(levels).to(device, torch.long)
    if x_all.dim() != 4 or y_all.shape != (x_all.shape[0],):
        raise InputError(f"images must be NCHW and levels [N]; got {tuple(x_all.shape)} and {tuple(y_all.shape)}")
    n_levels = int(num_levels if num_levels is not None else (classifier.num_levels if classifier is not None else int(y_all.max()) + 1))
    if y_all.min() < 0 or y_all.max() >= n_levels:
        raise InputError(f"levels must lie in [0, {n_levels - 1}]")
    T = len(model_schedule)  # noqa: N806 - the paper's symbol
    torch.manual_seed(seed)  # parameter initialisation
    if classifier is None:
        classifier = LevelClassifier(x_all.shape[1], n_levels, width=width, num_timesteps=T)
    classifier = classifier.to(device).train()
    g = torch.Generator(device="cpu").manual_seed(seed)
    sqrt_abar = torch.tensor(np.sqrt(model_schedule.alphas_cumprod), dtype=torch.float32, device=device)
    sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - model_schedule.alphas_cumprod), dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    classifier.train_log = []
    recent: list[float] = []
    from tqdm.auto import tqdm

    for step in tqdm(range(steps), desc="level classifier", disable=not progress, leave=False):
        if anneal_lr:
            for group in opt.param_groups:
                group["lr"] = lr * (1 - step / steps)
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=g).to(device)
        t = torch.randint(0, T, (batch_size,), generator=g).to(device)
        noise = torch.randn(x_all[idx].shape, generator=g).to(device)
        shape = (-1, *([1] * (x_all.dim() - 1)))
        x_t = sqrt_abar[t].view(shape) * x_all[idx] + sqrt_1m_abar[t].view(shape) * noise
        loss = F.cross_entropy(classifier(x_t, t), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            classifier.train_log.append((step + 1, sum(recent) / len(recent)))
            recent = []
    return classifier.eval()


def level_accuracy(
    classifier: LevelClassifier,
    model_schedule: NoiseSchedule,
    images: torch.Tensor | np.ndarray,
    levels: np.ndarray | torch.Tensor,
    t: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of the classifier on x_t at one original-grid timestep t (a diagnostic)."""
    x = _as_tensor(images).to(device, torch.float32)
    y = _as_tensor(levels).to(device, torch.long)
    g = torch.Generator().manual_seed(seed)
    abar = float(model_schedule.alphas_cumprod[t])
    x_t = math.sqrt(abar) * x + math.sqrt(1 - abar) * torch.randn(x.shape, generator=g).to(device)
    with torch.no_grad():
        logits = classifier(x_t, torch.full((x.shape[0],), t, dtype=torch.long, device=device))
    return float((logits.argmax(1) == y).float().mean())


# --------------------------------------------------------------------------- persistence


def save_level_classifier(classifier: LevelClassifier, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write `level_classifier.safetensors` (weights only) and `level_classifier.json` (the
    constructor config + `metadata`, e.g. levels, thresholds, score settings) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = {"format": FORMAT, "config": classifier.config, "metadata": _jsonable(metadata or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_level_classifier(directory: str | Path, device: torch.device | str = "cpu") -> LevelClassifier:
    """Rebuild a `LevelClassifier` from its JSON config and load its safetensors weights (strict);
    eval mode; `classifier.metadata` holds the saved metadata."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise InputError(f"no level classifier in {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    data = json.loads(config_path.read_text())
    if data.get("format") != FORMAT:
        raise InputError(f"{config_path} is not a level-classifier config (format {data.get('format')!r}, expected {FORMAT!r})")
    cfg = dict(data["config"])
    cfg["channel_mults"] = tuple(cfg["channel_mults"])
    classifier = LevelClassifier(**cfg)
    try:  # a pickle (or anything else) under the safetensors name is refused, never unpickled
        classifier.load_state_dict(load_file(str(weights_path)), strict=True)
    except Exception as exc:  # safetensors' own error type, a shape/key mismatch, a read error
        raise InputError(f"{weights_path} does not load as this classifier's safetensors weights ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]}): retrain it, or save it with save_level_classifier") from None
    classifier.metadata = data.get("metadata", {})
    return classifier.to(device).eval()


# --------------------------------------------------------------------------- helpers


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_tensor(values) -> torch.Tensor:
    """A tensor view of an array or tensor; read-only numpy (e.g. decoded shards) is copied."""
    if isinstance(values, torch.Tensor):
        return values.detach()
    values = np.ascontiguousarray(values)
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value
