"""The watcher's promises: it changes nothing, leaves no hook behind, never stops training
because of its own bug, never syncs per step, and names where NaN starts."""
import warnings

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.history import BUCKETS, HEAD, RECENT, Series


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


def train(model, opt, doctor=None, epochs=3):
    X, y = make_data()
    lf = nn.CrossEntropyLoss()
    torch.manual_seed(5)
    for _ in range(epochs):
        for i in range(0, 256, 32):
            loss = lf(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor:
                doctor.log(loss=loss)
    return model


def hooks_left(model, opt):
    from torch.nn.modules import module as M
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    n += sum(len(getattr(p, "_backward_hooks", None) or {}) for p in model.parameters())
    n += len(M._global_forward_hooks) + len(M._global_forward_pre_hooks)
    return n + len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


def test_watching_changes_nothing_and_leaves_no_hook():
    plain = make_model()
    train(plain, torch.optim.SGD(plain.parameters(), 0.1, momentum=0.9))
    watched = make_model()
    opt = torch.optim.SGD(watched.parameters(), 0.1, momentum=0.9)
    with nndoctor.watch(watched, opt, sample_every=1, flush_every=3) as doctor:
        train(watched, opt, doctor)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters()))
    assert hooks_left(watched, opt) == 0
    assert doctor.report().meta["steps"] == 24


# ops that make the host wait for a device (a CUDA sync): reading a value, or an output whose
# size depends on the values (bincount, nonzero, boolean-mask indexing, unique)
SYNCING = [(torch.Tensor, name) for name in ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy",
                                             "nonzero", "masked_select", "unique")] + \
          [(torch, name) for name in ("bincount", "nonzero", "masked_select", "unique", "histogramdd")]


def count_syncs(monkeypatch) -> list:
    """The CPU proxy for device syncs: every syncing op called, except the sentinel's reads
    of checks the device has already published (`nonfinite.published`, which never waits)."""
    from nndoctor.collect import nonfinite
    calls, allowed = [], []
    for owner, name in SYNCING:
        original = getattr(owner, name)
        def counted(*a, _o=original, _n=name, **k):
            if not allowed:
                calls.append(_n)
            return _o(*a, **k)
        monkeypatch.setattr(owner, name, counted)
    getitem = torch.Tensor.__getitem__
    def masked(self, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool and not allowed:
            calls.append("boolean mask")
        return getitem(self, index)
    monkeypatch.setattr(torch.Tensor, "__getitem__", masked)
    published = nonfinite.published
    def reading(*a, **k):
        allowed.append(1)
        try:
            return published(*a, **k)
        finally:
            allowed.pop()
    monkeypatch.setattr(nonfinite, "published", reading)
    return calls


@pytest.mark.parametrize("sample_every", [20, 1])
def test_no_sync_between_flushes(monkeypatch, sample_every):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)  # Adam itself calls .item() on CPU
    X, y = make_data()
    calls = count_syncs(monkeypatch)
    with nndoctor.watch(model, opt, flush_every=20, sample_every=sample_every) as doctor:
        for i in range(19):  # one short of the first flush
            loss = nn.functional.cross_entropy(model(X[:32]), y[:32])
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.log(loss=loss)
            if i == 0:  # the first step's examination (pre-flight checks on copies) reads numbers once
                assert doctor.preflight_notes or doctor.checkup_meta
                calls.clear()
        assert calls == []  # nothing left the device after it, no sync
    monkeypatch.undo()


def test_internal_error_never_stops_training(monkeypatch):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    doctor = nndoctor.watch(model, opt)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in nndoctor")
    monkeypatch.setattr(doctor.grads, "on_step", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with doctor:
            train(model, opt, doctor)
    ours = [w for w in caught if "nndoctor stopped watching" in str(w.message)]
    assert len(ours) == 1
    report = doctor.report()
    assert any("internal error" in n for n in report.notes)
    assert hooks_left(model, opt) == 0


class LogOfInput(nn.Module):
    """log(x) turns -inf as soon as an input hits 0: a bad op, not a bad learning rate."""
    def forward(self, x):
        return torch.log(x)


def test_nonfinite_origin_is_the_first_module_that_produces_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), LogOfInput(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    X, y = make_data()
    with nndoctor.watch(model, opt, flush_every=5) as doctor:
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.log(loss=loss)
    report = doctor.report()
    finding = report.get("loss.nonfinite")
    assert finding is not None and finding.where == "2"  # the LogOfInput, not the Linear after it
    assert not report.has("lr.too_high")


def test_gradscaler_skipped_steps_are_not_judged():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    X, y = make_data()
    with nndoctor.watch(model, opt, flush_every=5) as doctor:
        for step in range(40):
            i = (step % 8) * 32
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            scaler.scale(loss * (float("inf") if step in (3, 17) else 1.0)).backward()
            scaler.step(opt)  # skipped when the gradients hold inf
            scaler.update()
            doctor.log(loss=loss)
    report = doctor.report()
    assert report.meta["steps"] == 38  # two skipped steps never reached the optimizer
    assert not report.has("grad.exploding") and not report.has("lr.too_high")


def test_history_memory_is_bounded():
    s = Series()
    for i in range(1_000_000):
        s.add(i, float(i % 97))
    held = len(s.head_values) + len(s.values) + 6 * len(s.buckets)
    assert held <= HEAD + RECENT + RECENT // 8 + 6 * BUCKETS
    steps, values = s.trace()
    assert steps[-1] == 999_999 and len(steps) < HEAD + RECENT + RECENT // 8 + BUCKETS + 1


def test_history_keeps_spikes_in_summaries():
    s = Series()
    for i in range(50_000):
        s.add(i, float("inf") if i == 20_000 else 1.0)
    assert s.any_nonfinite()


class Branchy(nn.Module):
    """A layer used on every other sampled step only."""

    def __init__(self):
        super().__init__()
        self.body, self.branch, self.use_branch = nn.Linear(8, 3), nn.Linear(8, 3), False

    def forward(self, x):
        return self.body(x) + (self.branch(x) if self.use_branch else 0)


def test_series_keep_step_order_when_the_parameters_with_a_gradient_change():
    """Each set of parameters with a gradient is a layout of its own in the buffers, and a
    flush brings one group of rows per layout: each series must still run in step order."""
    torch.manual_seed(0)
    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    X, y = make_data()
    with nndoctor.watch(model, opt, sample_every=5, flush_every=50, examine=False, live=False) as doctor:
        for step in range(100):
            model.use_branch = step % 10 == 0
            loss = nn.functional.cross_entropy(model(X[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    for name in ("grad_norm/body.weight", "grad_norm/total", "update_ratio/body.weight"):
        steps, _ = doctor.history[name].trace()
        assert steps.tolist() == list(range(0, 100, 5)), name


def test_report_json_round_trip_with_nonfinite_evidence():
    f = nndoctor.Finding.make("loss.nonfinite", "NaN at step 3", evidence={"last": float("nan"), "x": [1.0, float("inf")]}, step=3)
    report = nndoctor.Report(findings=[f], meta={"steps": 3})
    text = report.to_json()
    again = nndoctor.Report.from_json(text)
    assert again.to_json() == text and again.has("loss.nonfinite")


def test_unknown_code_is_rejected():
    with pytest.raises(KeyError):
        nndoctor.Finding.make("no.such_code", "x")


def test_html_escapes_user_strings(tmp_path):
    evil = "<img src=x onerror=alert(1)>"
    f = nndoctor.Finding.make("units.dead", f"dead after {evil}", where=evil)
    path = tmp_path / "r.html"
    nndoctor.Report(findings=[f], notes=[evil]).save_html(path)
    page = path.read_text()
    assert evil not in page and "&lt;img src=x" in page
