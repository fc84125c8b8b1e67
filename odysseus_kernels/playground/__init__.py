"""The playground: every strategy on the same model, side by side (``python -m odysseus_kernels.playground``)."""
from .runner import STRATEGIES, RunConfig, run_strategy

__all__ = ["STRATEGIES", "RunConfig", "run_strategy"]
