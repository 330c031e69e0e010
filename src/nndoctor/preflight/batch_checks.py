"""The batch size against the gradient noise scale, measured at init on the probe copy.

The deep analysis measures B_simple after the run (analysis/noise_scale.py); this is the
cheap default: the same estimate at the initial weights only (where the noise scale is
smallest, so a batch too large there is too large for the whole run), with fewer small
batches and a short time budget, and only for a batch large enough to be judged at all.
"""
from __future__ import annotations

from ..analysis.noise_scale import noise_scale
from ..analysis.probe import BATCH_ROWS, LossProbe
from ..findings import Finding
from ..history import History
from ..rules import Run
from ..rules.curvature import MIN_NOISE_SCALE, NOISE_FACTOR, batch_too_large
from .case import Case

BUDGET = 0.5  # seconds: 16 small batches of 8 rows and 4 of 128 take 0.05-0.3 s for the zoo's small nets
SMALL_BATCHES = 16


def check_batch_too_large(c: Case) -> Finding | None:
    batch = c.batch_size
    if not batch or batch < NOISE_FACTOR * MIN_NOISE_SCALE or c.probe is None or c.X is None:
        return None  # below 20 rows no noise scale the rule accepts makes the batch 10x too large
    probe = LossProbe(c.probe, c.X[:BATCH_ROWS], c.y[:BATCH_ROWS], c.loss_fn)  # big batches of 128, as the deep one
    measured = noise_scale(probe, seed=0, budget=BUDGET, small_batches=SMALL_BATCHES)
    if not measured:
        return None
    c.meta["noise_scale"] = measured
    found = batch_too_large(Run(history=History(), step=0, extra={
        "noise_scale": dict(measured, at="initial"), "batch_size": batch, "dataset_rows": c.rows}))
    if found is not None:
        found.step = None
    return found
