"""The README's promises, each tried by a test that sets out to break it (issue 14).

Where a promise concerns the run, the watched run is compared with the same run without
nndoctor: same seed, bit-identical parameters at the end.
"""
import subprocess
import sys
import textwrap
import warnings

import torch
from torch import nn

import nndoctor
import nndoctor.watcher


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def mlp(seed=0, first=None):
    torch.manual_seed(seed)
    return nn.Sequential(first or nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def train(model, opt, doctor=None, steps=24, seed=5):
    X, y = make_data()
    torch.manual_seed(seed)
    for i in range(steps):
        j = (i * 32) % 256
        loss = nn.functional.cross_entropy(model(X[j:j + 32]), y[j:j + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if doctor is not None:
            doctor.log(loss=loss)
    return model


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def break_the_doctor(doctor):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in nndoctor")
    doctor.grads.on_step = broken


# ---- 2. warnings-as-errors never turn our trouble into the user's crash --------------------
def test_internal_error_under_warnings_as_errors_is_a_note_and_a_stderr_line(capfd):
    plain = mlp()
    train(plain, torch.optim.SGD(plain.parameters(), 0.1))
    watched = mlp()
    opt = torch.optim.SGD(watched.parameters(), 0.1)
    doctor = nndoctor.watch(watched, opt, flush_every=5)
    break_the_doctor(doctor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what -W error / PYTHONWARNINGS=error set
        with doctor:
            train(watched, opt, doctor)
        report = doctor.report()
    assert same(plain, watched)
    assert any("internal error" in n for n in report.notes)
    err = capfd.readouterr().err
    assert err.count("nndoctor stopped watching after an internal error") == 1


def test_script_under_W_error_keeps_its_exit_status_when_nndoctor_breaks(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        import nndoctor.collect.gradients as g
        def broken(*a, **k):
            raise RuntimeError("a bug in nndoctor")
        g.GradientCollector.on_step = broken   # stands for any bug of ours
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), 0.05)
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        for step in range(30):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
        print("finished", float(loss))
    """))
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "nndoctor.cli", "watch",
                          "--out", str(tmp_path / "r"), str(script)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished" in out.stdout
    assert "nndoctor stopped watching after an internal error" in out.stderr
    assert "Traceback" not in out.stderr


# ---- 3. a valid module never makes watch() raise ------------------------------------------
def test_lazy_module_before_its_first_forward_is_watched_once_materialised():
    plain = mlp(first=nn.LazyLinear(32))
    train(plain, torch.optim.SGD(plain.parameters(), 0.1))
    watched = mlp(first=nn.LazyLinear(32))
    opt = torch.optim.SGD(watched.parameters(), 0.1)
    with nndoctor.watch(watched, opt, sample_every=1, flush_every=4) as doctor:
        train(watched, opt, doctor)
    report = doctor.report()
    assert same(plain, watched)
    assert "grad_norm/0.weight" in doctor.history.series  # the lazy layer, once it had a shape
    assert report.meta["parameters"] == sum(p.numel() for p in watched.parameters())


def test_scripted_module_is_watched_where_it_can_be():
    def scripted():
        torch.manual_seed(0)
        return torch.jit.script(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)))
    plain = scripted()
    train(plain, torch.optim.SGD(plain.parameters(), 0.1))
    watched = scripted()
    opt = torch.optim.SGD(watched.parameters(), 0.1)
    with nndoctor.watch(watched, opt, sample_every=1, flush_every=4) as doctor:
        train(watched, opt, doctor)
    report = doctor.report()
    assert same(plain, watched)
    assert doctor.active
    assert "grad_norm/0.weight" in doctor.history.series  # optimizer-side evidence still flows
    assert any("take no forward hooks" in n for n in report.notes)


def test_a_collector_that_cannot_read_the_model_leaves_a_note_not_a_crash(monkeypatch):
    real = nndoctor.watcher.ActivationCollector

    def unreadable(model, names):
        if names:
            raise RuntimeError("exotic module")
        return real(model, names)
    monkeypatch.setattr(nndoctor.watcher, "ActivationCollector", unreadable)
    plain = mlp()
    train(plain, torch.optim.SGD(plain.parameters(), 0.1))
    watched = mlp()
    opt = torch.optim.SGD(watched.parameters(), 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nndoctor.watch(watched, opt) as doctor:
            train(watched, opt, doctor)
    assert same(plain, watched)
    assert any("exotic module" in n for n in doctor.report().notes)


# ---- 4. report() never raises -------------------------------------------------------------
def test_report_survives_a_failing_verdict_and_a_failing_sink(monkeypatch):
    class BrokenSink:
        def flushed(self, doctor, rows):
            pass

        def reported(self, report):
            raise OSError("disk full")

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    with nndoctor.watch(model, opt, flush_every=5, sinks=[BrokenSink()]) as doctor:
        train(model, opt, doctor)
    live = doctor.findings

    def broken_judge(run):
        raise ValueError("a rule's bug")
    monkeypatch.setattr(nndoctor.watcher, "judge", broken_judge)
    report = doctor.report()
    assert {f.code for f in report.findings} == {f.code for f in live}
    assert any("a rule's bug" in n for n in report.notes)
    assert any("disk full" in n for n in report.notes)
    report.to_json()
