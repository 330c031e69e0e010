"""One self-contained HTML page for a report: the verdict first, then what was run (script
or call, when, versions, device, model, optimizer, steps), the loss curve, each finding with
its message, fix, evidence and the plot that shows it, then every other plot the report has
data for, the notes, and every recorded fact as a table.

Plots are SVGs inlined as base64 data URIs: no network, no script, no external CSS. Every
string that comes from the user's run (module names, messages, notes, meta) is escaped;
`code spans` in messages become <code> after escaping. The styles are scoped to `.nnd`, so
the same content sits inline in a notebook (`Report._repr_html_`) without restyling it.
On a narrow screen (a phone) the plots keep a legible width and scroll sideways inside
their frame; the page itself never does.
"""
from __future__ import annotations

import base64
import json
import math
from html import escape

from ..names import label_where
from . import plots
from .run_summary import run_rows, title
from .terminal import verdict

# which plots show each finding's evidence, by code or by area (the part before the dot)
PLOTS_FOR = {
    "lr.too_high": ("loss", "lr_range", "updates", "curvature"),
    "lr.too_low": ("loss", "lr_range", "updates"),
    "grad": ("gradients",),
    "grad.clipped_always": ("gradients", "loss"),
    "layers.slow_bottom": ("updates", "gradients"),
    "units": ("units", "activations"),
    "loss": ("loss",),
    "fit": ("loss",),
    "reg": ("loss",),
    "output": ("loss",),
    "loop": ("loss", "gradients"),
    "curvature": ("curvature", "plane"),
    "batch": ("noise",),
    "optimum": ("line", "plane"),
}

CSS = """
.nnd{--err:#c62828;--warn:#b26a00;--info:#1565c0;--ok:#2e7d32;font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:62rem;margin:0 auto;padding:1.2rem;color:#1d1d1d;background:#fafafa;overflow-wrap:anywhere}
.nnd h1{font-size:1.05rem;font-weight:600;color:#555;margin:.2rem 0 .8rem}
.nnd h2{font-size:1.15rem;margin:2rem 0 .6rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.nnd .verdict{padding:1rem 1.2rem;border-radius:.5rem;color:#fff;margin-bottom:1rem}
.nnd .verdict .headline{font-size:1.5rem;font-weight:700;line-height:1.25}
.nnd .verdict p{margin:.5rem 0 0;font-size:1rem}
.nnd .verdict code{background:rgba(255,255,255,.22);color:#fff}
.nnd .verdict.error{background:var(--err)}.nnd .verdict.warning{background:var(--warn)}.nnd .verdict.info,.nnd .verdict.healthy{background:var(--ok)}
.nnd .summary{display:flex;flex-wrap:wrap;gap:.4rem;margin:.6rem 0 0}
.nnd .chip{background:rgba(255,255,255,.2);border-radius:1rem;padding:.1rem .7rem;font-size:.85rem}
.nnd table.run{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.92em}
.nnd table.run th{text-align:left;font-weight:600;color:#555;padding:.1rem 1rem .1rem 0;vertical-align:top;white-space:nowrap}
.nnd table.run td{padding:.1rem 0}
.nnd .card{background:#fff;border:1px solid #e0e0e0;border-left:6px solid #999;border-radius:.4rem;padding:.6rem 1rem;margin:1rem 0}
.nnd .card.error{border-left-color:var(--err)}.nnd .card.warning{border-left-color:var(--warn)}.nnd .card.info{border-left-color:var(--info)}
.nnd .card.symptom{margin-left:2.2rem}
.nnd .sev{font-weight:700;text-transform:uppercase;font-size:.8rem;letter-spacing:.04em}
.nnd .error .sev{color:var(--err)}.nnd .warning .sev{color:var(--warn)}.nnd .info .sev{color:var(--info)}
.nnd .title{font-weight:650;font-size:1.05rem}
.nnd .fix{background:#eef7ee;border-radius:.3rem;padding:.4rem .6rem}
.nnd code{background:#f1f1f1;padding:0 .25rem;border-radius:.2rem;font-size:.92em}
.nnd .dim{color:#666;font-size:.88em}
.nnd .plot{margin:.6rem 0;overflow-x:auto}
.nnd figure{margin:0}.nnd figure img{display:block;box-sizing:border-box;width:100%;height:auto;border:1px solid #eee;border-radius:.3rem;background:#fff}
.nnd table.facts{border-collapse:collapse;font-size:.85em}
.nnd table.facts td{border-bottom:1px solid #eee;padding:.1rem .8rem .1rem 0;vertical-align:top}
.nnd table.facts td:first-child{color:#555;white-space:nowrap}
.nnd ul.notes li{color:#555}
@media (max-width:700px){
.nnd{padding:.6rem;font-size:14px}
.nnd .verdict .headline{font-size:1.2rem}
.nnd .card{padding:.5rem .7rem}.nnd .card.symptom{margin-left:.8rem}
.nnd figure img{width:auto;min-width:600px;max-width:none}
.nnd table.run th,.nnd table.run td{display:block}.nnd table.run th{padding-top:.3rem}
.nnd table.facts td:first-child{white-space:normal}
}
"""

PAGE_CSS = "body{margin:0;background:#fafafa}"
HIDDEN_META = ("analysis", "module_order", "lr_range", "module_types")  # drawn as plots or used for names


def plots_for(code: str) -> tuple[str, ...]:
    return PLOTS_FOR.get(code) or PLOTS_FOR.get(code.split(".", 1)[0], ())


def inline(text) -> str:
    """Escaped text with its `code spans` as <code> (an unmatched backtick stays literal)."""
    pieces = str(text).split("`")
    if len(pieces) % 2 == 0:
        pieces[-2:] = ["`".join(pieces[-2:])]
    return "".join(f"<code>{escape(p)}</code>" if i % 2 else escape(p) for i, p in enumerate(pieces))


def render_html(report) -> str:
    """The whole page."""
    name = title(report.meta or {})
    headline, _ = verdict(report)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(f'nndoctor: {name} — {headline}')}</title><style>{PAGE_CSS}{CSS}</style></head>"
            f"<body>{_content(report)}</body></html>")


def render_fragment(report) -> str:
    """The page's content for a notebook cell: the same markup with its scoped styles."""
    return f"<style>{CSS}</style>{_content(report)}"


def _content(report) -> str:
    drawn, failures = _draw_all(report)
    shown: set[str] = set()
    parts = [f"<h1>nndoctor report: {escape(title(report.meta or {}))}</h1>", _verdict(report), _run(report)]
    if "loss" in drawn:
        parts.append(_figure("loss", drawn["loss"]))
        shown.add("loss")
    if report.findings:
        parts.append("<h2>Findings</h2>")
    types = report.meta.get("module_types") or {}
    for finding in report.findings:
        figures = [name for name in plots_for(finding.code) if name in drawn and name not in shown]
        shown.update(figures)
        parts.append(_card(finding, [_figure(n, drawn[n]) for n in figures], types))
    rest = [n for n in plots.PLOTS if n in drawn and n not in shown]
    if rest:
        parts.append("<h2>All measurements</h2>" + "".join(_figure(n, drawn[n]) for n in rest))
    notes = list(report.notes) + failures
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{inline(n)}</li>" for n in notes) + "</ul>")
    parts.append(_details(report))
    return '<div class="nnd">' + "".join(parts) + "</div>"


def _draw_all(report) -> tuple[dict[str, bytes], list[str]]:
    """Every plot the report has data for, and a note for each one that failed to draw."""
    drawn, failures = {}, []
    for name, (_, draw) in plots.PLOTS.items():
        try:
            image = draw(report)
        except Exception as exc:  # a plot must never cost the user the whole page
            image = None
            failures.append(f"plot {name} not drawn: {type(exc).__name__}: {exc}")
        if image:
            drawn[name] = image
    return drawn, failures


def _verdict(report) -> str:
    headline, _ = verdict(report)
    root = report.root
    level = root.severity if root else "warning" if (report.meta or {}).get("ended") else "healthy"
    body = ""
    if root is not None:
        body = f"<p>{inline(root.message)}</p><p><b>Fix:</b> {inline(root.fix)}</p>"
    problems = [f for f in report.findings if f.is_problem]
    chips = "".join(f'<span class="chip">{escape(f.code)}</span>' for f in problems[1:8])
    if len(problems) > 8:
        chips += f'<span class="chip">+{len(problems) - 8} more</span>'
    if chips:
        chips = f'<div class="summary"><span class="chip">also:</span>{chips}</div>'
    return f'<div class="verdict {escape(level)}"><div class="headline">{escape(headline)}</div>{body}{chips}</div>'


def _run(report) -> str:
    rows = run_rows(report.meta or {})
    if not rows:
        return ""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{'<code>' + escape(v) + '</code>' if k == 'Run' else escape(v)}</td></tr>"
                    for k, v in rows)
    return f'<table class="run" aria-label="Run">{cells}</table>'


def _card(f, figures: list[str], types: dict) -> str:
    places = f.where if isinstance(f.where, list) else [f.where] if f.where else []
    where = ", ".join(f"<code>{escape(label_where(p, types))}</code>" for p in places)
    when = "before training" if f.step is None else f"first seen at step {f.step}"
    symptom = f' <span class="dim">— symptom of <code>{escape(f.cause)}</code></span>' if f.cause else ""
    return (f'<div class="card {escape(f.severity)}{" symptom" if f.cause else ""}" data-code="{escape(f.code)}">'
            f'<div><span class="sev">{escape(f.severity)}</span> <code>{escape(f.code)}</code> '
            f'<span class="title">{escape(f.title)}</span>{symptom}</div>'
            f"<p>{inline(f.message)}</p>"
            f'<p class="dim">{escape(when)}' + (f"; where: {where}" if where else "") + "</p>"
            f'<p class="fix"><b>Fix:</b> {inline(f.fix)}</p>'
            + "".join(figures) + _evidence(f.evidence) + "</div>")


def _evidence(evidence: dict) -> str:
    if not evidence:
        return ""
    return f'<details><summary class="dim">evidence</summary>{facts_table(evidence)}</details>'


def _figure(name: str, image: bytes) -> str:
    label = plots.PLOTS[name][0]
    kind = "svg+xml" if image.lstrip()[:5] in (b"<?xml", b"<svg ") else "png"
    data = base64.b64encode(image).decode("ascii")
    return (f'<div class="plot"><figure data-plot="{name}"><img alt="{escape(label)}" '
            f'src="data:image/{kind};base64,{data}"></figure></div>')


# ---- every recorded fact, readable -----------------------------------------------------
def _value(value, limit: int = 12) -> str:
    """A value as a person reads it: numbers to 4 significant digits, short lists inline,
    long ones cut with a count, nested dicts flattened by the caller."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_value(v, 4) if not isinstance(v, (dict, list)) else json.dumps(v, ensure_ascii=False)[:80]
                          for v in value[:limit])
        return f"[{shown}" + (f", … ({len(value) - limit} more)]" if len(value) > limit else "]")
    text = str(value)
    return text if len(text) <= 400 else text[:400] + " …"


def _rows(data: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth < 3:
            rows.extend(_rows(value, name + ".", depth + 1))
        elif isinstance(value, dict):
            rows.append((name, json.dumps(value, ensure_ascii=False)[:400] if value else "{}"))
        else:
            rows.append((name, _value(value)))
    return rows


def facts_table(data: dict) -> str:
    """A dict (evidence, meta) as a two-column table: dotted keys, readable values, escaped."""
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in _rows(data))
    return f'<table class="facts">{rows}</table>'


def _details(report) -> str:
    meta = {k: v for k, v in (report.meta or {}).items() if k not in HIDDEN_META}
    analysis = report.meta.get("analysis") or {}
    if analysis.get("seconds"):
        meta["analysis seconds"] = analysis["seconds"]
    if not meta:
        return ""
    return f'<h2>Recorded facts</h2><details><summary class="dim">everything nndoctor recorded about the run</summary>{facts_table(meta)}</details>'
