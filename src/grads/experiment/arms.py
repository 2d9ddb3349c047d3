"""Arms of a grid: a method with modifiers such as `@theta0` or `@full-steps`, and the name of each run."""

from __future__ import annotations

from pathlib import Path

# theta0: scores of the base model (no warm-up); full-steps: the optimizer steps of one full-pool run (equal
# compute); own-warmup: scores after a warm-up of the run's own seed (sample and order), so that seed-paired
# intervals cover the selection's own variance (seed 0's is the shared warm-up)
MODIFIERS = ("theta0", "full-steps", "own-warmup")


def scores_source(modifiers: tuple[str, ...], seed: int) -> str:
    """Which score table an arm selects from: 'shared' (the experiment's warm-up, seed 0), 'theta0' (the base
    model), or 'seed-N' (the warm-up of seed N; seed 0's is the shared one)."""
    if "theta0" in modifiers:
        return "theta0"
    return f"seed-{seed}" if "own-warmup" in modifiers and seed != 0 else "shared"


def selection_folder(out: Path, source: str) -> Path:
    """The selection folder of a score source: OUT/select (shared), OUT/select-theta0, OUT/select-seed-N."""
    return out / ("select" if source == "shared" else f"select-{source}")


def split_arm(arm: str) -> tuple[str, tuple[str, ...]]:
    """'grads@theta0@full-steps' -> ('grads', ('theta0', 'full-steps'))."""
    method, *modifiers = arm.split("@")
    return method, tuple(modifiers)


def run_name(method: str, ratio: float | None, seed: int) -> str:
    return f"{method}-s{seed}" if ratio is None else f"{method}-{ratio:g}-s{seed}"
