"""The fault zoo: every scenario through nndoctor, one row each, and the summary line

    zoo: detected X/N primary Y/N false_alarms Z/H median_ttd T

detected = an expected code is among the warnings/errors; primary = the first finding is
the root cause; false alarms = healthy scenarios with any warning/error; T = median
first-detection step as a fraction of the run (pre-flight findings count as 0).

    python benchmarks/zoo.py [--tag quick] [--only TEXT] [--json rows.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nndoctor import zoo
from nndoctor.zoo.scoring import score


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fault zoo through nndoctor.")
    parser.add_argument("--tag", help="only scenarios with this tag (e.g. quick, demo, rnn)")
    parser.add_argument("--only", help="only scenarios whose name contains this text")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deep", action="store_true", help="add the deep analyses (diagnose(deep=True))")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenarios = zoo.select(args.tag) if args.tag else list(zoo.SCENARIOS)
    scenarios = [s for s in scenarios if not args.only or args.only in s.name]
    rows = []
    print(f"{'scenario':42s} {'expected':34s} {'found (root first)':50s} {'step':>6s} {'s':>5s}")
    for s in scenarios:
        started = time.perf_counter()
        report = zoo.run(s, seed=args.seed, deep=args.deep)
        seconds = time.perf_counter() - started
        sc = score(s.expected, report)
        mark = ("ok " if (sc.primary if s.expected else not sc.false_alarm) else
                "det" if sc.detected else "BAD")
        step = "pre" if sc.detected and sc.first_step is None else (str(sc.first_step) if sc.detected else "-")
        print(f"{mark} {s.name:38s} {','.join(s.expected) or 'healthy':34s} {','.join(sc.found)[:50] or 'healthy':50s} "
              f"{step:>6s} {seconds:5.1f}", flush=True)
        rows.append({"name": s.name, "expected": list(s.expected), "found": sc.found, "detected": sc.detected,
                     "primary": sc.primary, "false_alarm": sc.false_alarm, "first_step": sc.first_step,
                     "steps": sc.steps, "time_to_detect": sc.time_to_detect, "seconds": round(seconds, 2)})
    sick = [r for r in rows if r["expected"]]
    healthy = [r for r in rows if not r["expected"]]
    ttd = [r["time_to_detect"] for r in sick if r["time_to_detect"] is not None]
    during = [r["time_to_detect"] for r in sick if r["detected"] and r["first_step"] is not None]
    print(f"while training: {len(during)} detections, median_ttd {statistics.median(during) if during else float('nan'):.2f} "
          f"(the others were named before the first step)")
    print(f"zoo: detected {sum(r['detected'] for r in sick)}/{len(sick)} primary {sum(r['primary'] for r in sick)}/{len(sick)} "
          f"false_alarms {sum(r['false_alarm'] for r in healthy)}/{len(healthy)} "
          f"median_ttd {statistics.median(ttd) if ttd else float('nan'):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
