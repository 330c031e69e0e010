"""The zoo: small real training setups that really fail (sick) or really learn (healthy).

Shared by `nndoctor demo`, the tests and the benchmarks. Every sick scenario is a healthy
base plus mutation operators (see `mutations`), and lists the finding codes an expert
would name, root cause first.

    from nndoctor import zoo
    report = zoo.run(zoo.get("mlp-digits/lr=8"))
    for s in zoo.select("quick"): ...
"""
from __future__ import annotations

from .loops import fit
from .recipe import Scenario, Setup
from .scenarios import SCENARIOS

__all__ = ["Setup", "Scenario", "SCENARIOS", "get", "select", "run", "fit"]

_BY_NAME = {s.name: s for s in SCENARIOS}


def get(name: str) -> Scenario:
    """The scenario called `name`; a KeyError lists close names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib
        near = difflib.get_close_matches(name, _BY_NAME, n=3, cutoff=0.4)
        raise KeyError(f"no zoo scenario {name!r}" + (f"; did you mean {near}?" if near else "")) from None


def select(tag: str) -> list[Scenario]:
    """The scenarios carrying `tag` ("demo", "quick", "healthy", "sick", "mlp", "cnn", ...)."""
    return [s for s in SCENARIOS if tag in s.tags]


def run(scenario: Scenario | str, seed: int = 0, doctor_kwargs: dict | None = None, deep: bool = False):
    """Build the scenario at `seed` and diagnose it: with `nndoctor.diagnose`, or, for a
    fault in the user's own loop, by watching that loop. A scenario tagged "restarts" is
    also checked by random restarts (`optimum.local`). `deep`: add the deep analyses
    (`nndoctor.analysis`). Returns the Report."""
    import nndoctor

    if isinstance(scenario, str):
        scenario = get(scenario)
    setup = scenario.build(seed)
    kwargs = dict(doctor_kwargs or {})
    if setup.loop is None:
        report = nndoctor.diagnose(setup.model, setup.train_data, loss_fn=setup.loss_fn,
                                   optimizer=setup.optimizer, val_data=setup.val_data,
                                   steps=setup.steps, batch_size=setup.batch_size, seed=seed, deep=deep, **kwargs)
        return with_restarts(report, scenario.build(seed), seed) if "restarts" in scenario.tags else report
    start = nndoctor.analysis.initial_weights(setup.model) if deep else None
    with nndoctor.watch(setup.model, setup.optimizer, **kwargs) as doctor:
        setup.loop(setup, doctor)
    if deep:
        return nndoctor.analysis.examine(doctor.report(), setup.model, setup.train_data, setup.loss_fn,
                                         setup.optimizer, initial=start, batch_size=setup.batch_size, seed=seed)
    return doctor.report()


def with_restarts(report, setup: Setup, seed: int):
    """The report with the restarts' verdict added (a fresh setup: diagnose trained the other)."""
    from ..repair import restarts
    from ..repair.restarts import with_restarts as add
    return add(report, restarts(setup.model, setup.train_data, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                                steps=setup.steps, batch_size=setup.batch_size, seed=seed))
