"""Fit rules: overfitting (validation parts from training), underfitting (the training set
itself is not fitted), and regularization too strong to fit."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule
from .curves import end_level, finite, smooth, start_level, still_falling

MATERIAL = 0.02       # a rise must also exceed 2% of the problem's loss scale (baseline or start) to matter
VAL_RISE = 0.25       # validation 25% above its best (validation noise alone moves it ~10%)...
VAL_POINTS = 4        # ...judged on at least 4 validations, the last 2 both above the best
GAP_VAL = 0.2         # memorizing: validation still above a fifth of the baseline (healthy zoo nets: 3-9%)...
GAP_TRAIN = 0.1       # ...while the training loss is below a tenth of the validation loss
UNDERFIT_SHARE = 0.5  # the final training loss still half of the input-independent baseline
SHRINK = 0.5          # a weight matrix shrank below half its random init: decay outpulls the data (learning grows weights)
FITTED = 0.1          # ...while the training loss is still above a tenth of the baseline...
NO_GAP = 1.5          # ...and validation is within 1.5x of training: nothing to regularize away
DROPOUT_GAP = 1.5     # the loss with dropout on is 1.5x the loss with it off, on the same batch
MAX_DROPOUT = 0.5     # above 0.5 most units are dropped: the usual ceiling (Srivastava et al.; UMLAUT warns above it)


@rule("fit.overfitting")
def fit_overfitting(run: Run) -> Finding | None:
    val = run.series("val_loss")
    if val is None or len(val) < VAL_POINTS:
        return None
    vsteps, vvalues = val.trace()
    steps, train = run.loss()
    if not np.isfinite(vvalues).all() or len(finite(train)) < 10:
        return None
    best = int(np.argmin(vvalues))
    late = vvalues[-2:]
    evidence = {"best_val_loss": float(vvalues[best]), "best_step": int(vsteps[best]),
                "final_val_loss": float(late[-1]), "final_train_loss": end_level(train)}
    # the best level is one the neighbouring validations hold: the minimum of a noisy series (a
    # few dozen held-out rows) is one lucky draw, biased low
    held = smooth(vvalues, 3)
    held_best = int(np.argmin(held))
    if rose_while_training_fell(run, vsteps, held, held_best, steps, train, late):
        best = held_best
        evidence.update(best_val_loss=float(held[best]), best_step=int(vsteps[best]))
        rise = float(late[-1] / held[best] - 1)
        return Finding.make("fit.overfitting",
                            f"Validation loss rose {rise:.0%} above its best ({held[best]:.3g} at step "
                            f"{int(vsteps[best])}) while the training loss kept falling.",
                            evidence=evidence, step=int(vsteps[best]))
    if not run.baseline:
        return None  # the memorization gap needs the label-prior baseline to call validation poor
    final_train = end_level(train)
    if late[-1] >= GAP_VAL * run.baseline and final_train <= GAP_TRAIN * late[-1]:
        parted = int(vsteps[int(np.argmax(vvalues <= 1.1 * vvalues[best]))])  # validation stopped gaining
        return Finding.make("fit.overfitting",
                            f"The training loss fell to {final_train:.3g} while validation stays at {late[-1]:.3g}, "
                            f"{late[-1] / run.baseline:.0%} of the label-prior baseline: the model memorizes the "
                            f"training set.", evidence={**evidence, "reference_loss": run.baseline}, step=parted)
    return None


def rose_while_training_fell(run: Run, vsteps, vvalues, best: int, steps, train, late) -> bool:
    """The textbook pattern: after the best validation level the `late` validations are clearly
    (and materially) above it, and the training loss went on falling."""
    if best >= len(vvalues) - 2 or not (late > vvalues[best] * (1 + VAL_RISE)).all():
        return False
    if late[-1] - vvalues[best] <= MATERIAL * (run.scale or 0):
        return False
    at_best, after = finite(train[steps <= vsteps[best]]), finite(train[steps > vsteps[best]])
    if len(at_best) < 3 or len(after) < 3:
        return False
    return end_level(after) < np.median(at_best[-max(3, len(at_best) // 10):])


@rule("fit.underfitting")
def fit_underfitting(run: Run) -> Finding | None:
    if not run.final or run.progress < 0.9:
        return None
    _, values = run.loss()
    v = finite(values)
    if len(v) < 30 or len(v) < len(values):
        return None
    end = end_level(v)
    reference = run.baseline or float(np.median(v[:5]))
    if end >= UNDERFIT_SHARE * reference and not still_falling(v):
        what = "the loss of always predicting the label prior" if run.baseline else "its starting value"
        return Finding.make("fit.underfitting",
                            f"The training loss ends at {end:.3g}, {end / reference:.0%} of {what} ({reference:.3g}): "
                            f"the model does not fit even the training data.",
                            evidence={"final_train_loss": end, "reference_loss": reference,
                                      "reference": "baseline" if run.baseline else "start"})
    return None


@rule("reg.too_strong")
def reg_too_strong(run: Run) -> Finding | None:
    _, values = run.loss()
    v = finite(values)
    if len(v) < 20 or len(v) < len(values):
        return None
    gap = run.extra.get("dropout_gap")
    if gap and run.loss_is_poor(v) and (gap["train_mode"] >= DROPOUT_GAP * gap["eval_mode"] or gap["p"] > MAX_DROPOUT):
        return Finding.make("reg.too_strong",
                            f"Dropout p={gap['p']} keeps the model from fitting: the training loss stays high, and on "
                            f"one batch it is {gap['train_mode']:.3g} with dropout on vs {gap['eval_mode']:.3g} off.",
                            evidence=gap, where=gap.get("modules"))
    decay = max((g.get("weight_decay", 0) or 0 for g in run.optimizer.param_groups), default=0) if run.optimizer else 0
    shrunk = {n: r for n, r in run.weight_norm_ratios().items() if r < SHRINK}
    if decay <= 0 or not shrunk:
        return None
    reference = run.baseline or start_level(v)
    val = run.series("val_loss")
    generalizes = val is None or end_level(val.trace()[1], 0.3) <= NO_GAP * end_level(v)
    if end_level(v) >= FITTED * reference and generalizes:
        worst = min(shrunk, key=shrunk.get)
        return Finding.make("reg.too_strong",
                            f"Weight decay {decay} shrank `{worst}` to {shrunk[worst]:.0%} of its initial norm while the "
                            f"training loss stays at {end_level(v):.3g} ({end_level(v) / reference:.0%} of "
                            + ("the label-prior baseline" if run.baseline else "its start")
                            + ") with no overfitting to hold back.",
                            evidence={"weight_decay": decay, "weight_norm_ratio": shrunk,
                                      "final_train_loss": end_level(v), "reference_loss": reference}, where=worst)
    return None
