"""`nndoctor demo`: the zoo's demo scenarios through `diagnose`, expected vs found."""
from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


@contextmanager
def one_thread():
    """The demo's networks are tiny: one thread runs them fastest, and leaves a shared machine alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _no_match(what: str, only: str | None) -> int:
    print(f"nndoctor: error: no {what} matches {only!r}", file=sys.stderr)
    return 1


def _folder(out: Path) -> bool:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"nndoctor: error: cannot write the reports to {out}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _file_name(scenario) -> str:
    return scenario.name.replace("/", "_").replace("=", "-")


def run_demo(out: Path, only: str | None = None, console: Console | None = None) -> int:
    from . import zoo
    console = console or Console()
    scenarios = [s for s in zoo.select("demo") if not only or only in s.name]
    if not scenarios:
        return _no_match("demo scenario", only)
    if not _folder(out):
        return 1
    with one_thread():
        return _run_demo(scenarios, out, console)


def _run_demo(scenarios, out: Path, console: Console) -> int:
    from . import zoo
    table = Table(title="nndoctor demo: expected vs found")
    for column in ("network", "expected", "found (root first)", "as expected", "s"):
        table.add_column(column)
    rows, correct = [], 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("diagnosing", total=len(scenarios))
        for scenario in scenarios:
            progress.update(task, description=scenario.name)
            started = time.perf_counter()
            with warnings.catch_warnings():  # the broken setups' own warnings (a broadcasting loss) are findings here
                warnings.simplefilter("ignore")
                report = zoo.run(scenario)
            seconds = time.perf_counter() - started
            found = [f.code for f in report.findings if f.is_problem]
            correct += named_correctly(scenario.expected, found)
            path = out / (_file_name(scenario) + ".json")
            report.save_json(path)
            report.save_html(path.with_suffix(".html"))
            rows.append((scenario, report, path))
            table.add_row(scenario.name, ", ".join(scenario.expected) or "healthy",
                          ", ".join(found) or "healthy", AGREEMENT_STYLE[agreement(scenario.expected, found)],
                          f"{seconds:.1f}")
            progress.advance(task)
    console.print(table)
    sick = next((r for r in rows if r[0].expected), None)
    if sick:
        console.print(f"\nThe report for [bold]{sick[0].name}[/]:")
        console.print(sick[1])
        console.print(f"Open its HTML report (plots, offline): [bold]{sick[2].with_suffix('.html').resolve()}[/]", soft_wrap=True)
    console.print(f"\n{correct}/{len(rows)} named correctly (the root cause first; healthy: nothing found). "
                  f"Reports (JSON and HTML) written to {out.resolve()}/")
    return 0


def named_correctly(expected: tuple[str, ...], found: list[str]) -> bool:
    """Healthy: nothing found. Sick: the root cause found first."""
    if not expected:
        return not found
    return bool(found) and found[0] == expected[0]


AGREEMENT_STYLE = {"yes": "[green]yes[/]", "partly": "[yellow]partly[/]", "no": "[red]no[/]"}


def agreement(expected: tuple[str, ...], found: list[str]) -> str:
    """"yes": as expected (healthy: nothing found; sick: the root cause first and every expected
    code found); "partly": some of the expected codes came, not all or not the root first; "no"."""
    if not expected:
        return "no" if found else "yes"
    came = [code for code in expected if code in found]
    if named_correctly(expected, found) and len(came) == len(expected):
        return "yes"
    return "partly" if came else "no"


def run_repair_demo(out: Path, only: str | None = None, console: Console | None = None) -> int:
    """`nndoctor demo --repair`: repair each sick demo network and show before -> after; the
    reports before and after each repair are written to `out`."""
    from . import zoo
    console = console or Console()
    scenarios = [s for s in zoo.select("demo") if s.expected and (not only or only in s.name)]
    if not scenarios:
        return _no_match("sick demo scenario", only)
    if not _folder(out):
        return 1
    with one_thread():
        return _run_repair_demo(scenarios, out, console)


def _run_repair_demo(scenarios, out: Path, console: Console) -> int:
    from . import zoo
    from .repair import STRATEGIES, repair
    from .repair.strategies import code_fix
    table = Table(title="nndoctor demo --repair: each fix proven by a re-run (same init, steps and seed)",
                  show_lines=True)
    for column in ("network", "root finding", "gone?", "val loss before -> after", "val acc before -> after",
                   "changes (not repaired)", "s"):
        table.add_column(column, overflow="fold")
    fixable = repaired = 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("repairing", total=len(scenarios))
        for scenario in scenarios:
            progress.update(task, description=scenario.name)
            started = time.perf_counter()
            setup = scenario.build(0)
            if setup.loop is not None:  # the fault is in the user's own loop: only a code fix can help
                report = zoo.run(scenario)
                _save(report, out / _file_name(scenario))
                root = report.root
                table.add_row(scenario.name, root.code if root else "-", "[yellow]code fix[/]", "-", "-",
                              code_fix(root) if root else "-", f"{time.perf_counter() - started:.1f}")
                progress.advance(task)
                continue
            with warnings.catch_warnings():  # the broken setups' own warnings (a broadcasting loss) are findings here
                warnings.simplefilter("ignore")
                fix = repair(setup.model, setup.train_data, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                             val_data=setup.val_data, steps=setup.steps, batch_size=setup.batch_size,
                             restarts_runs=5 if "restarts" in scenario.tags else 0)
            _save(fix.before, out / (_file_name(scenario) + ".before"))
            _save(fix.after, out / (_file_name(scenario) + ".after"))
            root = fix.before.root
            gone = root is not None and not fix.after.has(root.code)
            can = any(code in STRATEGIES for code in scenario.expected)
            fixable += can
            repaired += can and fix.improved and gone  # proven better, and the root finding itself is gone
            before, after = fix.metrics["before"], fix.metrics["after"]
            changes = [c.code for c in fix.changes] + [f"({c.code}: {c.status})" for c in fix.not_repaired]
            table.add_row(scenario.name, root.code if root else "healthy",
                          "[green]yes[/]" if gone else "[red]no[/]",
                          f"{_num(before.get('val_loss'))} -> {_num(after.get('val_loss'))}",
                          f"{_num(before.get('val_accuracy'))} -> {_num(after.get('val_accuracy'))}",
                          "\n".join(changes) or "-", f"{time.perf_counter() - started:.1f}")
            progress.advance(task)
    console.print(table)
    console.print(f"\n{repaired}/{fixable} fixable sick networks repaired and proven by a re-run, their root finding "
                  "gone (fixable: a strategy exists for one of its expected findings; the rest need a change in the "
                  "user's code, shown as the code to write).")
    console.print(f"Reports before and after each repair (JSON and HTML) written to {out.resolve()}/")
    return 0


def _save(report, stem: Path) -> None:
    report.save_json(stem.with_name(stem.name + ".json"))
    report.save_html(stem.with_name(stem.name + ".html"))


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"
