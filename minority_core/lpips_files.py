"""Where LPIPS's weight files are looked for, without importing torch.

The config layer decides `distance="auto"` from whether these files are present (so the choice
is made once, at the edge, and recorded in the run's identity), and `minority_core.diffusion.lpips`
loads them. Two files per backbone, both read weights-only:

- the backbone: torchvision's checkpoint in the torch hub cache, `$TORCH_HOME/hub/checkpoints/`
  (default `~/.cache/torch/hub/checkpoints/`): `alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`;
- the linear heads: `alex.pth` / `vgg.pth` of the installed `lpips` package
  (`pip install lpips --no-deps`), or `$MINORITY_LPIPS_HEADS`: a folder holding them, or a file
  (the AlexNet heads, as before; the VGG heads are then looked for beside it as `vgg.pth`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

Net = Literal["alex", "vgg"]
BACKBONE_FILES: dict[str, str] = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def backbone_path(net: Net = "alex") -> Path:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / BACKBONE_FILES[net]


def heads_path(net: Net = "alex") -> Path | None:
    given = os.environ.get("MINORITY_LPIPS_HEADS")
    if given:
        path = Path(given)
        if path.is_dir():
            return path / f"{net}.pth"
        return path if net == "alex" else path.parent / f"{net}.pth"
    spec = importlib.util.find_spec("lpips")  # locate the package without importing torchvision
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"


def lpips_available(net: Net = "alex") -> bool:
    """Whether both weight files of this LPIPS backbone are on disk."""
    heads = heads_path(net)
    return backbone_path(net).is_file() and heads is not None and heads.is_file()
