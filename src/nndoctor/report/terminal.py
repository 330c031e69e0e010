"""The terminal summary: the verdict first, then each finding (message with its key number,
where, first step, fix), symptoms indented under their root cause."""
from __future__ import annotations

import io

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

STYLE = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}


def verdict(report) -> tuple[str, str]:
    """(headline, style) for the report."""
    problems = [f for f in report.findings if f.is_problem]
    if not problems:
        advice = sum(1 for f in report.findings if f.severity == "info")
        return ("Healthy: no warning or error" + (f" ({advice} piece(s) of advice)" if advice else "")), "bold green"
    root = problems[0]
    others = len(problems) - 1
    tail = f", and {others} more finding(s)" if others else ""
    return f"{root.severity.upper()}: {root.title} ({root.code}){tail}", STYLE[root.severity]


def _depth(finding, by_code) -> int:
    depth, seen = 0, set()
    while finding.cause and finding.cause in by_code and finding.cause not in seen:
        seen.add(finding.cause)
        finding = by_code[finding.cause]
        depth += 1
    return depth


def renderable(report):
    headline, style = verdict(report)
    parts = [Text(headline, style=style)]
    by_code = {f.code: f for f in report.findings}
    for f in report.findings:
        pad = "    " * _depth(f, by_code)
        line = Text(pad)
        line.append(f"{f.severity:<7} ", style=STYLE[f.severity])
        line.append(f.code, style="bold")
        if f.cause:
            line.append(f"  (symptom of {f.cause})", style="dim")
        parts.append(Text(""))
        parts.append(line)
        parts.append(Text(f"{pad}  {f.message}"))
        details = []
        if f.where:
            details.append("where: " + (", ".join(f.where) if isinstance(f.where, list) else str(f.where)))
        details.append("before training" if f.step is None else f"first seen at step {f.step}")
        parts.append(Text(f"{pad}  " + "; ".join(details), style="dim"))
        parts.append(Text(f"{pad}  fix: {f.fix}", style="green"))
    if report.notes:
        parts.append(Text(""))
        parts.extend(Text(f"note: {n}", style="dim") for n in report.notes)
    meta = report.meta or {}
    subtitle = ", ".join(f"{k} {meta[k]}" for k in ("model", "steps", "seconds") if k in meta)
    return Panel(Group(*parts), title="nndoctor", subtitle=subtitle or None, border_style=style.split()[-1])


def render_text(report, width: int = 100) -> str:
    """The summary as plain text (no colour codes), for print() and logs."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(renderable(report))
    return buffer.getvalue()
