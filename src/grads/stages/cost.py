"""What a selection cost, against the training it is meant to save: the `cost` object of OUT/selection.json.

    warmup_seconds, warmup_examples, warmup_tokens      the warm-up fine-tune (0 at θ0)
    scoring_seconds, scoring_examples, scoring_tokens   the gradient-norm scoring
    full_epoch_seconds                                  one fine-tuning epoch on the whole pool, same recipe
    ratio_to_full_epoch                                 (warm-up + scoring) / full epoch
    ratio_estimated                                     whether the full epoch was estimated, not measured
    full_epoch_from                                     how: measured, steady pace, seconds per token (null at θ0)

The full epoch is measured when the warm-up is one: one epoch on the whole pool with the recipe of the final
fine-tune (the paper's default). Otherwise it is estimated at the warm-up's steady pace: its own seconds, plus the
optimizer steps a full epoch has beyond the warm-up's at the seconds per step after its first (the first step also
bears loading the model and setting up training, which a full epoch pays once too). A warm-up recorded before its
seconds were kept by step is estimated from its seconds per token over the pool's tokens (higher than the pace's
estimate on every fractional warm-up measured: docs/performance.md, "Selection cost"). At θ0 (no warm-up), or
when a proxy (--score-model) warmed up, nothing measured here says what an epoch of the fine-tuned model costs,
and the ratio is null (benchmarks/pipeline_cost.py measures it). Tokens are those of the examples with an answer
token (the others are neither trained on nor scored), prompt and answer both.

The seconds are read from the stages' own records (the warm-up's done.json, OUT/score/timings.json), so a rerun
that reuses both writes the same object, and a folder that adopted another's warm-up and scores reports their cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StageWork:
    seconds: float
    examples: int
    tokens: int


def steady_pace(seconds_by_step: dict[str, float] | None) -> tuple[int, float] | None:
    """(steps, seconds per step after the first) from a warm-up's done.json `seconds_by_step` (the training seconds
    up to each optimizer step); None when fewer than two steps were recorded."""
    steps = sorted((int(step), seconds) for step, seconds in (seconds_by_step or {}).items())
    if len(steps) < 2:
        return None
    (first, at_first), (last, at_last) = steps[0], steps[-1]
    return last, (at_last - at_first) / (last - first)


def trained_tokens(n_tokens: np.ndarray, n_target_tokens: np.ndarray,
                   rows: np.ndarray | None = None) -> tuple[int, int]:
    """(examples, tokens) that a pass over `rows` (all when None) processes: those with an answer token."""
    rows = np.arange(len(n_tokens)) if rows is None else np.asarray(rows)
    kept = rows[n_target_tokens[rows] > 0]
    return int(len(kept)), int(n_tokens[kept].sum())


def selection_cost(warmup: StageWork | None, scoring: StageWork, pool: StageWork, warmup_epochs: float,
                   warmup_fraction: float, proxy: bool = False, pace: tuple[int, float] | None = None,
                   examples_per_step: int | None = None) -> dict:
    """The cost object; `warmup` is None at θ0, and its tokens count every epoch it ran; `pool` holds the examples
    and tokens of one full epoch; `pace` is the warm-up's steady_pace and `examples_per_step` its batch (over every
    rank and accumulated step), which give a full epoch's steps. `proxy`: another model warmed up and scored, so
    its seconds do not measure the fine-tuned model's epoch."""
    full_epoch, estimated, how = None, True, None
    if warmup is not None and warmup.tokens > 0 and not proxy:
        if warmup_fraction >= 1.0 and warmup_epochs == 1.0:
            full_epoch, estimated, how = warmup.seconds, False, "measured"
        elif pace is not None and examples_per_step:
            steps, per_step = pace
            full_steps = math.ceil(pool.examples / examples_per_step)
            full_epoch, how = warmup.seconds + per_step * (full_steps - steps), "steady pace"
        else:
            full_epoch, how = warmup.seconds / warmup.tokens * pool.tokens, "seconds per token"
    warmup = warmup or StageWork(0.0, 0, 0)
    spent = warmup.seconds + scoring.seconds
    return {
        **{f"warmup_{k}": v for k, v in asdict(warmup).items()},
        **{f"scoring_{k}": v for k, v in asdict(scoring).items()},
        "full_epoch_seconds": None if full_epoch is None else round(full_epoch, 1),
        "ratio_to_full_epoch": None if not full_epoch else round(spent / full_epoch, 4),
        "ratio_estimated": estimated,
        "full_epoch_from": how,
    }
