"""What a run asks of the machine it starts on, checked before any work: a CPU per local worker,
memory for a batch, class labels the model has. Called at the edges that start runs (the CLI's
`synthesize`/`sample`, a dataset run), not in config validation: a config is also rebuilt on
other nodes, and a dataset file may be validated on one machine and run on another.

The batch estimate comes from the model's architecture without reading its weights: the UNet is
built on PyTorch's `meta` device from its config.json and one forward counts the bytes autograd
saves per sample. Measured peaks (RSS, in-process, 2-core machine): bundled digits guided 0.78-0.93 MB a
sample against 0.61 MB saved; a 32x32x3 UNet with attention 19 MB against 34 MB; unguided
0.17-0.21 MB and 3.2 MB. Hence guided = 1.5x saved, unguided = 0.35x saved, both at or above
every measurement, plus ~0.5 GB per worker process (torch and the model).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from minority_core.errors import InputError

GUIDED_FACTOR = 1.5  # measured peak / saved bytes ≤ 1.52 (digits), 0.55 (32x32 attention UNet)
UNGUIDED_FACTOR = 0.35  # ≤ 0.34 (digits), 0.09 (32x32)
PROCESS_BYTES = 512 * 2**20  # one worker's torch + model before its first batch (466 MB measured with digits)
GRADIENT_METHODS = ("self-guided", "minority-classifier")


def local_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes this machine can still give (MemAvailable, capped by a cgroup limit); None where unknown."""
    try:
        text = Path("/proc/meminfo").read_text()
        free = int(next(line.split()[1] for line in text.splitlines() if line.startswith("MemAvailable:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def joins_cluster(ray_address: str | None) -> bool:
    return bool(ray_address or os.environ.get("RAY_ADDRESS"))


def check_workers(workers: int, ray_address: str | None) -> None:
    """Local Ray runs one single-threaded worker per CPU: more than the machine has would start
    actors that only wait (a joined cluster caps them to its own CPUs)."""
    cpus = local_cpus()
    if workers > cpus and not joins_cluster(ray_address):
        raise InputError(f"--workers {workers}: this machine has {cpus} CPU(s) and each local worker takes one: use --workers {cpus} or fewer, "
                         "or join a larger Ray cluster with --ray-address")


@lru_cache(maxsize=16)
def unet_config(spec: str) -> dict | None:
    """The diffusers UNet config.json of a bundled:/diffusers: local folder; None for other models."""
    from minority_core.models import BUNDLED_DIR, parse_spec

    scheme, target = parse_spec(spec)
    if scheme not in ("bundled", "diffusers"):
        return None
    folder = BUNDLED_DIR / target if scheme == "bundled" else Path(target)
    for path in (folder / "unet" / "config.json", folder / "config.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def check_class_labels(spec: str, class_labels: tuple[int, ...] | None) -> None:
    """Class labels need a class-conditional model (as its config says), and its classes."""
    config = unet_config(spec)
    if not class_labels or config is None:
        return
    classes = config.get("num_class_embeds") if config.get("class_embed_type") is None else None
    if not classes:
        raise InputError(f"class labels {list(class_labels)} given but {spec} is unconditional (its config has no num_class_embeds): drop them")
    bad = sorted({c for c in class_labels if c >= classes})
    if bad:
        raise InputError(f"class labels {bad} are out of range: {spec} has classes 0…{classes - 1}")


@lru_cache(maxsize=16)
def saved_bytes_per_sample(spec: str) -> int | None:
    """Bytes autograd saves per sample in one forward of the model (UNet2DModel configs), counted on
    the meta device: no weights read, no memory used. None where the architecture is not known here."""
    config = unet_config(spec)
    if config is None or config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        return None
    import torch
    from diffusers import UNet2DModel

    size = config.get("sample_size", 32)
    height, width = (size, size) if isinstance(size, int) else size

    def saved(batch: int) -> int:
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.device("meta"):
            net = UNet2DModel.from_config(config)
            x = torch.empty(batch, config.get("in_channels", 3), height, width, requires_grad=True)
            labels = {"class_labels": torch.zeros(batch, dtype=torch.long)} if config.get("num_class_embeds") else {}
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                net(x, torch.zeros(batch, dtype=torch.long), **labels)
        return total

    return (saved(3) - saved(1)) // 2  # the difference drops the weights, saved once per batch


def check_batch_memory(spec: str, method: str, batch: int, workers: int, device: str) -> None:
    """A batch must fit this machine's memory, `workers` at once: else one line naming the largest that does."""
    if device != "cpu":
        return  # accelerator memory is the device's, checked by the device's own allocator
    per_sample = saved_bytes_per_sample(spec)
    free = available_memory()
    if per_sample is None or free is None:
        return
    per_sample = int(per_sample * (GUIDED_FACTOR if method in GRADIENT_METHODS else UNGUIDED_FACTOR))
    need = workers * (PROCESS_BYTES + batch * per_sample)
    if need <= free:
        return
    largest = (free // workers - PROCESS_BYTES) // per_sample
    fix = f"use --batch-size {largest} or less" if largest >= 1 else "use fewer --workers"
    raise InputError(f"batch of {batch:,} on {workers} worker(s) needs about {need / 2**30:.1f} GiB ({per_sample / 2**20:.2f} MiB a sample for {spec}, "
                     f"{method}, estimated from its architecture) but {free / 2**30:.1f} GiB is available here: {fix}")


def check_fits_here(config) -> None:
    """The checks above for a SynthesisConfig about to run from this machine. The batch is what a
    worker holds at once: at most a shard."""
    ex, out, sampler = config.execution, config.output, config.sampler
    check_class_labels(config.model.spec, sampler.class_labels)
    if ex.workers:
        check_workers(ex.workers, ex.ray_address)
    if not (ex.workers and joins_cluster(ex.ray_address)):  # a cluster's nodes have their own memory
        batch = min(sampler.batch_size, out.shard_size, out.num_samples)
        check_batch_memory(config.model.spec, sampler.method, batch, max(1, min(ex.workers, local_cpus())), ex.device)
