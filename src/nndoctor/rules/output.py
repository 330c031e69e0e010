"""Output rule: the model answers the same thing for every input."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule

TOP_SHARE = 0.95       # 95% of predictions go to one class...
LABEL_SHARE = 0.8      # ...while that class is at most 80% of the labels: not just a skewed prior
FLAT_SPREAD = 1e-3     # outputs vary across the batch by 0.1% of their size: constant


@rule("output.collapsed")
def output_collapsed(run: Run) -> Finding | None:
    share, spread = run.series("output/top_share"), run.series("output/spread")
    if share is None or len(share) < 3 or run.progress < 0.5:
        return None
    late_share = float(np.median(share.last(3)))
    late_spread = float(np.median(spread.last(3)))
    targets = run.targets or {}
    if targets.get("kind") == "values":
        std = run.series("output/std")
        ratio = float(np.median(std.last(3))) / max(targets["std"], 1e-12)
        if ratio < 1e-2:
            return Finding.make("output.collapsed",
                                f"The predictions vary across inputs by {ratio:.1e} of the targets' spread: "
                                f"the model answers nearly the same for everything.",
                                evidence={"output_to_target_std": ratio})
        return None
    label_share = targets.get("top_share")
    evidence = {"predicted_top_share": late_share if np.isfinite(late_share) else None,
                "label_top_share": label_share, "output_spread": late_spread}
    if late_share >= TOP_SHARE and (label_share is None or label_share <= LABEL_SHARE):
        return Finding.make("output.collapsed",
                            f"{late_share:.0%} of the predictions go to one class"
                            + (f" (it has {label_share:.0%} of the labels)" if label_share is not None else "")
                            + ": the model ignores its input.", evidence=evidence)
    if late_spread < FLAT_SPREAD:  # also for a single output (NaN share: a regression or a logit)
        return Finding.make("output.collapsed",
                            f"The outputs vary across the batch by {late_spread:.1e} of their size: the model "
                            f"answers the same for every input.", evidence=evidence)
    return None
