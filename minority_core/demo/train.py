"""Train the bundled demo: a small diffusers UNet on imbalanced digits, and a digit classifier.

Reproducible from a seed (same torch build and thread count give the same weights). The
output folder is a diffusers pipeline layout (unet/, scheduler/) plus classifier.safetensors
and a model card, which `bundled:digits` and `diffusers:FOLDER` both load.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minority_core.demo.digits import IMAGE_SIZE, RARE_CLASSES, RARE_SHARE, split_digits
from minority_core.diffusion.schedule import NoiseSchedule
from minority_core.errors import InputError

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
    attention_head_dim=32,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small", prediction_type="epsilon", clip_sample=True)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    unet_steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    classifier_epochs: int = 40

    def __post_init__(self) -> None:
        if self.unet_steps < 1 or self.batch_size < 1 or self.classifier_epochs < 1:
            raise InputError("unet_steps, batch_size and classifier_epochs must all be ≥ 1")
        if not 0 < self.lr < 1 or not 0 <= self.ema_decay < 1:
            raise InputError("lr must be in (0, 1) and ema_decay in [0, 1)")


def train_unet(config: TrainConfig, log=print) -> tuple[torch.nn.Module, dict]:
    """ε-prediction training on the imbalanced split; returns the EMA model and its statistics."""
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(config.seed)
    data = torch.from_numpy(split_digits(config.seed).train_images)
    schedule = NoiseSchedule.cosine(SCHEDULER_CONFIG["num_train_timesteps"])
    sqrt_abar = torch.tensor(np.sqrt(schedule.alphas_cumprod), dtype=torch.float32)
    sqrt_one_minus = torch.tensor(np.sqrt(1 - schedule.alphas_cumprod), dtype=torch.float32)
    unet = UNet2DModel(**UNET_CONFIG)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, foreach=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0, foreach=True)
    warmup = min(200, config.unet_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    generator = torch.Generator().manual_seed(config.seed)
    losses, start = [], time.monotonic()
    for step in range(config.unet_steps):
        idx = torch.randint(len(data), (config.batch_size,), generator=generator)
        x0 = data[idx]
        t = torch.randint(len(schedule), (config.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_one_minus[t].view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(unet(x_t, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        if (step + 1) % 500 == 0 or step + 1 == config.unet_steps:
            log(f"unet step {step + 1}/{config.unet_steps}  loss {np.mean(losses[-500:]):.4f}  {time.monotonic() - start:.0f}s")
    ema.copy_to(unet.parameters())
    stats = {
        "steps": config.unet_steps,
        "final_loss_last_500": float(np.mean(losses[-500:])),
        "seconds": round(time.monotonic() - start, 1),
        "parameters": sum(p.numel() for p in unet.parameters()),
        "train_images": len(data),
    }
    return unet.eval(), stats


def train_classifier(config: TrainConfig, log=print) -> tuple[torch.nn.Module, dict]:
    """The digit classifier on the *balanced* training split (±1 px shifts as augmentation)."""
    from minority_core.demo.classifier import fit_digit_classifier

    split = split_digits(config.seed, imbalanced=False)
    x, y = torch.from_numpy(split.train_images), torch.from_numpy(split.train_labels)
    start = time.monotonic()
    model = fit_digit_classifier(x, y, config.classifier_epochs, config.seed, shift_augment=True)
    with torch.no_grad():
        pred = model(torch.from_numpy(split.test_images)).argmax(1).numpy()
    accuracy = float((pred == split.test_labels).mean())
    log(f"classifier: {config.classifier_epochs} epochs, held-out accuracy {accuracy:.3f}")
    return model, {"epochs": config.classifier_epochs, "test_accuracy": accuracy, "seconds": round(time.monotonic() - start, 1), "train_images": len(x)}


def train_demo(out_dir: Path, config: TrainConfig = TrainConfig(), log=print) -> dict:
    """Train both models and write the bundled folder (weights as safetensors + model card)."""
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    classifier, classifier_stats = train_classifier(config, log)
    unet, unet_stats = train_unet(config, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(out_dir / "scheduler")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(out_dir / "classifier.safetensors"))
    stats = {"config": asdict(config), "unet": unet_stats, "classifier": classifier_stats, "torch": torch.__version__}
    (out_dir / "training.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    (out_dir / "README.md").write_text(_model_card(stats))
    return stats


def _model_card(stats: dict) -> str:
    u, c, cfg = stats["unet"], stats["classifier"], stats["config"]
    return f"""# bundled:digits

The product's embedded demo model. Built by `minority-synth train-demo` (seed {cfg['seed']}, torch {stats['torch']}).

## Diffusion model (`unet/`, `scheduler/`)
- Data: scikit-learn's `load_digits` (8×8, scaled to [−1, 1]), stratified 80/20 split (seed {cfg['seed']});
  in the training split classes {', '.join(map(str, RARE_CLASSES))} are cut to {RARE_SHARE:.0%} each: {u['train_images']} images.
- Model: diffusers `UNet2DModel`, {u['parameters']:,} parameters, ε-prediction, cosine schedule, T = 1000, fixed-small variance.
- Training: {u['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, EMA {cfg['ema_decay']}; final loss (mean of last 500 steps) {u['final_loss_last_500']:.4f}; {u['seconds']:.0f} s on this machine's CPU.

## Digit classifier (`classifier.safetensors`)
- Small CNN (`minority_core.demo.classifier`), trained on the *balanced* training split ({c['train_images']} images), {c['epochs']} epochs.
- Held-out accuracy {c['test_accuracy']:.3f} on the balanced test split. Labels generated samples; its 64-d penultimate layer is the demo feature extractor.
"""
