"""One self-contained HTML page for a report: no network, no external JS or CSS. Every
string that comes from the user's run (module names, messages, notes) is escaped."""
from __future__ import annotations

from html import escape

from .terminal import verdict

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}.verdict{padding:.8rem 1rem;border-radius:.4rem;font-weight:600}
.healthy{background:#e6f4ea}.warning{background:#fff4d6}.error{background:#fde2e1}.info{background:#e3f1fb}
.finding{border-left:4px solid #999;padding:.3rem 1rem;margin:1rem 0}.finding.error{border-color:#c62828}
.finding.warning{border-color:#e0a800}.finding.info{border-color:#1e88e5}.symptom{margin-left:2rem}
code{background:#f3f3f3;padding:0 .2rem}.dim{color:#666;font-size:.9em}pre{white-space:pre-wrap}"""


def render_html(report) -> str:
    headline, _ = verdict(report)
    root = report.root
    level = root.severity if root else "healthy"
    items = []
    for f in report.findings:
        where = ", ".join(f.where) if isinstance(f.where, list) else (f.where or "")
        when = "before training" if f.step is None else f"first seen at step {f.step}"
        items.append(
            f'<div class="finding {escape(f.severity)}{" symptom" if f.cause else ""}">'
            f"<b>{escape(f.severity)}</b> <code>{escape(f.code)}</code> {escape(f.title)}"
            + (f' <span class="dim">(symptom of <code>{escape(f.cause)}</code>)</span>' if f.cause else "")
            + f"<p>{escape(f.message)}</p>"
            f'<p class="dim">{escape(when)}' + (f"; where: <code>{escape(where)}</code>" if where else "") + "</p>"
            f"<p><b>Fix:</b> {escape(f.fix)}</p>"
            f'<details><summary class="dim">evidence</summary><pre>{escape(str(f.evidence))}</pre></details></div>')
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>nndoctor report</title>'
            f"<style>{CSS}</style></head><body><h1>nndoctor report</h1>"
            f'<div class="verdict {escape(level)}">{escape(headline)}</div>{"".join(items)}'
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "") + "</body></html>")
