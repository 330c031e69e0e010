"""Gradient rules: vanishing (across layers and through time), exploding, exactly zero,
missing, and clipping that fires on every step."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..findings import Finding
from . import Run, rule
from .curves import finite, medians, tail

VANISH_RATIO = 1e-3   # bottom/top gradient RMS below 1e-3: AUTOTRAINER's β1 for the first/last layer ratio
EXPLODE_RATIO = 1e2   # bottom/top gradient RMS above 100 (AUTOTRAINER uses 70 on norms)
EXPLODE_GROWTH = 1e3  # total gradient norm 1000x its value at the start
RELATIVE_LIMIT = 10.0  # gradient 10x the weights at init; healthy zoo nets start at 0.07-0.75 (AUTOTRAINER: 70 across layers)
TIME_RATIO = 1e-3     # the first time step's influence on the last output below 1e-3 of the last step's
ZERO_SHARE = 0.9      # exactly-zero gradient on 90% of steps: not chance, a cut in the graph
PINNED = 1e-3         # total norm within 0.1% of the same value: a clipping threshold, not chance
PINNED_SHARE = 0.5    # pinned on half of the sampled steps or more...
PINNED_SAMPLES = 5    # ...of at least five (a 100-step loop sampled every 20 steps): three or more norms
#                       equal to 0.1% on steps 20+ apart, while the loss itself moves, are no chance
LOSS_MOVES = 0.01     # the loss on the pinned steps spreads over 1% of its level (a converged full-batch
#                       run with weight decay also holds a constant gradient norm, at a constant loss)
SCALE_FREE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
              torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta)  # steps ~ g / running RMS of g


def rms_profile(run: Run) -> tuple[list[str], np.ndarray] | None:
    """Per-step gradient RMS of each weight layer (input to output), over the last half."""
    layers = run.weight_layers()
    if len(layers) < 3:
        return None
    traces = [run.history["grad_norm/" + n].trace() for n in layers]
    n = min(len(t[1]) for t in traces)
    if n < 5:
        return None
    rms = np.stack([t[1][-n:] / math.sqrt(run.numel(name)) for t, name in zip(traces, layers)])
    return layers, tail(rms.T, 0.5).T


def layer_ratio(run: Run) -> tuple[float, str, str] | None:
    """Median over steps of the bottom/top weight layers' gradient RMS (once per verdict)."""
    return run.memo("layer_ratio", lambda: _layer_ratio(run))


def _layer_ratio(run: Run) -> tuple[float, str, str] | None:
    profile = rms_profile(run)
    if profile is None:
        return None
    layers, rms = profile
    ok = np.isfinite(rms).all(0) & (rms[-1] > 0)
    if ok.sum() < 3:
        return None
    return float(np.median(rms[0, ok] / rms[-1, ok])), layers[0], layers[-1]


@rule("grad.vanishing")
def grad_vanishing(run: Run) -> Finding | None:
    _, values = run.loss()
    if len(finite(values)) < 10 or not run.loss_is_poor(values):
        return None  # gated like AUTOTRAINER: small bottom gradients matter when training fails
    found = layer_ratio(run)
    if found and found[0] < VANISH_RATIO:
        ratio, bottom, top = found
        return Finding.make("grad.vanishing",
                            f"The gradient reaching `{bottom}` is {ratio:.1e} of the one at `{top}` "
                            f"({-math.log10(max(ratio, 1e-300)):.0f} orders of magnitude lost on the way down).",
                            evidence={"bottom_to_top_rms": ratio, "bottom": bottom, "top": top},
                            where=[bottom, top])
    for series in run.history.names("through_time/"):
        name = series.split("/", 1)[1]
        ratios = finite(run.history[series].trace()[1])
        if len(ratios) and np.median(ratios) < TIME_RATIO:
            length = int(run.history["through_time_length/" + name].latest)
            ratio = float(np.median(ratios))
            return Finding.make("grad.vanishing",
                                f"Through time in `{name}`: the first of {length} steps has {ratio:.1e} of the last "
                                f"step's influence on the output (median over training): the recurrence forgets "
                                f"long-range inputs.",
                                evidence={"first_to_last": ratio, "sequence_length": length, "probes": len(ratios)},
                                where=name)
    return None


def relative_gradient(run: Run) -> float | None:
    """||g|| / ||w|| over all weight matrices at the first step both were measured."""
    g2 = w2 = 0.0
    for name in run.weight_layers():
        g, w = run.series("grad_norm/" + name), run.series("weight_norm/" + name)
        if g is None or w is None or not g.head_values or not w.head_values or g.head_steps[0] != w.head_steps[0]:
            continue
        g2 += g.head_values[0] ** 2
        w2 += w.head_values[0] ** 2
    return math.sqrt(g2 / w2) if w2 > 0 and math.isfinite(g2) else None


@rule("grad.exploding")
def grad_exploding(run: Run) -> Finding | None:
    total = run.series("grad_norm/total")
    if total is None or len(total) < 3:
        return None
    steps, norms = total.trace()
    start = float(np.median(norms[:3])) if np.isfinite(norms[:3]).all() else float("nan")
    _, loss = run.loss()
    if np.isfinite(start) and start > 0:
        # a NaN without growth is a bad op, not an explosion; a first gradient far above the next
        # ones (a fast-converging LBFGS) has not grown either: growth must pass where it started
        grown = (norms > EXPLODE_GROWTH * start) & (norms > norms[0])
        if grown.any():
            i = int(np.argmax(grown))
            peak = float(np.nanmax(np.where(np.isfinite(norms), norms, np.nan))) if np.isfinite(norms).any() else start
            return Finding.make("grad.exploding",
                                f"The gradient norm grew from {start:.3g} to {norms[i]:.3g} by step {int(steps[i])}.",
                                evidence={"start_norm": start, "norm_at_detection": float(norms[i]), "peak_norm": peak},
                                step=int(steps[i]))
    relative = relative_gradient(run)
    # Large gradients are an explosion only where the step grows with them: Adam-like optimizers
    # divide by the gradients' running RMS (a loss summed over pixels, as in a VAE, is fine
    # there), and a run whose loss then falls well has shown that its steps were of use.
    learned = len(finite(loss)) >= 10 and np.isfinite(loss).all() and not run.loss_is_poor(loss)
    if relative is not None and relative > RELATIVE_LIMIT and not isinstance(run.optimizer, SCALE_FREE) \
            and not learned:
        return Finding.make("grad.exploding",
                            f"At the start the gradient is {relative:.3g}x the size of the weights themselves "
                            f"(healthy networks start well below 1): any step of useful size throws the weights away.",
                            evidence={"gradient_to_weight_norm": relative}, step=0)
    found = layer_ratio(run)
    if found and found[0] > EXPLODE_RATIO and run.loss_is_poor(loss):
        ratio, bottom, top = found
        return Finding.make("grad.exploding",
                            f"The gradient at `{bottom}` is {ratio:.3g}x the one at `{top}`: it grows layer by "
                            f"layer on the way down.",
                            evidence={"bottom_to_top_rms": ratio, "bottom": bottom, "top": top}, where=[bottom, top])
    return None


def units_all_dead(run: Run) -> bool:
    """Some layer's units are (nearly) all dead: that alone zeroes the gradients below and
    beside it, so exactly-zero gradients are units.dead's evidence, not a cut graph."""
    dead = [run.series(n).latest for n in run.history.names("dead/") if run.series(n)]
    positive = medians([run.series(n).trace()[1] for n in run.history.names("positive/") if run.series(n)])
    return any(d >= 0.95 for d in dead) or any(p < 0.01 for p in positive)


@rule("grad.zero")
def grad_zero(run: Run) -> Finding | None:
    if units_all_dead(run):
        return None
    zero, total_nonzero = [], False
    for name, _ in run.params:
        s = run.series("grad_norm/" + name)
        if s is None or len(s) < 5:
            continue
        if s.head_values[0] > 0:  # a non-zero first gradient: not zero, and some gradient is not (no trace needed)
            total_nonzero = True
            continue
        v = s.trace()[1]
        if v[0] == 0 and np.mean(v == 0) >= ZERO_SHARE:
            zero.append(name)
        elif np.any(v > 0):
            total_nonzero = True
    _, loss = run.loss()
    every = bool(zero) and not total_nonzero
    # every gradient zero: a zero-derivative op at the very end (round/sign on the output),
    # unless the loss itself sits at exactly zero (a perfect fit has zero gradients too)
    if zero and (total_nonzero or (len(finite(loss)) and float(np.median(finite(loss))) > 0)):
        if every:
            return Finding.make("grad.zero",
                                f"Every parameter gets an exactly-zero gradient on every step while the loss stays at "
                                f"{float(np.median(finite(loss))):.3g}: an op at the end of the model (round, sign, a "
                                f"threshold) has a zero derivative, so nothing learns.",
                                evidence={"parameters": zero[:20], "count": len(zero), "all_parameters": True},
                                where=zero[:20])
        return Finding.make("grad.zero",
                            f"{len(zero)} parameter(s) on the loss path get an exactly-zero gradient on every step "
                            f"(e.g. `{zero[0]}`): an op between them and the loss is not differentiable.",
                            evidence={"parameters": zero[:20], "count": len(zero)}, where=zero[:20])
    return None


@rule("grad.none")
def grad_none(run: Run) -> Finding | None:
    never = [n for n, c in run.none_counts.items() if run.sampled >= 3 and c == run.sampled]
    if never and len(never) < len(run.none_counts):
        return Finding.make("grad.none",
                            f"{len(never)} parameter(s) never received a gradient (e.g. `{never[0]}`): they are not "
                            f"used in the loss, or the graph is cut (`.detach()`, `.data`, `no_grad`).",
                            evidence={"parameters": never[:20], "count": len(never)}, where=never[:20])
    if run.not_in_optimizer and run.sampled >= 1:
        names = run.not_in_optimizer
        return Finding.make("grad.none",
                            f"{len(names)} trainable parameter(s) are not in the optimizer (e.g. `{names[0]}`): "
                            f"they never change.",
                            evidence={"parameters": names[:20], "count": len(names)}, where=names[:20],
                            fix="Pass all trainable parameters to the optimizer (`model.parameters()`), or freeze "
                                "the others on purpose with `requires_grad_(False)`.")
    return None


@rule("grad.clipped_always")
def grad_clipped_always(run: Run) -> Finding | None:
    total = run.series("grad_norm/total")
    if total is None or len(total) < PINNED_SAMPLES:
        return None
    steps, norms = total.trace()
    keep = np.isfinite(norms)
    steps, norms = steps[keep], norms[keep]
    if len(norms) < PINNED_SAMPLES:
        return None
    limit = run.extra.get("pre_clip_limit")
    if limit:  # the norms were read before the framework clipped them (Lightning): compare with its limit
        cap, clipped = float(limit), norms > float(limit)
        seen = f"the gradient norm before clipping exceeds the limit {cap:.3g}"
    else:  # read after the user's clip: the clipped norms all sit at the limit
        cap = float(np.median(norms))
        clipped = np.abs(norms - cap) <= PINNED * cap
        seen = f"the gradient norm sits exactly at {cap:.3g}"
        if not _loss_moves(run, steps[clipped]):
            return None
    share = float(clipped.mean())
    if cap > 0 and share >= PINNED_SHARE:
        # Adam-like steps divide by a running gradient scale: a norm clipped on every step leaves the
        # step size as it was, so it hides no rate; it only evens out the batches' weight
        normalized = isinstance(run.optimizer, SCALE_FREE)
        return Finding.make("grad.clipped_always",
                            f"On {share:.0%} of the sampled steps {seen}: clipping fires almost every step"
                            + (f"; {type(run.optimizer).__name__} normalizes its steps by the gradient's running scale, "
                               f"so this changes little." if normalized else "."),
                            evidence={"clip_norm": cap, "clipped_share": share, "sampled_steps": len(norms),
                                      **({"median_norm_before_clipping": float(np.median(norms))} if limit else {})},
                            severity="info" if normalized else None)
    return None


def _loss_moves(run: Run, steps: np.ndarray) -> bool:
    """The loss on these steps varies: batches differ, so a constant gradient norm is a clip."""
    loss_steps, loss = run.loss()
    at = finite(loss[np.isin(loss_steps, steps)])
    if len(at) < 3:
        return True  # no loss logged at those steps: the pinned norms alone decide
    level = float(np.median(np.abs(at)))
    return level == 0 or float(np.ptp(at)) > LOSS_MOVES * level
