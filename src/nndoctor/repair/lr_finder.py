"""`find_lr`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates").

The rate grows exponentially from `start_lr` to `end_lr`, one step per batch; the loss is
smoothed with a debiased exponential average and the sweep stops once the smoothed loss
passes 4x its best (divergence, as in fastai and Lightning). Non-finite points are dropped.
The model (parameters, every buffer, `.grad`), the optimizer, the modules' modes and every
global RNG (torch, numpy, python) are put back exactly as they were, and the hooks of the
user's model and optimizer do not run during the sweep (nndoctor/sandbox.py).

Three suggestion rules are computed on every curve; `RULE` is the one we recommend, chosen
on the zoo's healthy bases (docs/repair.md, benchmarks/lr_rules.py):
  steepest  the rate where the smoothed loss falls fastest (Lightning's default),
  valley    2/3 of the way down the longest falling stretch of the curve (fastai's default),
  min/10    a tenth of the rate at the lowest smoothed loss (fastai's older default).
min/10 was the best of the three: closest to the hand-tuned rate's validation loss and
most often within 10% of the best rule. Both libraries smooth with 0.98; over a 100-point
sweep that averages ~50 points and drags the curve's minimum half a decade to the right,
which made min/10 overshoot; 0.9 (a ~10-point window) fixed that in the same comparison.
"""
from __future__ import annotations

import copy
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import as_loader
from ..report.terminal import progress
from ..sandbox import foreign_hooks_silenced, state_kept

RULES = ("steepest", "valley", "min/10")
RULE = "min/10"      # see docs/repair.md for the comparison behind this choice
SMOOTHING = 0.9      # EMA factor; fastai and Lightning use 0.98 (see the module docstring)
DIVERGED = 4.0       # stop when the smoothed loss passes 4x its best (fastai, Lightning)
SKIP_START = 10      # the first points carry the EMA's start-up bias (Lightning skips 10)
BOTTOM = 0.05        # the range: rates whose loss is within 5% (of the total fall) of the lowest, /10


@dataclass
class LRRange:
    """A range test's curve and what it suggests.

    `lrs`/`losses` hold the finite points (losses smoothed); `suggestion` is the rate the
    chosen rule picks and `low`..`high` how well the curve pins it down: for min/10, a tenth
    of the rates whose loss lies in the curve's flat bottom (a wide range: a flat minimum,
    any rate in it will do; a narrow one: a sharp minimum)."""
    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    low: float | None
    high: float | None
    rule: str
    suggestions: dict[str, float | None] = field(default_factory=dict)  # every rule's pick
    raw_losses: list[float] = field(default_factory=list)
    diverged_at: float | None = None   # the rate at which the sweep stopped, if it did

    def attach(self, report) -> None:
        """Put the curve into a Report (`series["lr_range"]`, `meta["lr_range"]`) for the HTML plot."""
        report.series["lr_range"] = {"step": list(self.lrs), "value": list(self.losses)}
        report.meta["lr_range"] = {"suggestion": self.suggestion, "low": self.low, "high": self.high,
                                   "rule": self.rule}

    def report(self):
        """A Report holding just the curve, to show it as the finders of fastai and Lightning
        do: `find_lr(...).report().save_html("lr.html")`, or display it in a notebook."""
        from ..findings import Report
        report = Report(meta={"lr_range_test": {"diverged_at": self.diverged_at, "suggestions": self.suggestions}})
        self.attach(report)
        return report

    def plot(self):
        """The curve with the suggestion marked, as a matplotlib Figure (`fig.savefig(...)`)."""
        from ..report.plots import lr_range_figure
        return lr_range_figure(self.report())

    def _repr_html_(self) -> str:
        return self.report()._repr_html_()

    def __str__(self) -> str:
        if self.suggestion is None:
            return "LR range test: no rate made the loss fall"
        return (f"LR range test: suggestion {self.suggestion:.3g} ({self.rule}), range {self.low:.3g} to "
                f"{self.high:.3g}")


def find_lr(model, train_data, loss_fn=None, optimizer=None, batch_size=None, *, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, seed: int = 0, rule: str = RULE) -> LRRange:
    """Run the range test on `model` with `optimizer` and restore both afterwards."""
    from ..diagnosis import _check_arguments
    _check_arguments(model, train_data, loss_fn, optimizer, None)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)
    lrs, raw = _sweep(model, loader, loss_fn, optimizer, start_lr, end_lr, max(int(steps), 2 * SKIP_START), seed)
    return suggest(lrs, raw, rule)


def _sweep(model, loader, loss_fn, optimizer, start_lr, end_lr, steps, seed):
    """Train one batch per rate; returns (rates, raw losses) up to divergence."""
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    peak = max(float(g["lr"]) for g in optimizer.param_groups) or 1.0
    shares = [float(g["lr"]) / peak for g in optimizer.param_groups]  # keep the groups' proportions
    device = next(model.parameters()).device
    lrs, losses = [], []
    with restored(model, optimizer, seed), progress("find_lr: LR range test", total=steps) as advance:
        if not model.training:  # a model handed over in eval mode; a submodule frozen in eval stays so
            model.train()
        average, best, batches = 0.0, math.inf, _endless(loader)
        for i in range(steps):
            lr = start_lr * ratio ** i
            for group, share in zip(optimizer.param_groups, shares):
                group["lr"] = lr * share
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            try:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
            except (RuntimeError, ValueError, IndexError):
                break
            lrs.append(lr)
            losses.append(value)
            advance()
            if not math.isfinite(value):
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (i + 1))
            best = min(best, smooth)
            if i > SKIP_START and smooth > DIVERGED * best:
                break
    return lrs, losses


def _endless(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch[0], batch[1]
        if empty:
            raise ValueError("the training data yields no batches")


@contextmanager
def restored(model, optimizer, seed: int):
    """Run with seeded RNGs and the user's hooks silenced, then put back the model (with every
    buffer and gradient), the optimizer and every global RNG."""
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [d.index or 0 for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=devices), state_kept(model, grads=True), \
                foreign_hooks_silenced(model, optimizer):
            torch.manual_seed(seed)
            yield
    finally:
        model.load_state_dict(params)
        optimizer.load_state_dict(state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def smooth(values: list[float]) -> list[float]:
    """Debiased exponential moving average."""
    out, average = [], 0.0
    for i, v in enumerate(values):
        average = SMOOTHING * average + (1 - SMOOTHING) * v
        out.append(average / (1 - SMOOTHING ** (i + 1)))
    return out


def suggest(lrs: list[float], raw: list[float], rule: str = RULE) -> LRRange:
    """Smooth the curve, drop non-finite points, and apply every rule."""
    keep = [i for i, v in enumerate(raw) if math.isfinite(v)]
    lrs, raw = [lrs[i] for i in keep], [raw[i] for i in keep]
    losses = smooth(raw)
    diverged = lrs[-1] if lrs else None
    if len(losses) <= SKIP_START + 2:
        return LRRange(lrs, losses, None, None, None, rule, dict.fromkeys(RULES), raw, diverged)
    picks = {"steepest": _steepest(losses), "valley": _valley(losses), "min/10": None}
    suggestions = {name: (lrs[i] if i is not None else None) for name, i in picks.items()}
    suggestions["min/10"] = lrs[int(np.argmin(losses))] / 10
    low, high = _bottom(losses)
    if rule == "min/10":
        low_lr, high_lr = lrs[low] / 10, lrs[high] / 10
    else:  # the other rules' picks lie on the falling side: from the valley's pick to the bottom
        low_lr, high_lr = min(suggestions[rule] or lrs[low], lrs[low] / 10), lrs[low]
    return LRRange(lrs, losses, suggestions[rule], low_lr, high_lr, rule, suggestions, raw, diverged)


def _slopes(losses: list[float]) -> np.ndarray:
    """Change of the smoothed loss per step (the rates are evenly spaced in log)."""
    return np.gradient(np.asarray(losses, dtype=float))


def _steepest(losses: list[float]) -> int | None:
    """Lightning's rule: the most negative slope, skipping the start-up points and the last."""
    slopes = _slopes(losses)[SKIP_START:-1]
    if not len(slopes) or slopes.min() >= 0:
        return None
    return SKIP_START + int(slopes.argmin())


def _valley(losses: list[float]) -> int:
    """fastai's rule: the longest decreasing subsequence of the curve; its start plus half
    way through its middle third (quadratic, on at most a few hundred points)."""
    n = len(losses)
    run = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return min(n - 1, max(0, start + int(third) + int(third / 2)))


def _bottom(losses: list[float]) -> tuple[int, int]:
    """The stretch around the lowest point whose loss lies within BOTTOM of the curve's total
    fall above it: how sharply the minimum, and so the min/10 pick, is determined."""
    lowest = int(np.argmin(losses))
    start = max(losses[:SKIP_START + 1])
    level = losses[lowest] + BOTTOM * max(start - losses[lowest], 0.0)
    low = high = lowest
    while low > 0 and losses[low - 1] <= level:
        low -= 1
    while high + 1 < len(losses) and losses[high + 1] <= level:
        high += 1
    # a sharp minimum is still only located to within the sweep's neighbouring rates: the
    # range spans at least one grid point either side of the lowest, never a single rate
    return max(0, min(low, lowest - 1)), min(len(losses) - 1, max(high, lowest + 1))
