"""Rules on the deep analyses (`nndoctor.analysis`): they read `run.extra` and stay silent
when the analyses were not run (the watcher's own judging never has them)."""
from __future__ import annotations

import math

from ..findings import Finding
from . import Run, rule

# The steepest direction carries 90% of the whole curvature tr(H): one direction is a wall,
# every other is nearly flat. Healthy zoo nets measure 0.02-0.53 for MLPs/CNNs (binary heads
# highest: their Hessian has one outlier per class) and up to 0.72 for the LSTM (recurrent
# losses have walls of their own, Pascanu et al. 2013); raw unnormalized features 0.82-1.0,
# a vanilla RNN 0.99.
RAVINE_SHARE = 0.9
# A batch 10x the noise scale B_simple costs 11x the minimum examples per unit of progress
# while saving under 10% of the steps of a batch of 1·B_simple (McCandlish et al. 2018, eq. 2.11).
NOISE_FACTOR = 10.0
# Below a couple of examples the mean gradient dwarfs the per-example spread because the loss
# is far from any basin (raw features, a bad init): a transient of a bad start, not a batch property.
MIN_NOISE_SCALE = 2.0


@rule("curvature.ill_conditioned")
def ill_conditioned(run: Run) -> Finding | None:
    c = run.extra.get("curvature")
    if not c or not c.get("trace") or c["trace"] <= 2 * c.get("trace_stderr", 0) or not c["top_eigenvalue"] > 0:
        return None
    share = c["top_eigenvalue"] / c["trace"]
    if not math.isfinite(share) or share < RAVINE_SHARE:
        return None
    ratio = c.get("top_over_bulk")
    adaptive = c.get("optimizer") not in (None, "SGD")
    fix = None if not adaptive else (
        f"{c['optimizer']} already rescales each parameter; what is left is in the data or the architecture: "
        "standardize the inputs (and targets), add BatchNorm/LayerNorm.")
    return Finding.make(
        "curvature.ill_conditioned",
        f"One direction holds {share:.0%} of the loss surface's curvature: the top Hessian eigenvalue "
        f"{c['top_eigenvalue']:.3g} is {ratio:.0f}x the mean ({c['bulk']:.2g}), so a step small enough "
        "for that wall crawls along the valley floor (a ravine)." if ratio else
        f"One direction holds {share:.0%} of the loss surface's curvature (top Hessian eigenvalue "
        f"{c['top_eigenvalue']:.3g}): a ravine.",
        evidence={"top_eigenvalue": c["top_eigenvalue"], "trace": c["trace"], "top_share_of_trace": share,
                  "top_over_mean": ratio, "mean_eigenvalue": c["bulk"], "parameters": c["parameters"],
                  "two_over_lr": c.get("two_over_lr")},
        step=run.step, fix=fix)


@rule("batch.too_large")
def batch_too_large(run: Run) -> Finding | None:
    ns, batch = run.extra.get("noise_scale"), run.extra.get("batch_size")
    if not ns or not batch or "b_simple" not in ns:
        return None
    scale = ns["b_simple"]
    if scale < MIN_NOISE_SCALE or batch < NOISE_FACTOR * scale:
        return None
    rows = run.extra.get("dataset_rows")
    what = "the full training set" if rows and batch >= rows else f"{batch} examples"
    where = "at the initial weights" if ns.get("at") == "initial" else "at the final weights"
    return Finding.make(
        "batch.too_large",
        f"Each batch is {what}, {batch / scale:.0f}x the gradient noise scale ({scale:.3g} examples {where}): "
        "most of each batch only re-confirms a gradient that a smaller batch already estimates well.",
        evidence={"batch_size": batch, "b_simple": scale, "factor": NOISE_FACTOR, "measured": ns.get("at"),
                  "b_simple_final": ns.get("final_b_simple"), "dataset_rows": rows},
        step=run.step)
