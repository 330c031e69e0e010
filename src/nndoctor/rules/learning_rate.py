"""Learning-rate rules: too high (divergence, or steps as large as the weights), too low
(updates far below the 1e-3 rule of thumb while the loss barely moves)."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule
from .curves import finite, medians, relative_drop, smooth, steady_decline
from .units import DEAD_SHARE, WHOLE_LAYER

DIVERGE_FACTOR = 4.0   # smoothed loss 4x its start and 4x its best: the LR range test's stop rule (fastai, Lightning)
SUSTAINED = 10         # ...for 10 logged steps in a row: batches of 4 spike 4x and recover; a divergence does not
HUGE_UPDATE = 0.1      # ||Δw||/||w|| of 0.1 per step: 100x the healthy 1e-3; the weights are rewritten every few steps
FIRST_STEP_UPDATE = 0.2  # one step rewriting a fifth of a layer's weights, and the loss never recovers
WIPED_OUT = 0.5          # one step moving a layer by half its norm: the initialization is gone at once
TINY_UPDATE = 1e-4     # 10x below the healthy 1e-3 (CS231n) for the most-moved layer


def top_update_ratio(run: Run) -> tuple[float, str] | None:
    """Median over sampled steps of the largest per-layer update/weight ratio, and that layer.
    Weight matrices only: a bias starts near zero, so its ratio says nothing about the step."""
    return run.memo("top_update_ratio", lambda: _top_update_ratio(run))


def _top_update_ratio(run: Run) -> tuple[float, str] | None:
    layers, traces = [], []
    for name in run.weight_layers():
        s = run.series("update_ratio/" + name)
        v = finite(s.trace()[1]) if s is not None else []
        if len(v) >= 3:
            layers.append(name)
            traces.append(v)
    per_layer = dict(zip(layers, medians(traces)))
    if not per_layer:
        return None
    layer = max(per_layer, key=per_layer.get)
    return per_layer[layer], layer


def units_killed(run: Run) -> tuple[str, float, float] | None:
    """(module, first, last dead share) of the ReLU layer that was alive when sampling began and
    nearly all dead at the end. Dead from the start is an init or bias problem; dying on the way
    takes steps large enough to push every pre-activation below zero."""
    worst = None
    for module, kind in run.kinds.items():
        s = run.series("dead/" + module) if kind == "relu" else None
        v = finite(s.trace()[1]) if s is not None else []
        if len(v) >= 2 and v[0] < DEAD_SHARE and v[-1] >= WHOLE_LAYER and (worst is None or v[-1] > worst[2]):
            worst = (module, float(v[0]), float(v[-1]))
    return worst


def first_update_ratio(run: Run, hidden_only: bool = False) -> tuple[float, str] | None:
    """The largest update/weight ratio of a weight matrix on the first sampled step; with
    `hidden_only`, the output layer aside (a one-row regression head starts with a small norm
    and is meant to grow fast)."""
    firsts = {}
    layers = run.weight_layers()
    for name in layers[:-1] if hidden_only else layers:  # a one-layer model has no hidden layer
        s = run.series("update_ratio/" + name)
        if s is not None and s.head_values and np.isfinite(s.head_values[0]):
            firsts[name] = s.head_values[0]
    if not firsts:
        return None
    layer = max(firsts, key=firsts.get)
    return firsts[layer], layer


def divergence(run: Run) -> tuple[int, str, dict] | None:
    """(step, how, evidence) where the loss ran away from its start, or None."""
    steps, values = run.loss()
    if len(values) < 3:
        return None
    ok_values = finite(values)
    if not len(ok_values):
        return None
    # the start: the middle of the first three losses (one lucky batch of two rows can score
    # ~0; a fast divergence climbing from the second step still runs far past 4x the middle one)
    start = float(np.median(ok_values[:3]))
    ok = np.isfinite(values)
    level = smooth(np.where(ok, values, np.nanmax(np.where(ok, values, np.nan)) if ok.any() else 0.0), 5)
    best = np.minimum.accumulate(np.where(ok, level, np.inf))
    runaway = ok & (level > DIVERGE_FACTOR * abs(start)) & (level > DIVERGE_FACTOR * best)
    # a divergence stays diverged (or turns non-finite); a spike of a few noisy batches recovers
    gone = runaway | ~ok
    held = np.zeros(len(gone), dtype=bool)  # held[i]: gone for SUSTAINED steps from i (a full window only)
    if len(gone) >= SUSTAINED:
        held[:len(gone) - SUSTAINED + 1] = np.lib.stride_tricks.sliding_window_view(gone, SUSTAINED).all(1)
    if (runaway & held).any():
        i = int(np.argmax(runaway & held))
        return int(steps[i]), "grew", {"start_loss": start, "loss_at_detection": float(values[i])}
    if not ok.all():
        first_bad = int(np.argmax(~ok))
        before = values[max(0, first_bad - 5):first_bad]
        if first_bad and len(before) and np.max(before) > 1.5 * abs(start):
            return int(steps[first_bad]), "grew then became non-finite", {
                "start_loss": start, "last_finite_loss": float(before[-1])}
        ratio = top_update_ratio(run)
        if ratio and ratio[0] > 1.0:  # each step rewrote the weights entirely before the NaN
            return int(steps[first_bad]), "became non-finite after steps larger than the weights", {
                "start_loss": start, "update_ratio": ratio[0]}
    return None


def first_step_over(run: Run, name: str, level: float) -> int | None:
    """The first recorded step at which series `name` reached `level`: when the fault showed."""
    s = run.series(name)
    if s is None:
        return None
    steps, values = s.trace()
    over = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= level)
    return int(steps[over[0]]) if len(over) else None


@rule("lr.too_high")
def lr_too_high(run: Run) -> Finding | None:
    """Each message quotes the rate in force when its evidence showed: under a decaying
    schedule the latest rate is a small fraction of the one that did the damage."""
    found = divergence(run)
    if found:
        step, how, evidence = found
        lr = _lr(run, step)
        return Finding.make("lr.too_high",
                            f"The loss {how} at step {step} (from {evidence['start_loss']:.3g}): "
                            f"the learning rate {lr} is too high for this setup.",
                            evidence={**evidence, "lr": lr}, step=step)
    ratio = top_update_ratio(run)
    _, values = run.loss()
    first, hidden = first_update_ratio(run), first_update_ratio(run, hidden_only=True)
    if hidden and hidden[0] > WIPED_OUT:
        first = hidden
    if first and len(values) >= 10 and ((hidden and hidden[0] > WIPED_OUT)
                                        or first[0] > FIRST_STEP_UPDATE and run.loss_is_poor(values)):
        lr = _lr(run, run.series("update_ratio/" + first[1]).first_step)
        return Finding.make("lr.too_high",
                            f"The first steps changed the weights of `{first[1]}` by {_of_norm(first[0])} "
                            f"(healthy is about 1e-3): the learning rate {lr} is too high.",
                            evidence={"first_update_ratio": first[0], "layer": first[1], "lr": lr,
                                      "loss_drop": relative_drop(values)}, where=first[1], step=0)
    killed = units_killed(run)
    if killed and len(values) >= 10 and run.loss_is_poor(values):
        module, first, last = killed
        lr = _lr(run, first_step_over(run, "dead/" + module, WHOLE_LAYER))
        return Finding.make("lr.too_high",
                            f"The ReLUs after `{module}` were alive at the start ({first:.0%} dead) and died during "
                            f"training ({last:.0%} dead): steps too large pushed them below zero for every input; "
                            f"the learning rate {lr} is too high.",
                            evidence={"dead_share_first": first, "dead_share_last": last, "module": module, "lr": lr,
                                      "loss_drop": relative_drop(values)}, where=module)
    shrink = list(run.weight_norm_ratios().values())
    decaying = bool(shrink) and np.median(shrink) < 0.5  # steps dominated by weight decay: reg.too_strong's case
    if ratio and ratio[0] > HUGE_UPDATE and len(values) >= 10 and run.loss_is_poor(values) and not decaying:
        lr = _lr(run, first_step_over(run, "update_ratio/" + ratio[1], HUGE_UPDATE))
        return Finding.make("lr.too_high",
                            f"Each step changes the weights of {ratio[1]} by {_of_norm(ratio[0])} "
                            f"(healthy is about 1e-3) and the loss does not improve: the learning rate {lr} is too high.",
                            evidence={"update_ratio": ratio[0], "layer": ratio[1], "lr": lr,
                                      "loss_drop": relative_drop(values)}, where=ratio[1])
    return None


@rule("lr.too_low")
def lr_too_low(run: Run) -> Finding | None:
    steps, values = run.loss()
    ratio = top_update_ratio(run)
    if ratio is None or len(finite(values)) < 20 or not np.isfinite(values).all():
        return None
    top, layer = ratio
    drop = relative_drop(values)
    val = run.series("val_loss")
    steady = steady_decline(values) or (val is not None and steady_decline(val.trace()[1], min_points=5))
    if run.loss_is_poor(values) and (top < TINY_UPDATE or (top < 1e-3 and steady)):
        lr = _lr(run)
        return Finding.make("lr.too_low",
                            f"The largest update is {top:.2g} of the weights per step (healthy is about 1e-3) and "
                            f"the loss is still poor ({max(drop, 0):.0%} below its start): the learning rate {lr} "
                            f"is too low.",
                            evidence={"top_update_ratio": top, "layer": layer, "loss_drop": drop, "lr": lr})
    return None


def _lr(run: Run, step: int | None = None) -> float | None:
    """The learning rate at `step` (the last one sampled at or before it; under a schedule the
    rate that diverged is not the one at the end), or the latest."""
    s = run.series("lr")
    if not s:
        return None
    if step is None:
        return s.latest
    steps, values = s.trace()
    before = np.flatnonzero(steps <= step)
    return float(values[before[-1]]) if len(before) else float(values[0])


def _of_norm(ratio: float) -> str:
    """An update/weight ratio in words: '0.79 of their norm', '50x their norm'."""
    return f"{ratio:.2g}x their norm" if ratio >= 1 else f"{ratio:.2g} of their norm"
