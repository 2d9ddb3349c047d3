"""grads: gradient-aware data selection (GrADS) for supervised fine-tuning of LLMs.

    import grads
    selection = grads.select("pool.jsonl", "smollm2-135m-instruct", ratio=0.05)   # grads.api
    scores = grads.score(records, model, tokenizer=tokenizer)
"""

from grads._version import __version__
from grads.errors import GradsError

__all__ = ["GradsError", "Selection", "__version__", "score", "select"]


def __getattr__(name: str):
    """grads.score, grads.select and grads.Selection, imported on first use (the CLI does not need them)."""
    if name in ("score", "select", "Selection"):
        from grads import api

        return getattr(api, name)
    raise AttributeError(f"module 'grads' has no attribute {name!r}")
