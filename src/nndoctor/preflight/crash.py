"""The pitfall behind an exception that stopped training, for diagnose and every watcher.

The pre-flight checks on the case the crash left behind (the batch and the loss call that
raised) name the cause with its evidence when they can: labels out of range, a float target
for CrossEntropyLoss, output/target shapes that do not fit. `explain_crash` covers the rest
from the exception itself: the same codes when the message says so, and `run.failed` with the
fix the error calls for (a batch of one through BatchNorm, tensors on two devices, an input
width the first layer does not take), never "run the script".
"""
from __future__ import annotations

import traceback

from ..findings import Finding

# pre-flight findings made from the exception the loss raised on the case (evidence "error")
EXPLAINS_A_CRASH = ("data.labels_out_of_range", "loss.shape_mismatch", "output.activation_mismatch")

# (words in the error, fix): errors no finding code names, with what to do about each
KNOWN_ERRORS = [
    (("expected more than 1 value per channel when training",),
     "A batch of one row reached BatchNorm in training mode (it cannot normalize one value): drop the last "
     "incomplete batch (`DataLoader(..., drop_last=True)`) or use a batch size above 1."),
    (("expected all tensors to be on the same device",),
     "Move the model and every batch to one device: `model.to(device)` once, `x, y = x.to(device), y.to(device)` "
     "in the loop."),
    (("mat1 and mat2 shapes cannot be multiplied",),
     "The input's feature count does not match the first layer's `in_features`: flatten the input "
     "(`x.view(len(x), -1)`) or build the layer with the input's width."),
    (("input type", "weight type", "should be the same"),
     "The input and the weights have different dtypes or devices: cast the batch like the model "
     "(`x = x.to(next(model.parameters()))`)."),
    (("expected scalar type",),
     "Two tensors of different dtypes meet in one op: cast the inputs to the model's dtype "
     "(`x = x.float()`) and class targets to integers (`y = y.long()`)."),
]


def explain_crash(exc: BaseException, step: int, findings: list[Finding], where: str | None = None) -> Finding | None:
    """The finding for an exception at `step`; None when one of `findings` (the pre-flight's on
    the crash's case) already names it: the same code, or the loss's own error on that case."""
    found = _from_message(exc, step, where)
    if any(f.is_problem and (f.code == found.code or f.code in EXPLAINS_A_CRASH and "error" in f.evidence)
           for f in findings):
        return None
    return found


def _from_message(exc: BaseException, step: int, where: str | None) -> Finding:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    lowered = text.lower()
    evidence = {"error": text, "step": step, **({"where": where} if where else {})}
    if isinstance(exc, IndexError) or "out of bounds" in lowered or "target" in lowered and "range" in lowered:
        return Finding.make("data.labels_out_of_range", f"The loss failed on the labels at step {step}: {text}",
                            evidence=evidence)
    if "between 0 and 1" in lowered:
        code = "data.labels_out_of_range" if "target" in lowered else "output.activation_mismatch"
        return Finding.make(code, f"The loss failed at step {step}: {text}", evidence=evidence)
    for words, fix in KNOWN_ERRORS:
        if all(w in lowered for w in words):
            return Finding.make("run.failed", f"Training stopped at step {step} on an error: {text}",
                                evidence=evidence, step=step, fix=fix)
    if any(k in lowered for k in ("size of tensor", "must match", "same size", "broadcast", "shape")):
        return Finding.make("loss.shape_mismatch", f"Output and target shapes do not fit at step {step}: {text}",
                            evidence=evidence)
    place = f" at {where}" if where else ""
    return Finding.make("run.failed", f"Training stopped at step {step} on an error{place}: {text}",
                        evidence=evidence, step=step,
                        fix=f"No known pitfall explains this error: fix the line{place} the traceback points at "
                            "(its message says what it expected).")


def script_frame(exc: BaseException, path: str) -> str | None:
    """`file:line` of the deepest frame of the user's script in the exception's traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else None
