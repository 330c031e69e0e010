"""How a report scores against a scenario's expectation (shared by the zoo benchmark, the
demo and the tests): detected = an expected code is among the warnings/errors; primary =
the first warning/error is the root cause (expected[0]); a healthy scenario with any
warning/error is a false alarm."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Score:
    detected: bool
    primary: bool
    false_alarm: bool
    found: list[str]
    first_step: int | None      # first step at which an expected code was found (None: before training)
    steps: int                  # steps the run took

    @property
    def time_to_detect(self) -> float | None:
        """First detection as a fraction of the run (0 for pre-flight findings)."""
        if not self.detected:
            return None
        return 0.0 if self.first_step is None else min(1.0, self.first_step / max(self.steps, 1))


def score(expected: tuple[str, ...], report) -> Score:
    problems = [f for f in report.findings if f.is_problem]
    found = [f.code for f in problems]
    hits = [f for f in problems if f.code in expected]
    steps = int(report.meta.get("steps_trained") or report.meta.get("steps") or 0)
    first = min(hits, key=lambda f: -1 if f.step is None else f.step) if hits else None
    return Score(detected=bool(expected) and bool(hits),
                 primary=bool(expected) and bool(found) and found[0] == expected[0],
                 false_alarm=not expected and bool(found), found=found,
                 first_step=None if first is None else first.step, steps=steps)
