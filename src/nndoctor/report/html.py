"""One self-contained HTML page for a report: the verdict first, then each finding with its
message, fix, evidence and the plot that shows it, then every other plot the report has data
for. Plots are PNGs inlined as base64 data URIs; no network, no script, no external CSS.
Every string that comes from the user's run (module names, messages, notes, meta) is escaped.
"""
from __future__ import annotations

import base64
import json
from html import escape

from . import plots
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
:root{--err:#c62828;--warn:#b26a00;--info:#1565c0;--ok:#2e7d32}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:62rem;margin:0 auto;padding:1.2rem;color:#1d1d1d;background:#fafafa}
h1{font-size:1.05rem;font-weight:600;color:#555;margin:.2rem 0 .8rem}
h2{font-size:1.15rem;margin:2rem 0 .6rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.verdict{padding:1rem 1.2rem;border-radius:.5rem;color:#fff;margin-bottom:1rem}
.verdict .headline{font-size:1.5rem;font-weight:700;line-height:1.25}
.verdict p{margin:.5rem 0 0;font-size:1rem}
.verdict.error{background:var(--err)}.verdict.warning{background:var(--warn)}.verdict.info,.verdict.healthy{background:var(--ok)}
.summary{display:flex;flex-wrap:wrap;gap:.4rem;margin:.6rem 0 0}
.chip{background:rgba(255,255,255,.2);border-radius:1rem;padding:.1rem .7rem;font-size:.85rem}
.card{background:#fff;border:1px solid #e0e0e0;border-left:6px solid #999;border-radius:.4rem;padding:.6rem 1rem;margin:1rem 0}
.card.error{border-left-color:var(--err)}.card.warning{border-left-color:var(--warn)}.card.info{border-left-color:var(--info)}
.card.symptom{margin-left:2.2rem}
.sev{font-weight:700;text-transform:uppercase;font-size:.8rem;letter-spacing:.04em}
.error .sev{color:var(--err)}.warning .sev{color:var(--warn)}.info .sev{color:var(--info)}
.title{font-weight:650;font-size:1.05rem}
.fix{background:#eef7ee;border-radius:.3rem;padding:.4rem .6rem}
code{background:#f1f1f1;padding:0 .25rem;border-radius:.2rem;font-size:.92em}
.dim{color:#666;font-size:.88em}
figure{margin:.6rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee;border-radius:.3rem}
figcaption{font-size:.85em;color:#666}
table.evidence{border-collapse:collapse;font-size:.85em}table.evidence td{border-bottom:1px solid #eee;padding:.1rem .6rem .1rem 0;vertical-align:top}
pre{white-space:pre-wrap;word-break:break-word;margin:0}
ul.notes li{color:#555}
"""


def plots_for(code: str) -> tuple[str, ...]:
    return PLOTS_FOR.get(code) or PLOTS_FOR.get(code.split(".", 1)[0], ())


def render_html(report) -> str:
    drawn, failures = _draw_all(report)
    shown: set[str] = set()
    parts = [_head(report), _verdict(report)]
    if "loss" in drawn:
        parts.append(_figure("loss", drawn["loss"]))
        shown.add("loss")
    if report.findings:
        parts.append("<h2>Findings</h2>")
    for finding in report.findings:
        figures = [name for name in plots_for(finding.code) if name in drawn and name not in shown]
        shown.update(figures)
        parts.append(_card(finding, [_figure(n, drawn[n]) for n in figures]))
    rest = [n for n in plots.PLOTS if n in drawn and n not in shown]
    if rest:
        parts.append("<h2>All measurements</h2>" + "".join(_figure(n, drawn[n]) for n in rest))
    notes = list(report.notes) + failures
    if notes:
        parts.append("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{escape(str(n))}</li>" for n in notes)
                     + "</ul>")
    parts.append(_meta(report))
    return "".join(parts) + "</body></html>"


def _draw_all(report) -> tuple[dict[str, bytes], list[str]]:
    """Every plot the report has data for, and a note for each one that failed to draw."""
    drawn, failures = {}, []
    for name, (_, draw) in plots.PLOTS.items():
        try:
            png = draw(report)
        except Exception as exc:  # a plot must never cost the user the whole page
            png = None
            failures.append(f"plot {name} not drawn: {type(exc).__name__}: {exc}")
        if png:
            drawn[name] = png
    return drawn, failures


def _head(report) -> str:
    model = report.meta.get("model")
    title = "nndoctor report" + (f": {model}" if model else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(str(title))}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(str(title))}</h1>")


def _verdict(report) -> str:
    headline, _ = verdict(report)
    root = report.root
    level = root.severity if root else "healthy"
    body = ""
    if root is not None:
        body = f"<p>{escape(root.message)}</p><p><b>Fix:</b> {escape(root.fix)}</p>"
    problems = [f for f in report.findings if f.is_problem]
    chips = "".join(f'<span class="chip">{escape(f.code)}</span>' for f in problems[1:8])
    if len(problems) > 8:
        chips += f'<span class="chip">+{len(problems) - 8} more</span>'
    if chips:
        chips = f'<div class="summary"><span class="chip">also:</span>{chips}</div>'
    return f'<div class="verdict {escape(level)}"><div class="headline">{escape(headline)}</div>{body}{chips}</div>'


def _card(f, figures: list[str]) -> str:
    where = ", ".join(f.where) if isinstance(f.where, list) else (f.where or "")
    when = "before training" if f.step is None else f"first seen at step {f.step}"
    symptom = f' <span class="dim">— symptom of <code>{escape(f.cause)}</code></span>' if f.cause else ""
    return (f'<div class="card {escape(f.severity)}{" symptom" if f.cause else ""}">'
            f'<div><span class="sev">{escape(f.severity)}</span> <code>{escape(f.code)}</code> '
            f'<span class="title">{escape(f.title)}</span>{symptom}</div>'
            f"<p>{escape(f.message)}</p>"
            f'<p class="dim">{escape(when)}' + (f"; where: <code>{escape(where)}</code>" if where else "") + "</p>"
            f'<p class="fix"><b>Fix:</b> {escape(f.fix)}</p>'
            + "".join(figures) + _evidence(f.evidence) + "</div>")


def _evidence(evidence: dict) -> str:
    if not evidence:
        return ""
    rows = "".join(f"<tr><td><code>{escape(str(k))}</code></td><td><pre>{escape(_short_json(v))}</pre></td></tr>"
                   for k, v in evidence.items())
    return f'<details><summary class="dim">evidence</summary><table class="evidence">{rows}</table></details>'


def _short_json(value, limit: int = 600) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + " …"


def _figure(name: str, png: bytes) -> str:
    title = plots.PLOTS[name][0]
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure data-plot="{name}"><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
            f"</figure>")


def _meta(report) -> str:
    meta = {k: v for k, v in report.meta.items() if k not in ("analysis", "module_order", "lr_range")}
    analysis = report.meta.get("analysis") or {}
    if analysis.get("seconds"):
        meta["analysis seconds"] = analysis["seconds"]
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td><pre>{escape(_short_json(v, 300))}</pre></td></tr>"
                   for k, v in meta.items())
    return f'<h2>Run</h2><table class="evidence">{rows}</table>' if rows else ""
