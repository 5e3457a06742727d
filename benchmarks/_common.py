"""Set-up the benchmark scripts share: process settings, a private Prefect home, model checks.

Import it first (`import _common` works because a script's own folder is on sys.path): it
applies the product's env defaults before prefect, ray or faiss are imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from minority_synth.env import apply_defaults

apply_defaults()


def private_prefect_home(prefix: str) -> str:
    """A throw-away PREFECT_HOME (removed at exit, also after --help or bad arguments), so a
    benchmark's ephemeral API never touches the user's ~/.prefect."""
    home = tempfile.mkdtemp(prefix=prefix)
    os.environ["PREFECT_HOME"] = home
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def check_model(spec: str) -> None:
    """A bad spec or a missing bundled model: one line and a hint, exit 2, instead of a traceback."""
    from minority_core.models import BUNDLED_DIR, parse_spec

    try:
        scheme, target = parse_spec(spec)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if scheme == "bundled":
        unet = Path(BUNDLED_DIR) / target / "unet"
        if not (unet.is_dir() and any(unet.glob("*.safetensors")) and (unet / "config.json").is_file()):
            print(f"error: the bundled {target} model weights are absent ({unet} is missing or incomplete).\n"
                  f"Run `minority-synth train-demo` to build them, or benchmark another model: --model diffusers:PATH", file=sys.stderr)
            sys.exit(2)
