"""`nndoctor compare A.json B.json`: what differs between two runs ("it trained last week,
why not now"): the findings gained and lost, the first step where the loss traces part
beyond their own noise, and the setup recorded in both reports' metadata.

Where the traces part: the two losses are compared on the steps both reports kept. The
noise of a trace is the median absolute change from one kept point to the next (robust to
the spikes of a diverging run, and what a reader sees as the trace's jitter). The quieter
trace's noise sets the scale, for both (sqrt(2) x it, the jitter of a difference of two such
traces): a diverging trace's step-to-step change is its divergence, not jitter, and would
hide the very parting sought. The traces part at the first of PART_RUN consecutive common
steps where they differ by more than PART_FACTOR times that, or where one is finite and the
other is not. Three points in a row keep one noisy batch from counting; three noise widths
put a chance crossing at well under 1% per point for roughly normal jitter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from .findings import Report

PART_FACTOR = 3.0
PART_RUN = 3
# meta that differs between any two runs and says nothing about the setup
UNCOMPARED = {"started", "seconds", "watch_seconds", "module_order", "module_types", "analysis", "lr_range",
              "losses_logged", "checkup"}


@dataclass
class Comparison:
    gained: list = field(default_factory=list)   # findings (warning/error) in B, not in A
    lost: list = field(default_factory=list)     # findings in A, not in B
    kept: list = field(default_factory=list)     # codes in both
    parted_at: int | None = None                 # first step where the losses part beyond noise
    parting: dict = field(default_factory=dict)  # the numbers behind it
    setup: list = field(default_factory=list)    # (meta key, value in A, value in B), differing only


def compare(a: Report, b: Report) -> Comparison:
    found_a = {f.code: f for f in a.findings if f.is_problem}
    found_b = {f.code: f for f in b.findings if f.is_problem}
    out = Comparison(gained=[f for c, f in found_b.items() if c not in found_a],
                     lost=[f for c, f in found_a.items() if c not in found_b],
                     kept=[c for c in found_a if c in found_b])
    out.parted_at, out.parting = parting(a.series.get("loss"), b.series.get("loss"))
    out.setup = setup_differences(a.meta, b.meta)
    return out


def _trace(series) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(series, dict):
        return np.array([]), np.array([])
    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan
    return (np.array([number(s) for s in series.get("step", [])]),
            np.array([number(v) for v in series.get("value", [])]))


def noise(values: np.ndarray) -> float:
    """The median absolute change between consecutive finite points."""
    v = values[np.isfinite(values)]
    return float(np.median(np.abs(np.diff(v)))) if len(v) > 2 else 0.0


def parting(series_a, series_b) -> tuple[int | None, dict]:
    steps_a, loss_a = _trace(series_a)
    steps_b, loss_b = _trace(series_b)
    common, ia, ib = np.intersect1d(steps_a, steps_b, return_indices=True)
    if len(common) < PART_RUN:
        return None, {"common_steps": int(len(common))}
    va, vb = loss_a[ia], loss_b[ib]
    scale = math.sqrt(2) * min(noise(loss_a), noise(loss_b))
    finite = np.isfinite(va) & np.isfinite(vb)
    with np.errstate(invalid="ignore"):
        apart = np.where(finite, np.abs(va - vb) > PART_FACTOR * scale, np.isfinite(va) != np.isfinite(vb))
    facts = {"common_steps": int(len(common)), "noise": round(scale, 6), "factor": PART_FACTOR, "run": PART_RUN}
    for i in range(len(common) - PART_RUN + 1):
        if apart[i:i + PART_RUN].all():
            facts.update(loss_a=float(va[i]), loss_b=float(vb[i]))
            return int(common[i]), facts
    return None, facts


def _flat(meta: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in meta.items():
        if not prefix and key in UNCOMPARED:
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def setup_differences(meta_a: dict, meta_b: dict) -> list[tuple[str, object, object]]:
    """Each meta key both reports recorded (nested keys as `versions.torch`) whose values differ."""
    a, b = _flat(meta_a or {}), _flat(meta_b or {})
    return [(k, a[k], b[k]) for k in a if k in b and a[k] != b[k]]


# ---- showing it -------------------------------------------------------------------------
def _short(value, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def lines(c: Comparison, name_a: str = "A", name_b: str = "B") -> list[tuple[str, str]]:
    """(heading, text) pairs: the same content for the terminal and the page."""
    out = []
    for heading, found in ((f"gained in {name_b}", c.gained), (f"lost since {name_a}", c.lost)):
        out += [(heading, f"{f.severity} {f.code}: {f.message}") for f in found] or [(heading, "none")]
    if c.kept:
        out.append(("in both", ", ".join(c.kept)))
    if c.parted_at is not None:
        p = c.parting
        out.append(("losses part", f"at step {c.parted_at} ({_short(p['loss_a'], 12)} vs {_short(p['loss_b'], 12)}, "
                                   f"beyond {p['factor']:g}x the noise {p['noise']:.3g} for {p['run']} points)"))
    elif c.parting.get("common_steps", 0) < PART_RUN:
        out.append(("losses part", "not comparable: the reports share too few logged steps"))
    else:
        out.append(("losses part", f"never beyond {PART_FACTOR:g}x the noise ({c.parting['noise']:.3g})"))
    out += [("setup", f"{k}: {_short(va)} -> {_short(vb)}") for k, va, vb in c.setup] or [("setup", "no difference recorded")]
    return out


def renderable(c: Comparison, name_a: str, name_b: str):
    from rich.table import Table
    from rich.text import Text
    table = Table(title=Text(f"nndoctor compare: {name_a} -> {name_b}"), show_header=False, show_lines=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for heading, text in lines(c, name_a, name_b):
        table.add_row(Text(heading), Text(text))  # Text: the reports' strings are never markup
    return table


def render_html(c: Comparison, name_a: str, name_b: str) -> str:
    rows = "".join(f"<tr><th>{escape(h)}</th><td>{escape(t)}</td></tr>" for h, t in lines(c, name_a, name_b))
    title = escape(f"nndoctor compare: {name_a} -> {name_b}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{title}</title>'
            "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "th{text-align:left;vertical-align:top;padding:.3rem 1rem .3rem 0;white-space:nowrap}"
            "td{padding:.3rem 0;overflow-wrap:anywhere}</style></head>"
            f"<body><h1>{title}</h1><table>{rows}</table></body></html>")
