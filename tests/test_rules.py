"""Every rule meets one contract (scikit-learn's common-test style): it fires on a real
network that fails the way it describes, and no rule fires on any healthy network. The
networks are the zoo's, shared with the demo and the benchmark."""
import functools

import pytest

from nndoctor import zoo
from nndoctor.findings import REGISTRY

# the codes judged from training dynamics (the pre-flight codes are covered in test_checkup.py)
DYNAMICS = ["lr.too_high", "lr.too_low", "loss.oscillation", "loss.fluctuation", "loss.plateau", "loss.nonfinite",
            "grad.vanishing", "grad.exploding", "grad.zero", "grad.none", "grad.clipped_always", "units.dead",
            "units.saturated", "layers.slow_bottom", "output.collapsed", "reg.too_strong", "fit.overfitting",
            "fit.underfitting", "loop.missing_zero_grad", "loop.eval_mode", "loop.graph_retained",
            "loop.eval_with_grad", "loop.eval_in_train_mode", "loop.eval_on_train_data", "lr.schedule_too_fast",
            "params.frozen", "data.split_mismatch"]


@functools.lru_cache(maxsize=None)
def report_of(name):
    return zoo.run(zoo.get(name))


def problems(report):
    return [f.code for f in report.findings if f.is_problem]


def sick_with(code):
    """A scenario expected to show `code`: a quick one if there is, preferring it as root cause."""
    candidates = [s for s in zoo.SCENARIOS if code in s.expected]
    return min(candidates, key=lambda s: ("quick" not in s.tags, s.expected.index(code), s.name))


def test_dynamics_codes_are_registered():
    assert set(DYNAMICS) <= set(REGISTRY)


@pytest.mark.parametrize("code", DYNAMICS)
def test_rule_fires_on_a_real_failing_network(code):
    scenario = sick_with(code)
    report = report_of(scenario.name)
    assert report.has(code), f"{scenario.name}: expected {code}, found {problems(report)}"


@pytest.mark.parametrize("scenario", [s for s in zoo.select("quick") if s.expected], ids=lambda s: s.name)
def test_root_cause_comes_first(scenario):
    found = problems(report_of(scenario.name))
    assert found and found[0] == scenario.expected[0], found


@pytest.mark.parametrize("scenario", [s for s in zoo.SCENARIOS if not s.expected], ids=lambda s: s.name)
def test_no_alarm_on_a_healthy_network(scenario):
    report = report_of(scenario.name)
    assert problems(report) == [], [(f.code, f.message) for f in report.findings if f.is_problem]
