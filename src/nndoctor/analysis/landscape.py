"""The loss surface around the path training took, on a fixed batch.

- Line (Goodfellow, Vinyals & Saxe 2015): the loss at (1-α)·θ₀ + α·θ₁ from the initial
  weights θ₀ (α=0) to the final θ₁ (α=1), a little beyond both ends. A monotone descent
  means no hill stood between start and end; a bump above the straight chord is a barrier
  the optimizer went around.
- Plane (Li et al. 2018): the loss at θ₁ + a·d₁ + b·d₂ for two random directions, each
  filter-normalized (every row of a weight gets the norm of the same row of θ₁; biases and
  other 1-D parameters get 0), so the picture's scale is comparable across networks.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .probe import LossProbe

LINE_POINTS = 29          # α from -0.2 to 1.2 in steps of 0.05
LINE_RANGE = (-0.2, 1.2)
PLANE_POINTS = 21         # a 21 x 21 grid: 441 forward passes of the fixed batch
PLANE_SPAN = 1.0          # ±1 filter norm in each direction


def _safe(value: torch.Tensor) -> float:
    v = float(value)
    return v if math.isfinite(v) else float("nan")


@torch.no_grad()
def line(probe: LossProbe, initial: dict[str, torch.Tensor]) -> dict:
    """The loss along the straight line from `initial` to the current weights."""
    final = probe.detached()
    start = {n: initial[n].to(final[n]) for n in final if n in initial}
    missing = [n for n in final if n not in start]
    if missing:
        raise KeyError(f"initial weights lack {', '.join(missing[:3])}")
    alphas = np.round(np.linspace(*LINE_RANGE, LINE_POINTS), 4)
    losses = [_safe(probe.loss({n: torch.lerp(start[n], final[n], float(a)) for n in final})) for a in alphas]
    return {"alpha": alphas.tolist(), "loss": losses, **_shape(alphas, np.asarray(losses))}


def _shape(alphas: np.ndarray, losses: np.ndarray) -> dict:
    """Monotone descent from start to end, and the largest rise above the chord between them."""
    inside = (alphas >= 0) & (alphas <= 1)
    a, v = alphas[inside], losses[inside]
    if not np.isfinite(v).all():
        return {"monotone": False, "barrier": float("nan"), "start": float(v[0]), "end": float(v[-1])}
    chord = v[0] + (v[-1] - v[0]) * (a - a[0]) / (a[-1] - a[0])
    scale = max(abs(v[0] - v[-1]), 1e-12)
    rises = np.diff(v)
    return {"monotone": bool((rises <= 1e-3 * scale).all()), "barrier": float(max(0.0, (v - chord).max())),
            "start": float(v[0]), "end": float(v[-1])}


def filter_normalized(params: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random direction scaled row by row to the norm of the weights' rows (Li et al. 2018)."""
    direction = {}
    for name, p in params.items():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator).to(p)
        rows, d_rows = p.reshape(p.shape[0], -1), d.reshape(p.shape[0], -1)
        scale = rows.norm(dim=1, keepdim=True) / (d_rows.norm(dim=1, keepdim=True) + 1e-12)
        direction[name] = (d_rows * scale).reshape(p.shape)
    return direction


@torch.no_grad()
def plane(probe: LossProbe, seed: int = 0, points: int = PLANE_POINTS, span: float = PLANE_SPAN,
          budget: float | None = None) -> dict:
    """The loss on a grid in a filter-normalized random plane through the current weights;
    a coarser grid (at least 7 x 7) when `points`² forward passes would exceed `budget` seconds."""
    centre = probe.detached()
    if budget:
        began = time.perf_counter()
        probe.loss(centre)
        per_pass = max(time.perf_counter() - began, 1e-6)
        points = min(points, max(7, int(math.sqrt(budget / per_pass)) | 1))
    generator = torch.Generator().manual_seed(seed)
    d1, d2 = filter_normalized(centre, generator), filter_normalized(centre, generator)
    coords = np.round(np.linspace(-span, span, points), 4)
    grid = [[_safe(probe.loss({n: centre[n] + float(a) * d1[n] + float(b) * d2[n] for n in centre}))
             for a in coords] for b in coords]  # grid[row b][column a]
    values = np.asarray(grid, dtype=float)
    mid = points // 2
    finite = values[np.isfinite(values)]
    return {"coords": coords.tolist(), "loss": grid, "centre": float(values[mid, mid]),
            "lowest": float(finite.min()) if finite.size else float("nan"),
            "centre_is_lowest": bool(finite.size and values[mid, mid] <= finite.min() + 1e-9)}
