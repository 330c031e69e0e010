"""`nndoctor demo`: the zoo's demo scenarios through `diagnose`, expected vs found."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table


def run_demo(out: Path, only: str | None = None, console: Console | None = None) -> int:
    from . import zoo
    console = console or Console()
    scenarios = [s for s in zoo.select("demo") if not only or only in s.name]
    if not scenarios:
        console.print(f"nndoctor: no demo scenario matches {only!r}")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title="nndoctor demo: expected vs found")
    for column in ("network", "expected", "found (root first)", "ok", "s"):
        table.add_column(column)
    rows, correct = [], 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("diagnosing", total=len(scenarios))
        for scenario in scenarios:
            progress.update(task, description=scenario.name)
            started = time.perf_counter()
            report = zoo.run(scenario)
            seconds = time.perf_counter() - started
            found = [f.code for f in report.findings if f.is_problem]
            ok = named_correctly(scenario.expected, found)
            correct += ok
            path = out / (scenario.name.replace("/", "_").replace("=", "-") + ".json")
            report.save_json(path)
            report.save_html(path.with_suffix(".html"))
            rows.append((scenario, report, path))
            table.add_row(scenario.name, ", ".join(scenario.expected) or "healthy",
                          ", ".join(found) or "healthy", "[green]yes[/]" if ok else "[red]no[/]", f"{seconds:.1f}")
            progress.advance(task)
    console.print(table)
    sick = next((r for r in rows if r[0].expected), None)
    if sick:
        console.print(f"\nThe report for [bold]{sick[0].name}[/]:")
        console.print(sick[1])
        console.print(f"Open its HTML report (plots, offline): [bold]{sick[2].with_suffix('.html').resolve()}[/]", soft_wrap=True)
    console.print(f"\n{correct}/{len(rows)} named correctly. Reports (JSON and HTML) written to {out.resolve()}/")
    return 0


def named_correctly(expected: tuple[str, ...], found: list[str]) -> bool:
    """Healthy: nothing found. Sick: the root cause found first."""
    if not expected:
        return not found
    return bool(found) and found[0] == expected[0]
