"""Rules about the user's own training loop."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..findings import Finding
from . import Run, rule

STALE_SHARE = 0.8  # stale gradients on 80% of the checked steps: never zeroed, not a one-off
EVAL_SHARE = 0.5   # most steps taken in eval mode: the classic `model.eval()` for validation after
                   # epoch 1 and no `model.train()` after it leaves (E-1)/E of the steps there
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


@rule("loop.missing_zero_grad")
def missing_zero_grad(run: Run) -> Finding | None:
    s = run.series("stale/stale")
    if s is None or len(s) < 3:
        return None
    share = float(np.mean(s.trace()[1]))
    if share >= STALE_SHARE:
        return Finding.make("loop.missing_zero_grad",
                            f"On {share:.0%} of steps the previous step's gradient was still in `.grad` when "
                            f"backward ran: gradients accumulate across steps.",
                            evidence={"stale_share": share, "checked_steps": len(s)})
    return None


@rule("loop.eval_mode")
def eval_mode(run: Run) -> Finding | None:
    if run.loop_steps < 5 or run.eval_steps < EVAL_SHARE * run.loop_steps or run.model is None:
        return None
    affected = [n for m, n in run.module_names.items() if isinstance(m, MODE_DEPENDENT)]
    if not affected:
        return None  # eval mode changes nothing in this model
    return Finding.make("loop.eval_mode",
                        f"{run.eval_steps} of {run.loop_steps} optimizer steps ran with the model in eval mode, "
                        f"so {len(affected)} dropout/BatchNorm module(s) behave as at inference.",
                        evidence={"eval_steps": run.eval_steps, "steps": run.loop_steps, "modules": affected[:10]},
                        where=affected[:10])
