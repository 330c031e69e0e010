"""Findings said while training goes on: each warning or error once, when first confirmed.

One compact line on stderr (code, message, step, fix) and to every listener an integration
adds (Lightning's and the HF Trainer's loggers). With `fail_on` ("error" or "warning") the
first finding of that severity dooms the run: the watcher raises `DoomedRun` from the next
optimizer step, the report stays available (and `nndoctor watch` still writes it).
"""
from __future__ import annotations

import sys

from .findings import Finding

FAIL_LEVELS = {"error": ("error",), "warning": ("warning", "error")}


class DoomedRun(Exception):
    """Raised by a watcher with `fail_on` at the first finding of that severity."""

    def __init__(self, finding: Finding):
        step = "before training" if finding.step is None else f"at step {finding.step}"
        super().__init__(f"nndoctor stopped the run {step}: {finding.code}: {finding.message} Fix: {finding.fix}")
        self.finding = finding


def check_fail_on(fail_on: str | None) -> str | None:
    if fail_on is not None and fail_on not in FAIL_LEVELS:
        raise ValueError(f"fail_on must be None, 'error' or 'warning', not {fail_on!r}")
    return fail_on


def fails(finding: Finding, fail_on: str | None) -> bool:
    return fail_on is not None and finding.severity in FAIL_LEVELS[fail_on]


class Live:
    """Says each problem finding once. Shared by the watchers of one run (a script's provisional
    watcher hands it on), so nothing is said twice."""

    def __init__(self, echo: bool = True, fail_on: str | None = None, stream=None):
        self.echo = echo
        self.fail_on = check_fail_on(fail_on)
        self.stream = stream
        self.said: dict[str, Finding] = {}
        self.listeners: list = []          # fn(finding) -> None, e.g. a framework logger
        self.doomed: Finding | None = None
        self._raised = False

    def say(self, findings: list[Finding]) -> None:
        for f in findings:
            if not f.is_problem or f.code in self.said:
                continue
            self.said[f.code] = f
            if self.echo:
                self._print(f)
            for listener in self.listeners:
                try:
                    listener(f)
                except Exception as exc:  # a logger's failure must not stop the training
                    from .watcher import warn_safely
                    warn_safely(f"nndoctor could not log {f.code} live: {type(exc).__name__}: {exc}")
            if self.doomed is None and fails(f, self.fail_on):
                self.doomed = f

    def raise_if_doomed(self) -> None:
        """Called from the optimizer step (outside the doctor's guard): stop the run once."""
        if self.doomed is not None and not self._raised:
            self._raised = True
            raise DoomedRun(self.doomed)

    def _print(self, f: Finding) -> None:
        from rich.console import Console
        from rich.text import Text
        line = Text("nndoctor ", style="bold")
        line.append("before training" if f.step is None else f"step {f.step}", style="dim")
        line.append(f"  {f.severity} ", style="bold red" if f.severity == "error" else "bold yellow")
        line.append(f.code, style="bold")
        if f.cause:
            line.append(f" (symptom of {f.cause})", style="dim")
        line.append(f": {f.message} ")
        line.append(f"fix: {f.fix}", style="green")
        stream = self.stream if self.stream is not None else sys.stderr
        Console(file=stream, soft_wrap=True, highlight=False).print(line)


def line_text(f: Finding) -> str:
    """The live line as plain text, for loggers that take text."""
    where = "before training" if f.step is None else f"step {f.step}"
    return f"{where} {f.severity} {f.code}: {f.message} fix: {f.fix}"
