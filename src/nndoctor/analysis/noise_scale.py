"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", appendix A.1), from gradients at two batch sizes.

A minibatch gradient of size B has E|G_B|² = |G|² + tr(Σ)/B, where Σ is the per-example
gradient covariance. Averaging |G_B|² over a few batches at a small size b and a big size
B gives unbiased estimates of both terms:
    |G|²  ≈ (B·|G_B|² − b·|G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)
Batches much larger than B_simple buy almost no extra progress per step: the gradient is
already nearly exact, so the extra examples are wasted compute (and fewer steps per epoch).
"""
from __future__ import annotations

import math
import time

import torch

from .probe import LossProbe

SMALL = 8            # rows in a small batch
SMALL_BATCHES = 32   # small batches averaged
BIG_BATCHES = 4      # big batches averaged (each up to the fixed batch's size / BIG_BATCHES)


def squared_norm(probe: LossProbe, params: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    grads = torch.autograd.grad(probe.loss(params, x=x, y=y), list(params.values()), allow_unused=True)
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None))


def noise_scale(probe: LossProbe, params: dict | None = None, seed: int = 0, budget: float | None = None,
                small_batches: int = SMALL_BATCHES) -> dict:
    """B_simple at `params` (default: the current weights) and the two estimates behind it,
    from the probe's rows; {} when there are too few rows to tell two sizes apart. No
    B_simple when the estimate of |G|² is not positive: the gradient is all noise there."""
    params = probe.params if params is None else {n: p.detach().requires_grad_() for n, p in params.items()}
    rows = probe.x.shape[0]
    big = rows // BIG_BATCHES
    if big < 4 * SMALL:
        return {}
    generator = torch.Generator().manual_seed(seed)
    deadline = budget and time.perf_counter() + budget

    def mean_squared_norm(size: int, count: int) -> float:
        """The mean over `count` batches (at least 4; fewer than `count` past the deadline)."""
        order = torch.randperm(rows, generator=generator)
        values = []
        for i in range(count):
            if i >= 4 and deadline and time.perf_counter() > deadline:
                break
            idx = order[(i * size) % (rows - size + 1):][:size].to(probe.x.device)
            values.append(squared_norm(probe, params, probe.x[idx], probe.y[idx]))
        return sum(values) / len(values)

    small_sq = mean_squared_norm(SMALL, small_batches)
    big_sq = mean_squared_norm(big, BIG_BATCHES)
    true_sq = (big * big_sq - SMALL * small_sq) / (big - SMALL)
    noise = (small_sq - big_sq) / (1.0 / SMALL - 1.0 / big)
    result = {"small_batch": SMALL, "big_batch": big, "small_sq_norm": small_sq, "big_sq_norm": big_sq,
              "gradient_sq_norm": true_sq, "trace_covariance": noise}
    if true_sq > 0 and noise > 0 and math.isfinite(noise / true_sq):
        result["b_simple"] = noise / true_sq
    return result
