"""Rules about the user's own training loop."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..findings import Finding
from . import Run, rule
from .curves import finite

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


def mode_dependent(run: Run) -> list[str]:
    """The modules that behave differently in train and eval mode (dropout, BatchNorm)."""
    return [n for m, n in run.module_names.items() if isinstance(m, MODE_DEPENDENT)]


@rule("loop.eval_mode")
def eval_mode(run: Run) -> Finding | None:
    if run.loop_steps < 5 or run.eval_steps < EVAL_SHARE * run.loop_steps or run.model is None:
        return None
    affected = mode_dependent(run)
    if not affected:
        return None  # eval mode changes nothing in this model
    return Finding.make("loop.eval_mode",
                        f"{run.eval_steps} of {run.loop_steps} optimizer steps ran with the model in eval mode, "
                        f"so {len(affected)} dropout/BatchNorm module(s) behave as at inference.",
                        evidence={"eval_steps": run.eval_steps, "steps": run.loop_steps, "modules": affected[:10]},
                        where=affected[:10])


# ---- evaluations and graphs (collect/forwards.py) --------------------------------------------
GRAPH_AGE = 50       # a graph still alive 50 steps after its step is held by the script, not by the step in flight
GRAPHS_ALIVE = 3     # at least three sampled steps' graphs ...
GRAPH_SHARE = 0.8    # ... and 80% of the sampled graphs that old: a steady leak, not one kept `best_output`
EVAL_WINDOWS = 2     # evaluations between at least two pairs of steps: a repeated validation, not one shape check
EVAL_SHARE_BAD = 0.5  # most evaluation forwards ran that way


@rule("loop.graph_retained")
def graph_retained(run: Run) -> Finding | None:
    if run.forwards is None:
        return None
    at, alive, freed = run.forwards.retained
    old = [s for s in alive if at - s >= GRAPH_AGE]
    if len(old) < GRAPHS_ALIVE or len(old) < GRAPH_SHARE * (len(old) + freed):
        return None
    return Finding.make("loop.graph_retained",
                        f"The autograd graphs of {len(old)} sampled steps (the oldest from step {min(old)}) were still "
                        f"alive at step {at}: the script keeps the loss or output tensors with their graphs "
                        f"(e.g. `losses.append(loss)`), so memory grows with every step.",
                        evidence={"graphs_alive": len(old), "graphs_freed": freed, "oldest_step": min(old),
                                  "at_step": at})


@rule("loop.eval_with_grad")
def eval_with_grad(run: Run) -> Finding | None:
    f = run.forwards
    if f is None or f.eval_windows["grad"] < EVAL_WINDOWS or f.eval_grad < EVAL_SHARE_BAD * f.evaluations:
        return None
    return Finding.make("loop.eval_with_grad",
                        f"{f.eval_grad} of {f.evaluations} forward passes that were never backpropagated (evaluation, "
                        f"in {f.eval_windows['grad']} separate places between optimizer steps) ran with autograd on: "
                        f"each one recorded a graph that was never used.",
                        evidence={"eval_forwards": f.evaluations, "in_grad_mode": f.eval_grad,
                                  "windows": f.eval_windows["grad"], "training_forwards": f.training})


@rule("loop.eval_in_train_mode")
def eval_in_train_mode(run: Run) -> Finding | None:
    f = run.forwards
    if f is None or run.model is None or f.eval_windows["train_mode"] < EVAL_WINDOWS \
            or f.eval_train_mode < EVAL_SHARE_BAD * f.evaluations:
        return None
    affected = mode_dependent(run)
    if not affected:
        return None  # train mode changes nothing in this model
    return Finding.make("loop.eval_in_train_mode",
                        f"{f.eval_train_mode} of {f.evaluations} evaluation forward passes (never backpropagated) ran "
                        f"with the model in train mode: {len(affected)} dropout/BatchNorm module(s) make the metric "
                        f"noisy, and BatchNorm's running statistics are updated with the evaluation data.",
                        evidence={"eval_forwards": f.evaluations, "in_train_mode": f.eval_train_mode,
                                  "windows": f.eval_windows["train_mode"], "modules": affected[:10]},
                        where=affected[:10])


# ---- what is evaluated: rows and scales of the evaluation inputs against the training inputs ----
PRINT_TOLERANCE = 1e-6  # fingerprints equal to 1e-6 of their spread: the same row (float rounding aside);
                        # two projections, so distinct rows collide with odds ~1e-12 per pair
MIN_REPEATS = 5         # training rows seen again at another sampled step: enough to know the coverage
EXPECTED = 3.0          # an evaluation batch is judged once it should hold >= 3 matches if it were training rows
TRAIN_LIKE = 0.5        # it holds at least half of them: training rows ...
HELD_OUT = 0.1          # ... or at most a tenth: a held-out batch (then the run does have a held-out split)


def _matcher(reference: np.ndarray, steps: np.ndarray):
    """matches(rows, step) -> how many of `rows` (fingerprints) equal a reference row of another step."""
    spread = reference.std(0) + 1e-12
    tol = PRINT_TOLERANCE * spread
    order = np.argsort(reference[:, 0])
    first, second, at = reference[order, 0], reference[order, 1], steps[order]

    def matches(rows: np.ndarray, step: int) -> int:
        lo = np.searchsorted(first, rows[:, 0] - tol[0])
        hi = np.searchsorted(first, rows[:, 0] + tol[0], side="right")
        one = np.flatnonzero(hi - lo == 1)  # the usual case, at most one candidate: vectorized
        found = int(np.sum((np.abs(second[lo[one]] - rows[one, 1]) <= tol[1]) & (at[lo[one]] != step)))
        for i in np.flatnonzero(hi - lo > 1):
            window = slice(lo[i], hi[i])
            found += bool(np.any((np.abs(second[window] - rows[i, 1]) <= tol[1]) & (at[window] != step)))
        return found
    return matches


@rule("loop.eval_on_train_data")
def eval_on_train_data(run: Run) -> Finding | None:
    f = run.forwards
    if f is None or not f.prints["train"] or not f.prints["eval"]:
        return None
    reference = np.concatenate([p for _, p in f.prints["train"]])
    steps = np.concatenate([np.full(len(p), s) for s, p in f.prints["train"]])
    matches = _matcher(reference, steps)
    repeats = sum(matches(p, s) for s, p in f.prints["train"])  # training rows met again at another step
    if repeats < MIN_REPEATS:
        return None  # too few rows seen twice to know what share of the training set the reference covers
    coverage = repeats / len(reference)
    train_like = held_out = 0
    matched = expected = 0.0
    for s, p in f.prints["eval"]:
        hits, due = matches(p, s), coverage * len(p)
        if due < EXPECTED:
            continue
        matched, expected = matched + hits, expected + due
        train_like += hits >= TRAIN_LIKE * due
        held_out += hits <= HELD_OUT * due
    if train_like < 2 or held_out:
        return None
    share = min(1.0, matched / expected)
    return Finding.make("loop.eval_on_train_data",
                        f"The evaluated rows are training rows: {int(matched)} of the rows of {train_like} evaluation "
                        f"batches equal rows the model trained on, as many as {share:.0%} of what a pass over the "
                        f"training data itself would match; no evaluation batch was held out.",
                        evidence={"matched_rows": int(matched), "expected_if_training": round(expected, 1),
                                  "eval_batches": train_like, "training_rows_seen_twice": repeats})


SCALE_RATIO = 3.0  # evaluation features spread 3x more or less than in training (median over features):
                   # batch sampling noise stays within ~1.5x for >= 32 rows; 0..255 vs 0..1 is 255x
SHIFT = 2.0        # or their mean sits 2 training standard deviations away (noise: < 0.5 for >= 32 rows)
MIN_ROWS = 32      # evaluation rows measured before the comparison is made


def _pooled(batches: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature mean and std over measured batches (within- plus between-batch variance)."""
    n = np.array([b for b, _ in batches], dtype=float)
    means = np.stack([s[0] for _, s in batches])
    stds = np.stack([s[1] for _, s in batches])
    mean = (n[:, None] * means).sum(0) / n.sum()
    var = (n[:, None] * (stds ** 2 + (means - mean) ** 2)).sum(0) / n.sum()
    return mean, np.sqrt(var), int(n.sum())


@rule("data.split_mismatch")
def split_mismatch(run: Run) -> Finding | None:
    f = run.forwards
    if f is None or len(f.stats["train"]) < 2 or not f.stats["eval"]:
        return None
    with np.errstate(all="ignore"):
        mean_t, std_t, _ = _pooled(f.stats["train"])
        mean_e, std_e, rows = _pooled(f.stats["eval"])
        if rows < MIN_ROWS:
            return None
        scale = max(np.nanmax(std_t), np.nanmax(std_e), 1e-12)
        informative = np.isfinite(std_t) & np.isfinite(std_e) & (std_t > 1e-6 * scale) & np.isfinite(mean_e) & np.isfinite(mean_t)
        if informative.sum() < 1:
            return None
        ratio = float(np.median(std_e[informative] / std_t[informative]))
        shift = float(np.median(np.abs(mean_e - mean_t)[informative] / std_t[informative]))
    if 1 / SCALE_RATIO < ratio < SCALE_RATIO and shift < SHIFT:
        return None
    return Finding.make("data.split_mismatch",
                        f"The evaluation inputs are not on the training inputs' scale: per feature (median over "
                        f"{int(informative.sum())}), their spread is {ratio:.3g}x the training spread and their mean "
                        f"{shift:.3g} training standard deviations away — preprocessing applied to one split only?",
                        evidence={"std_ratio": ratio, "mean_shift_in_train_stds": shift,
                                  "train_range": [float(np.nanmin(np.stack([s[2] for _, s in f.stats["train"]]))),
                                                  float(np.nanmax(np.stack([s[3] for _, s in f.stats["train"]])))],
                                  "eval_range": [float(np.nanmin(np.stack([s[2] for _, s in f.stats["eval"]]))),
                                                 float(np.nanmax(np.stack([s[3] for _, s in f.stats["eval"]])))],
                                  "features": int(informative.sum()), "eval_rows": rows})


# ---- the schedule and the parameters the optimizer holds -------------------------------------
LR_FLOOR = 1e-3    # the rate fell below 1/1000 of its peak: three orders of magnitude, beyond any step
                   # decay per epoch (90-epoch ImageNet: 1/100 in the last third) and reached by cosine or
                   # OneCycle sized in steps only in the last few percent of the run
LOW_SHARE = 0.5    # ... on at least half of the sampled steps: the schedule ran out in the first half
STALL = 0.1        # and from then on the loss moved less than 10% of its level between the first and the
                   # second half of that stretch (batch noise of the medians: a few percent)


@rule("lr.schedule_too_fast")
def schedule_too_fast(run: Run) -> Finding | None:
    s = run.series("lr")
    if s is None or len(s) < 5:
        return None
    steps, lr = s.trace()
    peak = float(np.nanmax(lr)) if np.isfinite(lr).any() else 0.0
    low = lr < LR_FLOOR * peak
    if peak <= 0 or low.sum() < 3 or low.mean() < LOW_SHARE:
        return None
    fell = int(steps[np.argmax(low)])
    loss_steps, losses = run.loss()
    after = finite(losses[loss_steps >= fell])
    if len(after) < 20:
        return None
    half = len(after) // 2
    level = float(np.median(after[:half]))
    moved = abs(level - float(np.median(after[half:]))) / abs(level) if level else 0.0
    if not np.isfinite(moved) or moved >= STALL:
        return None
    return Finding.make("lr.schedule_too_fast",
                        f"The learning rate fell from {peak:.3g} to below 1/{1 / LR_FLOOR:.0f} of it by step {fell} and stayed "
                        f"there for {low.mean():.0%} of the sampled steps; since then the loss moved {moved:.1%}. "
                        f"A scheduler sized in epochs is probably stepped every batch.",
                        evidence={"peak_lr": peak, "last_lr": float(lr[-1]), "fell_below_at_step": fell,
                                  "share_below": float(low.mean()), "loss_change_after": moved})


FROZEN_SHARE = 0.5  # most of the model's parameters (by count) cannot learn


@rule("params.frozen")
def frozen(run: Run) -> Finding | None:
    if run.model is None or not (run.final or run.progress >= 0.5):
        return None
    _, values = run.loss()
    if len(values) < 20 or not run.loss_is_poor(values):
        return None  # a fine-tune with a frozen backbone that learns is what freezing is for
    missing = set(run.not_in_optimizer)
    sizes = {n: p.numel() for n, p in run.model.named_parameters()}
    idle = [n for n, p in run.model.named_parameters() if not p.requires_grad or n in missing]
    share = sum(sizes[n] for n in idle) / max(1, sum(sizes.values()))
    if share < FROZEN_SHARE:
        return None
    modules = list(dict.fromkeys(run.module_of(n) for n in idle))
    frozen_names = [n for n in idle if n not in missing]
    named = "; ".join(part for part in (
        f"requires_grad=False: {', '.join(frozen_names[:5])}{', ...' if len(frozen_names) > 5 else ''}" if frozen_names else "",
        f"not in the optimizer: {', '.join(sorted(missing)[:5])}{', ...' if len(missing) > 5 else ''}" if missing else "")
        if part)
    return Finding.make("params.frozen",
                        f"{share:.0%} of the parameters cannot learn ({named}) and the loss stays poor.",
                        evidence={"share": share, "frozen": frozen_names[:20], "not_in_optimizer": sorted(missing)[:20],
                                  "modules": modules[:20]},
                        where=modules[:10])
