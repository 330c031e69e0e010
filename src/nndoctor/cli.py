"""The `nndoctor` command line. Bad input gives one clear line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

EXIT_USAGE, EXIT_INPUT = 2, 1
RUNS = Path("nndoctor-runs")      # `nndoctor watch` without --out: one fresh folder per run in here
LATEST = Path("nndoctor-report")  # ... and a copy of the latest run's report here


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=Formatter, **kwargs)

    def error(self, message):  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see `nndoctor --help`)")


class Formatter(argparse.HelpFormatter):
    """Shows the script's own arguments as optional (`[ARGS ...]`), not as argparse's bare `...`."""
    def _format_args(self, action, default_metavar):
        if action.nargs == argparse.REMAINDER:
            return f"[{self._metavar_formatter(action, default_metavar)(1)[0]} ...]"
        return super()._format_args(action, default_metavar)


def build_parser() -> Parser:
    from . import __version__
    parser = Parser(prog="nndoctor",
                    description="A doctor for PyTorch training: names each pitfall with its evidence and a fix.")
    parser.add_argument("--version", action="version", version=f"nndoctor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    demo = sub.add_parser("demo", help="diagnose bundled sick and healthy networks (offline, ~1 min)",
                          description="Runs the bundled sick and healthy networks through nndoctor.diagnose, "
                                      "prints expected vs found, and writes the reports.")
    demo.add_argument("--out", default="nndoctor-demo", metavar="DIR",
                      help="folder for the reports (default: %(default)s)")
    demo.add_argument("--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT")
    demo.add_argument("--repair", action="store_true",
                      help="repair each sick network and show before -> after (each fix proven by a re-run)")
    watch = sub.add_parser("watch", help="run a training script unchanged and diagnose it",
                           description="Runs SCRIPT.py as __main__ with its own arguments (like `python SCRIPT.py "
                                       "ARGS`), watches its training through global hooks, then prints the report "
                                       "and writes DIR/report.json and DIR/report.html. Keeps the script's exit status.")
    watch.add_argument("--out", metavar="DIR",
                       help=f"folder for report.json and report.html (default: a fresh {RUNS}/SCRIPT-TIME/ "
                            f"for every run, never overwritten, and a copy of the latest in {LATEST}/)")
    watch.add_argument("--fail-on", choices=("error", "warning"), default=None, metavar="LEVEL",
                       help="stop the script at the first finding of this severity (error or warning) and exit "
                            "non-zero (3) when such findings exist: a CI gate")
    watch.add_argument("script", metavar="SCRIPT.py", help="the training script")
    watch.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    show = sub.add_parser("show", help="print a saved report (REPORT.json); --html writes the page",
                          description="Prints a report saved as JSON; with --html, writes the HTML page too.")
    show.add_argument("report", help="path to a report .json file")
    show.add_argument("--html", metavar="PATH", help="also write the self-contained HTML page to PATH")
    comparing = sub.add_parser("compare", help="what differs between two saved runs (A.json B.json)",
                               description="For 'it trained last week, why not now': the findings gained and lost "
                                           "from A to B, the first step where their losses part beyond noise, and "
                                           "the setup differences recorded in both reports.")
    comparing.add_argument("a", metavar="A.json", help="the earlier (or good) run's report")
    comparing.add_argument("b", metavar="B.json", help="the later (or bad) run's report")
    comparing.add_argument("--html", metavar="PATH", help="also write the comparison as an HTML page to PATH")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "show":
            return show(args.report, args.html)
        if args.command == "compare":
            return compare(args.a, args.b, args.html)
        if args.command == "watch":
            return watch(args.script, args.args, args.out, args.fail_on)
        from .demo import run_demo, run_repair_demo
        if args.repair:
            return run_repair_demo(out=Path(args.out), only=args.only)
        return run_demo(out=Path(args.out), only=args.only)
    except UsageError as exc:
        print(f"nndoctor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nndoctor: interrupted", file=sys.stderr)
        return 130


def load_report(path: str):
    from .findings import Report
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file: {path}")
    if not p.is_file():
        raise UsageError(f"not a file: {path}")
    try:
        return Report.from_json(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a JSON report ({type(exc).__name__})") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path} is not an nndoctor report: {exc}") from None


def watch(script: str, script_args: list[str], out: str | None, fail_on: str | None = None) -> int:
    path = Path(script)
    if not path.is_file():
        print(f"nndoctor: error: {'not a file' if path.exists() else 'no such file'}: {script}", file=sys.stderr)
        return EXIT_INPUT
    reporting = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes the report for all ranks
    if out is not None:
        folder = Path(out).resolve()  # resolved now: the script may change the working directory
    else:
        folder = fresh_folder(RUNS.resolve(), path.stem) if reporting else RUNS.resolve()
    problem = unwritable(folder)
    if problem:  # said before the script runs, not after an hour of training
        print(f"nndoctor: error: cannot write the report to {out or folder}: {problem}", file=sys.stderr)
        return EXIT_INPUT
    from .integrations.script import run
    status = run(script, script_args, out=folder, fail_on=fail_on)
    if out is None and reporting and (folder / "report.json").is_file():
        latest = LATEST.resolve()
        try:
            latest.mkdir(exist_ok=True)
            for name in ("report.json", "report.html"):
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, latest / name)
        except OSError as exc:
            print(f"nndoctor: error: cannot copy the report to {latest}: {exc.strerror or exc}", file=sys.stderr)
        else:
            print(f"The latest run's report is also in {latest}/")
    return status


def fresh_folder(parent: Path, name: str) -> Path:
    """A new folder `parent/name-YYYYmmdd-HHMMSS[-n]`: a run never overwrites an earlier one.
    When it cannot be created, the path is returned anyway and `unwritable` says why."""
    stamp = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while True:
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:  # a run started in the same second
            n += 1
        except OSError:
            return folder


def unwritable(folder: Path) -> str | None:
    """Why a report cannot be written to `folder` (created if missing), or None if it can."""
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def show(path: str, html: str | None) -> int:
    try:
        report = load_report(path)
    except UsageError as exc:
        print(f"nndoctor: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    from rich.console import Console
    Console().print(report)
    if html:
        try:
            report.save_html(html)
        except OSError as exc:
            print(f"nndoctor: error: cannot write {html}: {exc.strerror}", file=sys.stderr)
            return EXIT_INPUT
        print(f"HTML report written to {html}")
    return 0


def compare(path_a: str, path_b: str, html: str | None) -> int:
    from .compare import compare as compare_reports, render_html, renderable
    try:
        a, b = load_report(path_a), load_report(path_b)
    except UsageError as exc:
        print(f"nndoctor: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    result = compare_reports(a, b)
    name_a, name_b = Path(path_a).name, Path(path_b).name
    from rich.console import Console
    Console().print(renderable(result, name_a, name_b))
    if html:
        try:
            Path(html).write_text(render_html(result, name_a, name_b), encoding="utf-8")
        except OSError as exc:
            print(f"nndoctor: error: cannot write {html}: {exc.strerror}", file=sys.stderr)
            return EXIT_INPUT
        print(f"HTML comparison written to {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
