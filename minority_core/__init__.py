"""minority_core: self-guided minority sampling with diffusion models, and the metrics to score it.

Pure torch/numpy/pyarrow: this package never imports Prefect or Ray, so it can run inside any
worker (a Ray actor, a notebook, a plain script).
"""

__version__ = "0.1.0"
