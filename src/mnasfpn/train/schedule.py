"""The paper's learning-rate shape: linear warm-up, then ×0.1 at ~80% and ~93% of training."""

from __future__ import annotations

from dataclasses import dataclass

WARMUP_START = 0.1  # warm-up begins at this fraction of the peak rate
DECAY_AT = (0.8, 0.93)
DECAY_FACTOR = 0.1


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        """Learning rate for 0-based `step`."""
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.peak_lr * (WARMUP_START + (1 - WARMUP_START) * frac)
        lr = self.peak_lr
        for at in DECAY_AT:
            if step >= round(at * self.total_steps):
                lr *= DECAY_FACTOR
        return lr


def default_warmup(total_steps: int) -> int:
    """5% of training (the paper warms up in epoch 1 of 20), capped at 1000 steps."""
    return max(1, min(1000, round(0.05 * total_steps)))


def default_lr(batch_size: int) -> float:
    """The paper's proxy rate (0.4 at batch 64), scaled linearly with the batch."""
    return 0.4 * batch_size / 64


def bn_momentum(total_steps: int) -> float:
    """Batch-norm moving-average momentum: 0.997 (the TF OD API's) for long runs, lower for
    short ones so the inference statistics have caught up with the weights by the end."""
    return min(0.997, max(0.9, 1 - 10 / max(total_steps, 1)))
