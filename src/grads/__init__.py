"""GrADS: gradient-aware data selection for supervised fine-tuning of LLMs."""

from grads.errors import GradsError

__version__ = "0.1.0"
__all__ = ["GradsError", "__version__"]
