"""The terminal: the verdict first, a one-line summary of the run, then each finding
(message with its key number, where, first step, fix), symptoms indented under their root
cause. Wrapped lines keep their block's indent (rich Padding), so the nesting stays visible
at any width. Also the compact one-line form of a single finding, for findings said live
while training goes on, and the progress display of the long calls (diagnose, repair,
find_lr, the deep analyses), shown on a TTY only."""
from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..names import label_where
from .run_summary import run_line

STYLE = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}
CODE_STYLE = "bold cyan"
INDENT = 4  # columns per level of root -> symptom nesting


def verdict(report) -> tuple[str, str]:
    """(headline, style) for the report."""
    problems = [f for f in report.findings if f.is_problem]
    ended = (report.meta or {}).get("ended")
    if not problems and ended:  # a run cut short proves nothing healthy
        return f"Stopped early ({ended}): no warning or error in the steps seen", "bold yellow"
    lr_test = (report.meta or {}).get("lr_range") if "lr_range_test" in (report.meta or {}) else None
    if not report.findings and isinstance(lr_test, dict):  # find_lr(...).report(): the curve alone
        if not lr_test.get("suggestion"):
            return "LR range test: no rate made the loss fall", "bold yellow"
        return (f"LR range test: suggestion {lr_test['suggestion']:.3g} (range {lr_test['low']:.3g} to "
                f"{lr_test['high']:.3g})"), "bold green"
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


def styled(text: str, style: str = "") -> Text:
    """`text` with its `code spans` highlighted (the backticks stay, so plain logs read the same)."""
    out = Text(style=style)
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unmatched backtick is a literal one
        pieces[-2:] = ["`".join(pieces[-2:])]
    for i, piece in enumerate(pieces):
        out.append(f"`{piece}`" if i % 2 else piece, style=CODE_STYLE if i % 2 else None)
    return out


def where_text(finding, types: dict | None = None) -> str:
    """`where` as a person reads it: each module or parameter path with its module's type."""
    places = finding.where if isinstance(finding.where, list) else [finding.where] if finding.where else []
    return ", ".join(label_where(p, types or {}) for p in places)


def _block(finding, types: dict) -> Group:
    head = Text()
    head.append(f"{finding.severity:<7} ", style=STYLE[finding.severity])
    head.append(finding.code, style="bold")
    if finding.cause:
        head.append(f"  (symptom of {finding.cause})", style="dim")
    details = []
    where = where_text(finding, types)
    if where:
        details.append("where: " + where)
    details.append("before training" if finding.step is None else f"first seen at step {finding.step}")
    body = Group(styled(finding.message), Text("; ".join(details), style="dim"),
                 styled("fix: " + finding.fix, style="green"))
    return Group(head, Padding(body, (0, 0, 0, 2)))


def renderable(report):
    headline, style = verdict(report)
    parts = [Text(headline, style=style)]
    summary = run_line(report.meta or {})
    if summary:
        parts.append(Text(summary, style="dim"))
    by_code = {f.code: f for f in report.findings}
    types = (report.meta or {}).get("module_types") or {}
    for f in report.findings:
        parts.append(Text(""))
        parts.append(Padding(_block(f, types), (0, 0, 0, INDENT * _depth(f, by_code))))
    if report.notes:
        parts.append(Text(""))
        notes = Table.grid(padding=(0, 1))  # a hanging indent: wrapped note lines stay right of "note:"
        for n in report.notes:
            notes.add_row(Text("note:", style="dim"), styled(n, style="dim"))
        parts.append(notes)
    return Panel(Group(*parts), title="nndoctor", border_style=style.split()[-1])


def render_text(report, width: int = 100) -> str:
    """The summary as plain text (no colour codes), for print() and logs."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(renderable(report))
    return buffer.getvalue()


# ---- one finding on one line (said live, while training goes on) ----------------------
def _first_sentence(text: str, limit: int = 90) -> str:
    cut = text.find(". ")
    text = text[:cut + 1] if 0 < cut < limit else text
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def finding_line(finding, types: dict | None = None) -> Text:
    """One finding in one line, in the summary's look: severity, code, step, message, where,
    and the fix's first sentence. `str(finding_line(f))` is the plain form."""
    line = Text("nndoctor ", style="dim")
    line.append(f"{finding.severity} ", style=STYLE[finding.severity])
    line.append(finding.code, style="bold")
    line.append(" before training: " if finding.step is None else f" at step {finding.step}: ", style="dim")
    line.append_text(styled(finding.message))
    where = where_text(finding, types)
    if where and where not in finding.message:
        line.append(f" [{where}]", style="dim")
    line.append(" fix: ", style="green")
    line.append_text(styled(_first_sentence(finding.fix), style="green"))
    return line


def print_finding(finding, file=None, types: dict | None = None) -> None:
    """Print `finding_line(finding)` to `file` (stderr): coloured on a terminal, plain elsewhere."""
    file = file if file is not None else sys.stderr
    tty = _is_tty(file)
    Console(file=file, force_terminal=tty, color_system="auto" if tty else None, soft_wrap=True,
            width=10_000 if not tty else None).print(finding_line(finding, types))


# ---- progress on a TTY ------------------------------------------------------------------
_live = None  # the one rich Progress on screen; nested calls add their task to it


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(description: str, total: int | None = None, stream=None):
    """A progress bar for a long call, on `stream` (stderr) only when it is a terminal and
    NNDOCTOR_PROGRESS is not "0"; yields `advance(n=1)`. Nested calls (repair runs diagnose,
    which runs the deep analyses) share one display: each adds its own line to it."""
    global _live
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("NNDOCTOR_PROGRESS", "1") == "0" or (_live is None and not _is_tty(stream)):
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    owner = _live is None
    if owner:
        _live = Progress(TextColumn("[dim]nndoctor[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), console=Console(file=stream, force_terminal=True), transient=True)
        _live.start()
    display = _live
    task = display.add_task(description, total=total)
    try:
        yield lambda n=1: display.advance(task, n)
    finally:
        display.remove_task(task)
        if owner:
            display.stop()
            _live = None
