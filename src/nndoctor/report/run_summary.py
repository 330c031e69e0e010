"""What was run, from `report.meta`: the rows of the page's "Run" header and the terminal's
one-line summary. A reviewer asks these first: which script or call, when and for how
long, which versions on which device, which model and optimizer at which rate, how many
steps. Meta that a report lacks (an older report, a custom watcher) is left out, never
guessed."""
from __future__ import annotations

import math
import shlex


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _rates(lrs) -> str | None:
    values = [_number(v) for v in (lrs if isinstance(lrs, list) else [lrs])]
    values = [v for v in values if v is not None]
    if not values:
        return None
    distinct = list(dict.fromkeys(f"{v:.3g}" for v in values))
    text = "lr " + " / ".join(distinct[:4]) + (" / …" if len(distinct) > 4 else "")
    return text + (f" ({len(values)} groups)" if len(values) > 1 else "")


def command(meta: dict) -> str | None:
    """The command line (`nndoctor watch`) or the API call that made the report."""
    if meta.get("script"):
        argv = meta.get("argv") if isinstance(meta.get("argv"), list) else []
        return shlex.join([str(meta["script"]), *map(str, argv)])
    return str(meta["call"]) if meta.get("call") else None


def duration(meta: dict) -> str | None:
    seconds = _number(meta.get("seconds", meta.get("watch_seconds")))
    if seconds is None:
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def model_text(meta: dict) -> str | None:
    if not meta.get("model"):
        return None
    params = _number(meta.get("parameters"))
    return str(meta["model"]) + (f", {int(params):,} trainable parameters" if params is not None else "")


def optimizer_text(meta: dict) -> str | None:
    if not meta.get("optimizer"):
        return None
    rates = _rates(meta.get("lr"))
    return str(meta["optimizer"]) + (f", {rates}" if rates else "")


def steps_text(meta: dict) -> str | None:
    done = meta.get("steps_trained", meta.get("steps"))
    if done is None:
        return None
    planned = meta.get("steps_planned")
    text = f"{done} of {planned} planned" if planned not in (None, done) else f"{done}"
    return text + (f", batch size {meta['batch_size']}" if meta.get("batch_size") else "")


def versions_text(meta: dict) -> str | None:
    versions = meta.get("versions")
    if not isinstance(versions, dict) or not versions:
        return None
    return " · ".join(f"{k} {v}" for k, v in versions.items())


def run_rows(meta: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the page's Run header, in a reviewer's reading order."""
    started = meta.get("started")
    when = " · ".join(x for x in (str(started) if started else None, duration(meta)) if x)
    rows = [("Run", command(meta)), ("When", when or None), ("Model", model_text(meta)),
            ("Optimizer", optimizer_text(meta)), ("Steps", steps_text(meta)),
            ("Device", str(meta["device"]) if meta.get("device") else None), ("Versions", versions_text(meta))]
    return [(k, v) for k, v in rows if v]


def run_line(meta: dict) -> str:
    """The same in one line for the terminal."""
    steps = meta.get("steps_trained", meta.get("steps"))
    took = duration(meta)
    steps_part = (f"{steps} steps" + (f" in {took}" if took else "")) if steps is not None else took
    parts = [command(meta), model_text(meta), optimizer_text(meta), steps_part,
             str(meta["device"]) if meta.get("device") else None]
    return " · ".join(p for p in parts if p)


def title(meta: dict) -> str:
    """What the page and its tab are called: the script, else the model."""
    if meta.get("script"):
        return str(meta["script"]).replace("\\", "/").rsplit("/", 1)[-1]
    if "lr_range_test" in meta:
        return "LR range test"
    return str(meta.get("model") or (meta.get("checkup") or {}).get("model") or "run")
