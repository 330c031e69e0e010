"""Loss-trace rules: non-finite loss, plateau, oscillation, late fluctuation."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule
from .curves import end_level, finite, relative_drop, smooth, start_level, still_falling, tail, trend

MIN_STEPS = 30        # fewer logged losses than this: no verdict on the shape of the curve
PLATEAU_DROP = 0.05   # less than 5% below the start after the whole run: no learning
OSCILLATION_GAP = 1.5  # the second half sits 1.5x above the best smoothed level already reached
MATERIAL = 0.02       # fluctuation must also exceed 2% of the problem's loss scale (baseline or start)
DIVERGING = 4.0       # the late loss 4x above the mid-run loss: a runaway, not an oscillation
FLUCTUATION_NOISE = 0.08  # late training-loss noise of 8% of the level around a flat trend (the info-only path)
FLUCTUATION_GAIN = 0.025  # the late validation loss sits 2.5% of the problem's loss scale above the best it reached
#                           late (the constant-rate SGD zoo runs: 5-50%; the healthy runs whose late trend is as
#                           flat: at most 1.2%; the healthy runs still learning reach 4-40% but descend faster)
TREND_OVER_SWING = 1.25   # ...and descends by less than 1.25x that gap (the healthy runs still learning: 1.6-6x)
RISE_DOWNS = 0.2          # ...and swings both ways: its falls add up to a fifth of its rises or more (a steady rise is
#                           fit.overfitting's: 0.05 in the zoo; the swinging runs: 0.3 and more)


@rule("loss.nonfinite")
def loss_nonfinite(run: Run) -> Finding | None:
    steps, values = run.loss()
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    origin = run.origin or {}
    evidence = {"first_step": int(steps[i]), "nonfinite_losses": int(bad.sum()),
                "last_finite": [float(v) for v in finite(values[:i])[-3:]]}
    where = None
    message = f"The loss became {values[i]} at step {int(steps[i])}"
    if origin:
        evidence["origin"] = origin
        message += "; " + _where_nonfinite_started(origin)
        where = origin["module"] if origin["module"] not in ("<input>", "<loss>") else None
    else:
        message += "."
    return Finding.make("loss.nonfinite", message, evidence=evidence, where=where, step=int(steps[i]))


def _where_nonfinite_started(origin: dict) -> str:
    """The sentinel's stage (and module) of the first NaN/Inf, in words (collect/nonfinite.py)."""
    module, step = origin.get("module"), origin["step"]
    if module == "<input>":
        return f"the model's input already held NaN/Inf at step {step}."
    if module == "<loss>":
        return (f"the model's output was finite at step {step}, but the gradient the loss sent back was not: "
                "the loss made it (NaN/Inf in the targets, or a log or division by zero in the loss).")
    if origin.get("stage") == "outside":
        return (f"the forward pass and the loss were finite at step {step} but gradients were not, and the model's "
                "backward, replayed, made none: they came from outside it (another process's gradients in an "
                "all-reduce, a gradient hook, or an edited .grad).")
    if origin.get("stage") == "unseen":
        return (f"the gradients were non-finite at step {step}, whose forward pass was not watched (watching "
                "began at that step's backward), so the module that made them is unknown.")
    if origin.get("stage") == "backward":
        if module:
            return (f"the forward pass was finite at step {step}; the first non-finite gradient was made "
                    f"in the backward pass of `{module}`.")
        return f"the forward pass was finite at step {step}; the first non-finite gradient was made in the backward pass."
    if not module:
        return f"the model's forward pass made the first non-finite value at step {step}, from a finite input."
    if origin.get("own_code"):
        return (f"the first non-finite value was made at step {step} by `{module}`'s own forward code, between "
                "its submodules (a log, sqrt, division or exp there), from finite inputs and parameters.")
    if origin.get("bad_parameters"):
        return (f"the first non-finite output came from `{module}` at step {step}, whose parameters "
                f"{origin['bad_parameters']} were already non-finite (the update before made them so).")
    return f"the first non-finite value was produced by `{module}` at step {step}, from finite inputs and parameters."


@rule("loss.plateau")
def loss_plateau(run: Run) -> Finding | None:
    steps, values = run.loss()
    v = finite(values)
    if len(v) < MIN_STEPS or len(v) < len(values) or run.progress < 0.3:
        return None
    drop = relative_drop(v)
    if drop < PLATEAU_DROP and not still_falling(v) and run.loss_is_poor(v):
        grad = run.series("grad_norm/total")
        evidence = {"start_loss": start_level(v), "end_loss": end_level(v), "loss_drop": drop}
        if run.baseline:
            evidence["baseline_loss"] = run.baseline
        if grad:
            evidence["median_grad_norm"] = float(np.median(finite(grad.trace()[1]))) if len(finite(grad.trace()[1])) else None
        return Finding.make("loss.plateau",
                            f"The loss stayed at {end_level(v):.3g} (started at {start_level(v):.3g}, "
                            f"{max(drop, 0):.1%} lower) for {int(steps[-1]) + 1} steps.",
                            evidence=evidence)
    return None


@rule("loss.oscillation")
def loss_oscillation(run: Run) -> Finding | None:
    _, values = run.loss()
    v = finite(values)
    if len(v) < MIN_STEPS or len(v) < len(values):
        return None
    level = smooth(v, max(5, len(v) // 20))
    best = float(level.min())  # the best level held for a while, not one lucky batch
    second = tail(v, 0.5)
    rising_share = float(np.mean(np.diff(second) > 0))
    third = max(1, len(second) // 3)
    descending = np.median(second[-third:]) < 0.5 * np.median(second[:third])  # robust to wild swings
    runaway = np.median(second[-third:]) > DIVERGING * np.median(second[:third])  # lr.too_high's divergence
    swings = 0.25 < rising_share < 0.75          # goes up and down, not steadily one way
    far_from_best = np.median(second) > OSCILLATION_GAP * max(best, 1e-12)
    if swings and far_from_best and not descending and not runaway and run.loss_is_poor(v):
        amplitude = float((np.percentile(second, 90) - np.percentile(second, 10)) / max(np.median(second), 1e-12))
        return Finding.make("loss.oscillation",
                            f"In the second half the loss swings by {amplitude:.0%} of its level and sits "
                            f"{np.median(second) / max(best, 1e-12):.1f}x above the best it reached ({best:.3g}).",
                            evidence={"amplitude": amplitude, "best_loss": best,
                                      "median_late_loss": float(np.median(second)), "rising_share": rising_share})
    return None


@rule("loss.fluctuation")
def loss_fluctuation(run: Run) -> Finding | None:
    if run.progress < 0.9:
        return None
    lr = run.series("lr")
    if lr is not None and np.ptp(lr.trace()[1]) > 1e-12 * max(abs(lr.latest or 0), 1e-12):
        return None  # the rate already decays: the remedy is in place
    val = run.series("val_loss")
    if val is not None and len(val) >= 6:
        return _validation_fluctuation(run, finite(val.trace()[1]))
    return _training_noise(run)


def _validation_fluctuation(run: Run, val: np.ndarray) -> Finding | None:
    """The validation loss (fixed data, so batch noise cannot explain it) sits late in training
    well above the best level the weights already reached, with no trend that explains the gap:
    the weights rattle around a minimum, and a smaller step would hold the better level. Both
    measures are robust to one spike (a median and a Theil-Sen slope), as the late window of a
    run validated ten times holds only six points."""
    late = val[-max(5, int(len(val) * 0.6)):]
    level, best = float(np.median(late)), float(np.min(late))
    gap = level - best
    pairs = [(late[j] - late[i]) / (j - i) for i in range(len(late)) for j in range(i + 1, len(late))]
    drift = float(np.median(pairs)) * (len(late) - 1)
    moves = np.diff(late)
    rises, falls = float(moves[moves > 0].sum()), float(-moves[moves < 0].sum())
    scale = run.scale or 0
    if scale > 0 and gap >= FLUCTUATION_GAIN * scale and drift > -TREND_OVER_SWING * gap and falls >= RISE_DOWNS * rises:
        return Finding.make("loss.fluctuation",
                            f"Late in training the validation loss sits at {level:.3g}, {gap:.3g} above the {best:.3g} "
                            f"it already reached, with no downward trend to close the gap, at a constant learning rate.",
                            evidence={"late_val_level": level, "late_val_best": best, "gap_to_scale": gap / scale,
                                      "late_drift": drift, "late_rises": rises, "late_falls": falls,
                                      "validations": len(late)})
    return None


def _training_noise(run: Run) -> Finding | None:
    """Without validation only the training loss shows it, where batch-to-batch noise looks the
    same: advice (info), not a warning."""
    _, values = run.loss()
    v = finite(values)
    if len(v) < 3 * MIN_STEPS or len(v) < len(values):
        return None
    late = tail(v, 0.3)
    slope, _ = trend(late)
    level = float(np.median(late))
    noise = float(np.median(np.abs(late - smooth(late, max(5, len(late) // 5))))) / max(level, 1e-12)
    if abs(slope) * len(late) < 0.05 and noise > FLUCTUATION_NOISE:
        return Finding.make("loss.fluctuation",
                            f"Over the last 30% of steps the training loss is flat at {level:.3g} with noise of "
                            f"{noise:.0%} of its level and a constant learning rate (validate to tell it from "
                            f"batch-to-batch noise).",
                            evidence={"late_level": level, "relative_noise": noise}, severity="info")
    return None
