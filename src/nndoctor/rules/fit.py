"""Fit rules: overfitting (validation parts from training), underfitting (the training set
itself is not fitted), and regularization too strong to fit."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule
from .curves import end_level, finite, relative_drop, still_falling

VAL_RISE = 0.1        # validation 10% above its best...
VAL_POINTS = 4        # ...judged on at least 4 validations, the last 2 both above the best
UNDERFIT_SHARE = 0.5  # the final training loss still half of the input-independent baseline
SHRINK = 0.5          # weights shrank to half their initial norm under weight decay
DROPOUT_GAP = 1.5     # the loss with dropout on is 1.5x the loss with it off, on the same batch


@rule("fit.overfitting")
def fit_overfitting(run: Run) -> Finding | None:
    val = run.series("val_loss")
    if val is None or len(val) < VAL_POINTS:
        return None
    vsteps, vvalues = val.trace()
    if not np.isfinite(vvalues).all():
        return None
    best = int(np.argmin(vvalues))
    late = vvalues[-2:]
    if best >= len(vvalues) - 2 or not (late > vvalues[best] * (1 + VAL_RISE)).all():
        return None
    steps, train = run.loss()
    at_best = train[steps <= vsteps[best]]
    after = train[steps > vsteps[best]]
    if len(finite(at_best)) < 3 or len(finite(after)) < 3:
        return None
    if end_level(after) >= np.median(finite(at_best)[-max(3, len(at_best) // 10):]):
        return None  # training loss did not keep falling: not the overfitting pattern
    rise = float(late[-1] / vvalues[best] - 1)
    return Finding.make("fit.overfitting",
                        f"Validation loss rose {rise:.0%} above its best ({vvalues[best]:.3g} at step "
                        f"{int(vsteps[best])}) while the training loss kept falling.",
                        evidence={"best_val_loss": float(vvalues[best]), "best_step": int(vsteps[best]),
                                  "final_val_loss": float(late[-1]), "final_train_loss": end_level(train)},
                        step=int(vsteps[best]))


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
    if len(finite(values)) < 20 or not run.loss_is_poor(finite(values)):
        return None
    gap = run.extra.get("dropout_gap")
    if gap and gap["train_mode"] >= DROPOUT_GAP * gap["eval_mode"]:
        return Finding.make("reg.too_strong",
                            f"On the same batch the loss is {gap['train_mode']:.3g} with dropout on and "
                            f"{gap['eval_mode']:.3g} with it off: dropout ({gap['p']}) keeps the model from fitting.",
                            evidence=gap, where=gap.get("modules"))
    decay = max((g.get("weight_decay", 0) or 0 for g in run.optimizer.param_groups), default=0) if run.optimizer else 0
    if decay > 0:
        shrink = []
        for name in run.history.names("weight_norm/"):
            w = finite(run.history[name].trace()[1])
            if len(w) >= 3 and w[0] > 0:
                shrink.append(w[-1] / w[0])
        if shrink and np.median(shrink) < SHRINK:
            return Finding.make("reg.too_strong",
                                f"Weight decay {decay} shrank the weights to {np.median(shrink):.0%} of their initial "
                                f"norm while the loss stayed high (fell {max(relative_drop(finite(values)), 0):.0%}).",
                                evidence={"weight_decay": decay, "weight_norm_ratio": float(np.median(shrink))})
    return None
