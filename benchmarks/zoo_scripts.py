"""The fault zoo as plain training scripts under `nndoctor watch`, next to diagnose().

Each scenario is written out as the script a user would write: build the setup, then a
plain loop (`for x, y in loader: loss = loss_fn(model(x), y); ...; opt.step()`), or the
scenario's own loop for the loop faults, with nothing of nndoctor's watching in it. The
script runs through `nndoctor.integrations.script.run` (what `nndoctor watch SCRIPT.py`
runs); the same scenario goes through `zoo.run` (diagnose() or the API watcher). Both are
scored alike (`zoo.scoring`):

    zoo-scripts: detected X/N primary Y/N false_alarms Z/H   (watch)
    zoo:         detected X/N primary Y/N false_alarms Z/H   (diagnose)

    python benchmarks/zoo_scripts.py [--tag quick] [--only TEXT] [--json rows.json]

What the script watcher cannot see by nature: the validation data and loss (a script does not
hand them over; fit.overfitting, data.split_mismatch and the validation branch of
loss.fluctuation and lr.too_low read them). Where the two differ, the scenario also goes
through diagnose() (or the API watcher) without its validation data; when that agrees with
the script's verdict, the difference is the validation data's and the scenario is left out
of the third line, the like-for-like comparison:

    like for like (N' scenarios): zoo-scripts detected ... zoo detected ...
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import textwrap
import time
from pathlib import Path

import torch

import nndoctor
from nndoctor import zoo
from nndoctor.findings import Report
from nndoctor.integrations.script import run
from nndoctor.zoo.scoring import score

SCRIPT = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from nndoctor import zoo
from nndoctor.zoo.loops import Recorder

torch.manual_seed({seed})
setup = zoo.get({name!r}).build({seed})
model, optimizer, loss_fn = setup.model, setup.optimizer, setup.loss_fn
if setup.loop is not None:          # a loop fault: the scenario's own loop, logging to a plain list
    setup.loop(setup, Recorder())
else:
    data = setup.train_data
    if not isinstance(data, DataLoader):
        data = data if isinstance(data, torch.utils.data.Dataset) else TensorDataset(*data)
        data = DataLoader(data, batch_size=setup.batch_size or 64, shuffle=True,
                          generator=torch.Generator().manual_seed({seed}))
    device = next(model.parameters()).device
    step = 0
    while step < setup.steps:
        for x, y in data:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= setup.steps:
                break
"""


def watched(name: str, seed: int, folder: Path) -> Report:
    path = folder / (name.replace("/", "_").replace("=", "-") + ".py")
    path.write_text(textwrap.dedent(SCRIPT.format(name=name, seed=seed)))
    out = folder / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(str(path), [], out=out)
    return Report.from_json((out / "report.json").read_text())


class TrainLogs:
    """The doctor as an own loop sees it, minus the validation loss (what a script keeps to itself)."""

    def __init__(self, doctor):
        self.doctor = doctor

    def log(self, **values) -> None:
        self.doctor.log(**{k: v for k, v in values.items() if k != "val_loss"})


def without_validation(scenario, seed: int) -> Report:
    """zoo.run on the scenario with its validation data withheld."""
    setup = scenario.build(seed)
    if setup.loop is None:
        report = nndoctor.diagnose(setup.model, setup.train_data, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                                   steps=setup.steps, batch_size=setup.batch_size, seed=seed)
        return zoo.with_restarts(report, scenario.build(seed), seed) if "restarts" in scenario.tags else report
    with nndoctor.watch(setup.model, setup.optimizer) as doctor:
        setup.loop(setup, TrainLogs(doctor))
    return doctor.report()


def summary(label: str, rows: list[dict], key: str) -> str:
    sick = [r for r in rows if r["expected"]]
    healthy = [r for r in rows if not r["expected"]]
    return (f"{label}: detected {sum(r[key]['detected'] for r in sick)}/{len(sick)} "
            f"primary {sum(r[key]['primary'] for r in sick)}/{len(sick)} "
            f"false_alarms {sum(r[key]['false_alarm'] for r in healthy)}/{len(healthy)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="The fault zoo as plain scripts under nndoctor watch.")
    parser.add_argument("--tag", help="only scenarios with this tag (e.g. quick)")
    parser.add_argument("--only", help="only scenarios whose name contains this text")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenarios = zoo.select(args.tag) if args.tag else list(zoo.SCENARIOS)
    scenarios = [s for s in scenarios if not args.only or args.only in s.name]
    rows = []
    print(f"{'scenario':40s} {'expected':30s} {'watch (root first)':40s} {'diagnose (root first)':40s}")
    with tempfile.TemporaryDirectory() as tmp:
        for s in scenarios:
            started = time.perf_counter()
            by_script = score(s.expected, watched(s.name, args.seed, Path(tmp)))
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                by_diagnose = score(s.expected, zoo.run(s, seed=args.seed))  # its live lines: not the table's
            row = {"name": s.name, "expected": list(s.expected), "seconds": round(time.perf_counter() - started, 1)}
            for key, sc in (("watch", by_script), ("diagnose", by_diagnose)):
                row[key] = {"found": sc.found, "detected": sc.detected, "primary": sc.primary,
                            "false_alarm": sc.false_alarm, "first_step": sc.first_step}
            ok = (lambda sc: sc.primary if s.expected else not sc.false_alarm)
            mark = "  " if ok(by_script) == ok(by_diagnose) else ("W+" if ok(by_script) else "W-")
            if mark != "  ":
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    by_train_only = score(s.expected, without_validation(s, args.seed))
                row["diagnose_without_val"] = {"found": by_train_only.found, "primary": by_train_only.primary,
                                               "false_alarm": by_train_only.false_alarm}
                row["validation_only"] = ok(by_train_only) == ok(by_script)
                mark += "v" if row["validation_only"] else " "
            rows.append(row)
            print(f"{mark:3s} {s.name:36s} {','.join(s.expected) or 'healthy':30s} "
                  f"{','.join(by_script.found)[:40] or 'healthy':40s} {','.join(by_diagnose.found)[:40] or 'healthy':40s}",
                  flush=True)
    print(summary("zoo-scripts (nndoctor watch)", rows, "watch"))
    print(summary("zoo (diagnose / watch())   ", rows, "diagnose"))
    alike = [r for r in rows if not r.get("validation_only")]
    print(f"like for like ({len(alike)} scenarios; left out, named from the validation data alone: "
          f"{', '.join(r['name'] for r in rows if r.get('validation_only')) or 'none'}):")
    print("  " + summary("zoo-scripts", alike, "watch"))
    print("  " + summary("zoo        ", alike, "diagnose"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
