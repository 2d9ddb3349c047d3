"""Arms of a grid: a method with modifiers such as `@theta0` or `@full-steps`, and the name of each run."""

from __future__ import annotations

MODIFIERS = ("theta0", "full-steps")


def split_arm(arm: str) -> tuple[str, tuple[str, ...]]:
    """'grads@theta0@full-steps' -> ('grads', ('theta0', 'full-steps'))."""
    method, *modifiers = arm.split("@")
    return method, tuple(modifiers)


def run_name(method: str, ratio: float | None, seed: int) -> str:
    return f"{method}-s{seed}" if ratio is None else f"{method}-{ratio:g}-s{seed}"
