"""`minority-synth doctor`: which weight files and accelerators this machine has, and what each unlocks.

Every optional capability of the product rests on a file we never download (LPIPS, Inception,
ADM checkpoints), an optional package (transformers) or hardware; the doctor looks in the exact places the loaders look, offline,
so "missing" here means the matching command would fail with the same path in its error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from minority_core.diffusion.lpips import alexnet_weights_path, lpips_heads_path
from minority_core.models import BUNDLED_DIR

# ADM checkpoint file (as published) → the preset that loads it.
ADM_CHECKPOINTS = {
    "celeba64.pt": "celeba64",
    "lsun_bedroom.pt": "lsun256",
    "64x64_diffusion.pt": "imagenet64",
    "64_256_upsampler.pt": "imagenet64to256",
}


@dataclass(frozen=True)
class Check:
    """One requirement: what it is, where (or how) it is looked for, whether found, what it enables."""

    name: str
    looks_for: str
    present: bool
    unlocks: str
    detail: str = ""


def models_dir() -> Path:
    """Where ADM checkpoints are expected: $MINORITY_MODELS_DIR or ~/.cache/minority-synth/models."""
    return Path(os.environ.get("MINORITY_MODELS_DIR") or Path.home() / ".cache" / "minority-synth" / "models")


def doctor_report() -> list[Check]:
    """All checks, in the order the table shows them. Reads the file system only; no network."""
    return [
        *_lpips_checks(),
        _inception_check(),
        *_adm_checks(),
        *_bundled_checks(),
        _transformers_check(),
        _faiss_gpu_check(),
        _torch_cuda_check(),
    ]


def _files_check(name: str, paths: list[Path], unlocks: str) -> Check:
    """Present when any path is a file (the first found is shown, else all the places looked)."""
    found = [p for p in paths if p.is_file()]
    return Check(name, " or ".join(str(p) for p in (found[:1] or paths)), bool(found), unlocks)


def _folder_check(name: str, folder: Path, files: list[str], unlocks: str) -> Check:
    """Present when every file exists under folder; the detail names the missing ones."""
    missing = [f for f in files if not (folder / f).is_file()]
    detail = f"missing {', '.join(missing)}" if 0 < len(missing) < len(files) else ""
    return Check(name, f"{folder}/{{{', '.join(files)}}}", not missing, unlocks, detail)


def _lpips_checks() -> list[Check]:
    heads = lpips_heads_path()
    alexnet = _files_check("LPIPS AlexNet backbone", [alexnet_weights_path()], "--distance lpips")
    if heads is None:
        missing = Check("LPIPS linear heads", "alex.pth of the lpips package or $MINORITY_LPIPS_HEADS", False, "--distance lpips", "lpips not installed")
        return [alexnet, missing]
    return [alexnet, _files_check("LPIPS linear heads", [heads], "--distance lpips")]


def _inception_check() -> Check:
    """Asks the extractor registry, so the doctor and FID look for the weights in the same place."""
    from minority_core.metrics.features.registry import extractor_info

    pool3 = extractor_info("inception-pool3")
    return Check("Inception-V3 (FID)", str(pool3.weights), pool3.weights_present, "FID/sFID with --extractor inception-pool3")


def _adm_checks() -> list[Check]:
    folder = models_dir()
    checks = [
        _files_check(f"ADM {preset}", [folder / filename], f"--model adm:{folder / filename} --preset {preset}")
        for filename, preset in ADM_CHECKPOINTS.items()
    ]
    # The upsampler is only useful with the 64 px base model: say so.
    upsampler = checks[-1]
    checks[-1] = Check(upsampler.name, upsampler.looks_for, upsampler.present,
                       "ImageNet-256 two-stage sampling (with 64x64_diffusion.pt, --preset imagenet64to256)")
    return checks


def _bundled_checks() -> list[Check]:
    digits = BUNDLED_DIR / "digits"
    unet = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    return [
        _folder_check("bundled demo model", digits, unet, "--model bundled:digits, minority-synth demo"),
        _files_check("bundled digit classifier", [digits / "classifier.safetensors"], "digit labels and the demo-classifier feature extractor"),
    ]


def _transformers_check() -> Check:
    """latent: pipelines name their text encoder's class; Stable Diffusion's is transformers' CLIPTextModel."""
    import importlib.util

    present = importlib.util.find_spec("transformers") is not None
    detail = "" if present else "pip install 'minority-synth[text]'"
    return Check("transformers (text encoders)", "import transformers", present, "--model latent:PATH with a CLIP text encoder (Stable Diffusion layout)", detail)


def _faiss_gpu_check() -> Check:
    try:
        import faiss
    except ImportError:
        return Check("FAISS GPUs", "faiss.get_num_gpus() > 0", False, "kNN metrics on GPU", "faiss not installed")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    detail = f"{gpus} GPU(s)" + ("" if gpus else " (faiss-cpu build or no CUDA device)")
    return Check("FAISS GPUs", "faiss.get_num_gpus() > 0", gpus > 0, "kNN metrics on GPU (knn device 'gpu')", detail)


def _torch_cuda_check() -> Check:
    import torch

    available = torch.cuda.is_available()
    detail = f"{torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}" if available else f"torch {torch.__version__}"
    return Check("torch CUDA", "torch.cuda.is_available()", available, "--device cuda (sampling, features)", detail)


def format_report(checks: list[Check]) -> str:
    """A plain fixed-width table, one line per check, and a count of what is present."""
    header = ("status", "item", "looks for", "unlocks")
    rows = [("ok" if c.present else "MISSING", c.name, c.looks_for + (f" [{c.detail}]" if c.detail else ""), c.unlocks) for c in checks]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(3)]

    def line(row: tuple[str, str, str, str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3]

    rule = "  ".join("-" * w for w in widths) + "  " + "-" * len(header[3])
    present = sum(c.present for c in checks)
    return "\n".join([line(header), rule, *map(line, rows), f"{present} of {len(checks)} present"])
