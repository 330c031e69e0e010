"""The `nndoctor` command line. Bad input gives one clear line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE, EXIT_INPUT = 2, 1


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see `nndoctor --help`)")


def build_parser() -> Parser:
    parser = Parser(prog="nndoctor",
                    description="A doctor for PyTorch training: names each pitfall with its evidence and a fix.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    demo = sub.add_parser("demo", help="diagnose bundled sick and healthy networks (offline, ~1 min)",
                          description="Runs the bundled sick and healthy networks through nndoctor.diagnose, "
                                      "prints expected vs found, and writes the reports.")
    demo.add_argument("--out", default="nndoctor-demo", help="folder for the reports (default: %(default)s)")
    demo.add_argument("--only", metavar="TEXT", help="run only the scenarios whose name contains TEXT")
    demo.add_argument("--repair", action="store_true",
                      help="repair each sick network and show before -> after (each fix proven by a re-run)")
    watch = sub.add_parser("watch", help="run a training script unchanged and diagnose it",
                           description="Runs SCRIPT.py as __main__ with its own arguments (like `python SCRIPT.py "
                                       "ARGS`), watches its training through global hooks, then prints the report "
                                       "and writes DIR/report.json and DIR/report.html. Keeps the script's exit status.")
    watch.add_argument("--out", default="nndoctor-report", metavar="DIR",
                       help="folder for report.json and report.html (default: %(default)s)")
    watch.add_argument("script", metavar="SCRIPT.py", help="the training script")
    watch.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    show = sub.add_parser("show", help="print a saved report (REPORT.json); --html writes the page",
                          description="Prints a report saved as JSON; with --html, writes the HTML page too.")
    show.add_argument("report", help="path to a report .json file")
    show.add_argument("--html", metavar="PATH", help="also write the self-contained HTML page to PATH")
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
        if args.command == "watch":
            return watch(args.script, args.args, args.out)
        from .demo import run_demo, run_repair_demo
        if args.repair:
            return run_repair_demo(only=args.only)
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


def watch(script: str, script_args: list[str], out: str) -> int:
    path = Path(script)
    if not path.is_file():
        print(f"nndoctor: error: {'not a file' if path.exists() else 'no such file'}: {script}", file=sys.stderr)
        return EXIT_INPUT
    from .integrations.script import run
    return run(script, script_args, out=out)


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


if __name__ == "__main__":
    sys.exit(main())
