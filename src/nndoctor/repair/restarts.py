"""Random restarts: a few short runs from different initial weights; `optimum.local` when
their final losses fall into groups far apart compared with each run's own noise.

The classic remedy for a bad basin of attraction is to restart from other random weights
and keep the best run (the seed articles 000 and 003). Whether restarts matter is itself
measurable: on a healthy setup every seed ends at the same loss, within the minibatch
noise; on a small net with poor basins (XOR with 3 hidden units) some seeds end an order of
magnitude higher.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..data import as_loader
from ..findings import Finding
from .lr_finder import _endless, restored

RUNS = 5
TAIL = 0.25          # the final loss: mean over the last quarter of the run's minibatch losses
SEPARATION = 4.0     # the gap between groups, in units of the runs' own noise (minibatch std of the tail)
SPREAD = 2.0         # ... and in units of the spread inside each group


@dataclass
class Restarts:
    """Final losses per seed, their noise, and the verdict (a Finding or None)."""
    seeds: list[int]
    finals: list[float]
    noise: list[float]
    best_seed: int
    finding: Finding | None


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with fresh random weights (each layer's own `reset_parameters`)."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    return fresh


def restarts(model, train_data, loss_fn=None, optimizer=None, steps: int = 200, batch_size=None, seed: int = 0,
             runs: int = RUNS) -> Restarts:
    """Train `runs` copies of `model` for `steps` steps: the first from the weights as given,
    the others re-initialized with seeds seed+1, ...; the user's model and optimizer are
    left as they were. Returns the final losses and, when they split, `optimum.local`."""
    from ..diagnosis import _check_arguments
    from .trial import OptimizerSpec
    _check_arguments(model, train_data, loss_fn, optimizer, None)
    spec = OptimizerSpec.of(optimizer, model)
    seeds = [seed + i for i in range(max(2, runs))]
    finals, noise = [], []
    for i, s in enumerate(seeds):
        start = copy.deepcopy(model) if i == 0 else reinitialize(model, s)
        final, std = _short_run(start, spec.build(start), train_data, loss_fn, steps, batch_size, seed)
        finals.append(final)
        noise.append(std)
    return judge(seeds, finals, noise)


def _short_run(model, optimizer, train_data, loss_fn, steps, batch_size, seed) -> tuple[float, float]:
    """(mean, std) of the minibatch loss over the run's last quarter; (inf, 0) if it breaks."""
    loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)
    device = next(model.parameters()).device
    losses = []
    with restored(model, optimizer, seed):  # the copy is thrown away; this only keeps the global RNG
        model.train()
        batches = _endless(loader)
        for _ in range(steps):
            x, y = next(batches)
            try:
                loss = loss_fn(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            except (RuntimeError, ValueError, IndexError):
                return math.inf, 0.0
            losses.append(loss.detach())
    tail = torch.stack(losses[-max(2, int(len(losses) * TAIL)):]).double()
    mean, std = float(tail.mean()), float(tail.std())
    return (mean, std) if math.isfinite(mean) else (math.inf, 0.0)


def with_restarts(report, result: Restarts):
    """`report` with the restarts' numbers in its meta and their finding, if any, among its findings."""
    from ..findings import Report
    report.meta["restarts"] = {"seeds": result.seeds, "final_losses": result.finals, "tail_std": result.noise}
    if result.finding is None:
        return report
    return Report(findings=report.findings + [result.finding], meta=report.meta, notes=report.notes,
                  series=report.series)


def judge(seeds: list[int], finals: list[float], noise: list[float]) -> Restarts:
    """`optimum.local` when the sorted final losses have a gap wider than SEPARATION times the
    runs' typical noise and SPREAD times the spread inside the groups on either side."""
    best_seed = seeds[min(range(len(finals)), key=lambda i: finals[i])]
    finite = sorted(f for f in finals if math.isfinite(f))
    result = Restarts(seeds, finals, noise, best_seed, None)
    if len(finite) < 2:
        return result
    gaps = [b - a for a, b in zip(finite, finite[1:])]
    cut = max(range(len(gaps)), key=gaps.__getitem__)
    low, high = finite[:cut + 1], finite[cut + 1:]
    typical_noise = sorted(noise)[len(noise) // 2]
    spread = max(low[-1] - low[0], high[-1] - high[0])
    gap = gaps[cut]
    if gap <= SEPARATION * typical_noise or gap <= SPREAD * spread:
        return result
    stuck = len(high) + sum(not math.isfinite(f) for f in finals)
    result.finding = Finding.make(
        "optimum.local",
        f"{stuck} of {len(finals)} runs from different random weights end at a loss of {high[0]:.3g} or more, "
        f"the best at {low[0]:.3g}: a gap {gap / max(typical_noise, 1e-12):.0f}x the runs' own noise.",
        evidence={"seeds": seeds, "final_losses": finals, "tail_std": noise, "gap": gap,
                  "typical_noise": typical_noise, "best_seed": best_seed},
        severity="warning",  # a split this far beyond the noise is a real loss, not advice
        fix=f"Restart from several random initializations and keep the best run (here seed {best_seed}); "
            "a wider network or momentum smooths the landscape.")
    return result
