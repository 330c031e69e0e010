"""Unit rules: dead ReLUs (measured on nn.ReLU modules, and on weight rows with an
exactly-zero gradient for functional activations), saturated sigmoid/tanh units, and
bottom layers that learn far slower than the top."""
from __future__ import annotations

import numpy as np

from ..findings import Finding
from . import Run, rule
from .curves import finite, medians, tail

DEAD_SHARE = 0.5      # half of a layer's units silent over hundreds of examples (AUTOTRAINER/DeepDiagnosis use 0.7 of entries)
WHOLE_LAYER = 0.9     # nine in ten units dead: the layer is nearly cut, a warning even if the loss still falls
SATURATED_SHARE = 0.5  # half of the outputs with < 1% of the maximal derivative (DeepDiagnosis: > 50%)
SLOW_RATIO = 1e-2     # bottom layer's update/weight ratio 100x below the top's


def _latest(run: Run, name: str) -> float | None:
    s = run.series(name)
    return s.latest if s is not None else None


@rule("units.dead")
def units_dead(run: Run) -> Finding | None:
    dead = {}
    for module, kind in run.kinds.items():
        share = _latest(run, "dead/" + module) if kind == "relu" else None
        if share is not None and share >= DEAD_SHARE:
            dead[module] = share
    relu_modules = [m for m, k in run.kinds.items() if k == "relu"]
    layers = run.weight_layers() if not relu_modules else []  # nn.ReLU modules were measured themselves
    for name in layers[:-1]:  # the output layer has no activation after it
        module = run.module_of(name)
        share = _latest(run, "dead_rows/" + name)
        positive = _latest(run, "positive/" + module)
        if share is None or share < DEAD_SHARE or positive is None:
            continue
        if positive <= (1 - share) + 0.05:  # its silent rows are units that never output > 0
            dead[module] = share
    if not dead:
        return None
    worst = max(dead, key=dead.get)
    _, values = run.loss()
    hurts = dead[worst] >= WHOLE_LAYER or len(values) < 10 or run.loss_is_poor(values)
    return Finding.make("units.dead",
                        f"{dead[worst]:.0%} of the units after `{worst}` never activate"
                        + (f" ({len(dead)} layers affected)" if len(dead) > 1 else "")
                        + ("." if hurts else "; the model still fits, so this is capacity left unused."),
                        evidence={"dead_share": {k: round(v, 3) for k, v in dead.items()}}, where=sorted(dead),
                        severity=None if hurts else "info")


@rule("units.saturated")
def units_saturated(run: Run) -> Finding | None:
    final = run.order[-1] if run.order else None
    saturated = {}
    for module, kind in run.kinds.items():
        if kind != "saturating" or module == final:
            continue  # a sigmoid/tanh on the output is supposed to approach its bounds
        s = run.series("saturated/" + module)
        if s is None or len(s) < 3:
            continue
        share = float(np.median(tail(s.trace()[1], 0.5)))
        if share >= SATURATED_SHARE:
            saturated[module] = share
    if not saturated:
        return None
    worst = max(saturated, key=saturated.get)
    return Finding.make("units.saturated",
                        f"{saturated[worst]:.0%} of the outputs of `{worst}` sit at the flat ends of the "
                        f"activation, where its gradient is below 1% of the maximum.",
                        evidence={"saturated_share": {k: round(v, 3) for k, v in saturated.items()}},
                        where=sorted(saturated))


@rule("layers.slow_bottom")
def layers_slow_bottom(run: Run) -> Finding | None:
    layers = [n for n in run.weight_layers() if run.series("update_ratio/" + n) is not None]
    if len(layers) < 3:
        return None
    late = [finite(tail(run.history["update_ratio/" + n].trace()[1], 0.5)) for n in layers]
    measured = iter(medians([v for v in late if len(v)]))
    per_layer = [next(measured) if len(v) else float("nan") for v in late]
    bottom, top = per_layer[0], max(per_layer[1:])
    if np.isfinite(bottom) and top > 0 and bottom / top < SLOW_RATIO:
        return Finding.make("layers.slow_bottom",
                            f"`{layers[0]}` changes by {bottom:.1e} of its weights per step, {top / max(bottom, 1e-300):.0f}x "
                            f"slower than the fastest layer above it.",
                            evidence={"update_ratio": dict(zip(layers, per_layer))}, where=layers[0])
    return None
