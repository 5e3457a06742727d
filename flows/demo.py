"""The embedded default: bundled digits model, standard vs minority-guided arms, scored and reported.

`minority-synth demo` (the README's first command) runs this on Prefect's ephemeral API with
local Ray and a local folder; no server is started by hand. Rerunning resumes.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.scoring import ensure_reference, report
from flows.synthesize import synthesize
from minority_core.config import SynthesisConfig

DEMO_MODEL = "bundled:digits"
DEMO_EXTRACTOR = "demo-classifier"


@flow(name="demo")
def demo(out: str, num_samples: int = 512, shard_size: int = 128, workers: int = 2, seed: int = 0, guidance_scale: float | None = None, steps: int | None = None) -> dict:
    """Reference set → standard arm → guided arm (same seeds) → scores → one report."""
    logger = get_run_logger()
    out = out.rstrip("/")
    reference = f"{out}/reference"
    ensure_reference(reference, DEMO_EXTRACTOR, "bundled:digits", None)
    summaries = {}
    for arm, scale in (("standard", 0.0), ("guided", guidance_scale)):
        config = SynthesisConfig.from_options(
            model=DEMO_MODEL, num_samples=num_samples, shard_size=shard_size, out=f"{out}/{arm}", arm=arm,
            guidance_scale=scale, steps=steps, seed=seed, workers=workers, extractor=DEMO_EXTRACTOR, reference=reference,
        )
        summaries[arm] = synthesize(config)
    seconds = [summaries[a]["seconds_per_sample"] for a in ("standard", "guided")]
    result = report([f"{out}/standard", f"{out}/guided"], reference, out, title="minority-synth demo: standard vs minority-guided digits", seconds=None if None in seconds else [s * num_samples for s in seconds])
    logger.info("demo report: %s", result["report"])
    return {"report": result["report"], "table": result["table"], "runs": summaries}
