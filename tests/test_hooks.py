"""The watcher's hooks: a watched model pickles, saves and copies as it would unwatched."""
import contextlib
import copy
import io
import math
import pickle
import runpy
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import torch
from torch import nn

import nndoctor
from nndoctor.integrations.script import run
from test_watch import hooks_left, make_data, make_model

CHECKPOINTING = """
    import copy, pickle, sys
    import torch
    from torch import nn
    torch.manual_seed(0)
    X = torch.randn(256, 8)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = copy.deepcopy(model)                      # the EMA / best-weights pattern
    best = None
    for epoch in range(4):
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 0.1)
        with torch.no_grad():
            val = nn.functional.cross_entropy(ema(X), y)
        torch.save(model, sys.argv[1] + f".epoch{epoch}.pt")   # the whole model, every epoch
        blob = pickle.dumps(model)
        best = copy.deepcopy(model)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "best": best.state_dict(),
                "reloaded": pickle.loads(blob).state_dict()}, sys.argv[1])
"""


def pending(doctor) -> int:
    """Tensors the sentinel holds until a step ends or a flush."""
    s = doctor.sentinel
    return len(s._forwards) + len(s._values) + len(s.rows)


def test_watched_model_pickles_saves_and_deep_copies():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    X, y = make_data()
    with nndoctor.watch(model, opt, sample_every=1) as doctor:  # sampling hooks attached too
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.log(loss=loss)
            blob = pickle.dumps(model)
            saved = io.BytesIO()
            torch.save(model, saved)
            twin = copy.deepcopy(model)
        unwatched = torch.optim.SGD(twin.parameters(), 0.1)
        assert hooks_left(model, opt) > 2 and hooks_left(twin, unwatched) == 0  # the copy carries no hook
    assert b"nndoctor" not in blob and b"nndoctor" not in saved.getvalue()  # loads without nndoctor
    reloaded = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))
    held = pending(doctor)
    for _ in range(50):
        twin(X[:32]).sum().backward()  # the copy runs on after the watch ended
    assert pending(doctor) == held and hooks_left(twin, unwatched) == 0


def test_hook_reached_another_way_copies_inert():
    model = make_model()
    with nndoctor.watch(model) as doctor:
        hooks = pickle.loads(pickle.dumps(model[0]._forward_hooks, protocol=2))
        copied = copy.deepcopy(model[0]._forward_hooks)
    for hook in [*hooks.values(), *copied.values()]:
        assert hook(model[0], (torch.zeros(1, 8),), torch.zeros(1, 32)) is None
    assert pending(doctor) == 0


def test_checkpointing_script_under_nndoctor_watch_matches_the_plain_run(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(CHECKPOINTING))
    argv = sys.argv
    try:
        sys.argv = [str(path), str(tmp_path / "plain.pt")]
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert run(str(path), [str(tmp_path / "watched.pt")], out=tmp_path / "report") == 0
    plain, watched = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "watched.pt")
    for part in plain:
        assert all(torch.equal(plain[part][k], watched[part][k]) for k in plain[part])
    pickled = [zipfile.ZipFile(tmp_path / f"{name}.pt.epoch3.pt").read(f"{name}.pt.epoch3/data.pkl")
               for name in ("plain", "watched")]
    assert pickled[0] == pickled[1]  # torch.save(model) wrote exactly what it writes unwatched


# ---- where NaN/Inf starts: one truth each --------------------------------------------
class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Magnitude(nn.Module):
    """Appends each row's norm, sqrt(sum x^2): finite forward, but 0/0 in its backward at a zero row."""
    def forward(self, x):
        return torch.cat([x, x.pow(2).sum(1, keepdim=True).sqrt()], 1)


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def nonfinite_run(model, batches, loss_fn=nn.functional.cross_entropy, lr=0.01):
    opt = torch.optim.SGD(model.parameters(), lr)
    with nndoctor.watch(model, opt, flush_every=5) as doctor:
        for x, y in batches:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.log(loss=loss)
    finding = doctor.report().get("loss.nonfinite")
    assert finding is not None
    return finding.evidence["origin"], finding


def classification_batches(n=12, width=8, bad=None):
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(n):
        x = torch.randn(32, width, generator=g)
        y = (x[:, 0] > 0).long()
        out.append(bad(step, x, y) if bad else (x, y))
    return out


def test_nan_only_in_the_target_is_blamed_on_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def nan_target(step, x, y):
        y = x[:, :1].clone()
        if step == 4:
            y[3] = float("nan")
        return x, y
    origin, finding = nonfinite_run(model, classification_batches(bad=nan_target), nn.functional.mse_loss)
    assert origin["module"] == "<loss>" and origin["step"] == 4
    assert finding.where is None and "parameters" not in finding.message


def backward_inf_run():
    """A row of zeros at step 3 into a bias-free layer: its output row is zero, and the norm
    after it (`1`) sends back 0/0 in the backward pass only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), Magnitude(), nn.Linear(17, 3))

    def zero_row(step, x, y):
        if step == 3:
            x[5] = 0.0
        return x, y
    return nonfinite_run(model, classification_batches(bad=zero_row))


def test_inf_made_only_in_the_backward_is_blamed_on_its_module():
    origin, finding = backward_inf_run()
    assert origin == {"step": 3, "module": "1", "stage": "backward"}
    assert finding.where == "1" and "backward pass of `1`" in finding.message


def test_nan_in_one_row_of_a_large_activation_is_found():
    torch.manual_seed(0)
    model = nn.Sequential(Log(), nn.Linear(256, 3))  # log's output: 512 x 256 values per step

    def one_zero(step, x, y):
        x = torch.rand(512, 256, generator=torch.Generator().manual_seed(step)) + 0.1
        if step == 2:
            x[1, 7] = 0.0  # one value of one odd row
        return x, (x[:, 0] > 0.6).long()
    origin, finding = nonfinite_run(model, classification_batches(n=6, bad=one_zero))
    assert origin["module"] == "0" and origin["step"] == 2 and finding.where == "0"


class LogBetween(nn.Module):
    """A user's model: the log is a functional op in its own forward, between two layers."""
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.log(self.fc1(x)))


def test_nan_made_between_submodules_is_blamed_on_the_forward_that_made_it():
    torch.manual_seed(0)
    origin, finding = nonfinite_run(LogBetween(), classification_batches())
    assert origin["module"] == "LogBetween" and origin["own_code"] and origin["step"] == 0
    assert "`LogBetween`'s own forward code" in finding.message and "fc2" not in finding.message


NAN_SCRIPT = """
import sys
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = self.fc1(x)
        if sys.argv[1] == "log":
            h = torch.log(h)  # negative pre-activations: NaN at the first step
        return self.fc2(torch.relu(h))


torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
X = torch.randn(256, 8)
if sys.argv[1] == "nan-input":
    X[3, 2] = float("nan")
y = (X[:, 0] > 0).long()
for step in range(16):
    i = (step % 8) * 32
    loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def test_nan_at_the_first_step_of_a_script_is_placed_as_under_the_api(tmp_path):
    """`nndoctor watch` finds the model at the first backward, after that step's forward: the
    forward passes seen before are handed to the sentinel, so step 0's NaN is placed too."""
    path = tmp_path / "train.py"
    path.write_text(NAN_SCRIPT)
    for kind, module, stage in (("log", "Net", "forward"), ("nan-input", "<input>", None)):
        assert run(str(path), [kind], out=tmp_path / kind) == 0
        report = nndoctor.Report.from_json((tmp_path / kind / "report.json").read_text())
        origin = report.get("loss.nonfinite").evidence["origin"]
        assert origin["step"] == 0 and origin["module"] == module and origin.get("stage") == stage


def test_large_finite_activations_are_not_read_as_nonfinite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1000), Scale(1e36), Scale(1e-36), nn.Linear(1000, 3))  # sums overflow float32

    def nan_input(step, x, y):
        if step == 6:
            x[0, 0] = float("nan")
        return x, y
    origin, _ = nonfinite_run(model, classification_batches(bad=nan_input))
    assert origin == {"step": 6, "module": "<input>"}


def test_no_runaway_update_said_when_the_parameters_were_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e38)  # finite, but its products overflow: Inf from finite weights
    origin, finding = nonfinite_run(model, classification_batches())
    assert origin["module"] == "0" and origin["step"] == 0 and origin["bad_parameters"] == []
    assert "already non-finite" not in finding.message and "from finite inputs and parameters" in finding.message


# ---- cost and memory ------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm, self.linear, self.act = nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU()

    def forward(self, x):
        return x + self.act(self.linear(self.norm(x)))


def residual_mlp(blocks, width=16):
    return nn.Sequential(nn.Linear(8, width), *[Block(width) for _ in range(blocks)], nn.Linear(width, 3))


def test_unsampled_steps_cost_the_same_python_calls_at_every_model_size(monkeypatch):
    from nndoctor.collect import hooks
    calls = []
    original = hooks.Hook.__call__
    monkeypatch.setattr(hooks.Hook, "__call__", lambda self, *a: (calls.append(1), original(self, *a))[1])
    X, y = make_data()
    per_step = {}
    for blocks in (2, 40):  # 11 and 163 modules
        torch.manual_seed(0)
        model = residual_mlp(blocks)
        opt = torch.optim.SGD(model.parameters(), 0.01)
        with nndoctor.watch(model, opt, sample_every=10) as doctor:
            for step in range(10):
                calls.clear()
                loss = nn.functional.cross_entropy(model(X[:32]), y[:32])
                opt.zero_grad(); loss.backward(); opt.step()
                doctor.log(loss=loss)
        per_step[blocks] = len(calls)  # the last step: unsampled
    assert per_step[2] == per_step[40] <= 5


def test_unsampled_steps_cost_the_same_few_tensor_operations_at_every_model_and_batch_size():
    """The every-step checks: three operations on a few gradients (their sum, read at once), not one per module,
    and none on the batch (the input and output are only checked when a gradient is not finite)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    def ops_of_one_step(blocks, rows, watched):
        torch.manual_seed(0)
        model = residual_mlp(blocks)
        opt = torch.optim.SGD(model.parameters(), 0.01)
        x, y = torch.randn(rows, 8), torch.randint(0, 3, (rows,))
        with nndoctor.watch(model, opt, sample_every=10, flush_every=100, examine=False, live=False) as doctor:
            if not watched:
                doctor.detach()
            for step in range(10):
                Count.ops = 0
                with Count():  # the last step: unsampled, no flush
                    loss = nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad(); loss.backward(); opt.step()
                    doctor.log(loss=loss)
        return Count.ops

    added = {(blocks, rows): ops_of_one_step(blocks, rows, True) - ops_of_one_step(blocks, rows, False)
             for blocks in (2, 40) for rows in (32, 512)}
    assert len(set(added.values())) == 1 and 0 < added[2, 32] <= 6, added


def test_nan_input_of_an_early_micro_batch_under_long_accumulation_is_the_data():
    """More micro-batches than the sentinel keeps for a replay: the one pushed out is checked
    as it goes, so the bad input is still named, not a module."""
    from nndoctor.collect.nonfinite import REPLAYABLE
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    batches = classification_batches(n=4 * (REPLAYABLE + 2))
    batches[REPLAYABLE + 2][0][3, 2] = float("nan")  # step 1's first micro-batch
    with nndoctor.watch(model, opt, flush_every=5) as doctor:
        for i, (x, y) in enumerate(batches):
            loss = nn.functional.cross_entropy(model(x), y) / (REPLAYABLE + 2)
            loss.backward()
            if (i + 1) % (REPLAYABLE + 2) == 0:
                opt.step(); opt.zero_grad()
                doctor.log(loss=loss)
    origin = doctor.report().get("loss.nonfinite").evidence["origin"]
    assert origin["module"] == "<input>" and origin["step"] == 1


def test_nan_of_a_step_the_script_skips_is_still_placed():
    """A loop that logs a NaN loss and skips its backward and step: the forward that made it
    reached no gradient, so it is checked whole at the next step and its module named."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Log(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias.fill_(5.0)  # log of positive values until step 4's batch makes some negative
    opt = torch.optim.SGD(model.parameters(), 0.01)
    batches = classification_batches()
    batches[4][0][7] = -100.0
    with nndoctor.watch(model, opt, flush_every=5) as doctor:
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)
            doctor.log(loss=loss)
            if not torch.isfinite(loss):
                continue  # the script's own guard: no backward, no step
            opt.zero_grad(); loss.backward(); opt.step()
    finding = doctor.report().get("loss.nonfinite")
    assert finding.evidence["origin"]["module"] == "1" and finding.evidence["origin"]["stage"] == "forward"


def test_checks_an_accelerator_has_not_published_are_placed_at_the_flush(monkeypatch):
    """On a device whose checks are not read at once, every stage is checked on the device
    and the flush finds the first bad step and its stage (no replay: its step has passed)."""
    from nndoctor.collect import nonfinite
    monkeypatch.setattr(nonfinite, "published", lambda value, event=None: None)
    origin, _ = backward_inf_run()
    assert origin["step"] == 3 and origin["stage"] == "backward" and origin["module"] is None


def test_sentinel_memory_is_bounded_without_an_optimizer_and_after_a_new_one():
    from nndoctor.collect.nonfinite import CHECKS_HELD, REPLAYABLE
    X, y = make_data()
    model = make_model()
    old = torch.optim.SGD(model.parameters(), 0.01)
    held = []
    with nndoctor.watch(model, old, flush_every=10) as replaced, nndoctor.watch(make_model()) as bare:
        new = torch.optim.SGD(model.parameters(), 0.01)  # the script replaces its optimizer
        for step in range(600):
            loss = nn.functional.cross_entropy(model(X[:32]), y[:32])
            new.zero_grad(); loss.backward(); new.step()
            bare.model(X[:32]).sum().backward()  # watch(model): no optimizer, nothing logged
            held.append(max(pending(replaced), pending(bare)))
    assert max(held) <= CHECKS_HELD + REPLAYABLE and max(held[300:]) == max(held[:300])


def test_nonfinite_gradient_made_outside_the_model_is_said_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    steps = iter(range(100))
    model[0].weight.register_hook(lambda g: g * float("nan") if next(steps) == 3 else None)  # a user's hook
    origin, finding = nonfinite_run(model, classification_batches())
    assert origin["step"] == 3 and origin["stage"] == "outside" and finding.where is None


# ---- torch.compile ---------------------------------------------------------------------
def compiled_run(watched: bool, mode: str, lr: float = 0.1):
    """30 steps of a tiny classifier run eagerly, through `torch.compile(model)` or after
    `model.compile()`: (graphs compiled, graph breaks, finding codes)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr)
    run = torch.compile(model) if mode == "wrapper" else model
    if mode == "in place":
        model.compile()
    X, y = make_data()
    doctor = nndoctor.watch(model, opt, sample_every=5, flush_every=10) if watched else None
    with doctor or contextlib.nullcontext():
        for step in range(30):
            i = (step % 8) * 32
            loss = nn.functional.cross_entropy(run(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            if doctor:
                doctor.log(loss=loss)
    codes = sorted(f.code for f in doctor.report().findings if f.is_problem) if doctor else None
    if doctor and mode != "eager":
        notes = doctor.report().notes
        assert doctor.compiled and any("ran compiled" in n for n in notes)
        assert any("pre-flight checks did not run: the model runs compiled" in n for n in notes)
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), codes


def test_watching_a_compiled_model_adds_no_recompile_or_graph_break():
    assert compiled_run(True, "wrapper")[:2] == compiled_run(False, "wrapper")[:2] == (1, 0)
    graphs, breaks, _ = compiled_run(True, "in place")  # (unwatched, torch 2.13 runs this model uncompiled)
    assert graphs <= 1 and breaks == 0
    compiled, eager = compiled_run(True, "wrapper", lr=20.0)[2], compiled_run(True, "eager", lr=20.0)[2]
    assert compiled == eager and "lr.too_high" in eager  # the same verdict as eager


COMPILED_SCRIPT = """
import json, sys
import torch
from torch import nn
from torch._dynamo.utils import counters

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), float(sys.argv[2]))
if sys.argv[1] == "wrapper":
    model = torch.compile(model)
elif sys.argv[1] == "in place":
    model.compile()
X = torch.randn(256, 8)
y = (X[:, 0] > 0).long()
for step in range(60):
    i = (step % 8) * 32
    loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 1:
        warm = counters["stats"]["unique_graphs"]
with open(sys.argv[3], "w") as f:
    json.dump([counters["stats"]["unique_graphs"], counters["stats"]["unique_graphs"] - warm,
               sum(counters["graph_break"].values()), [p.detach().tolist() for p in model.parameters()]], f)
"""


def test_a_compiled_script_under_nndoctor_watch_compiles_as_often_as_the_plain_run(tmp_path):
    import json
    import torch._dynamo
    path = tmp_path / "train.py"
    path.write_text(COMPILED_SCRIPT)

    def script(mode, lr, watched):
        torch._dynamo.reset()
        from torch._dynamo.utils import counters
        counters.clear()
        result, argv = tmp_path / f"{mode}-{lr}-{watched}.json", sys.argv
        args = [mode, str(lr), str(result)]
        if watched:
            assert run(str(path), args, out=tmp_path / "report") == 0
            report = nndoctor.Report.from_json((tmp_path / "report" / "report.json").read_text())
        else:
            try:
                sys.argv = [str(path), *args]
                runpy.run_path(str(path), run_name="__main__")
            finally:
                sys.argv = argv
            report = None
        return json.loads(result.read_text()), report

    for mode in ("wrapper", "in place"):
        (graphs, after_warm_up, breaks, weights), _ = script(mode, 0.1, False)
        (graphs_w, after_warm_up_w, breaks_w, weights_w), report = script(mode, 0.1, True)
        assert after_warm_up_w == after_warm_up == 0 and breaks_w == breaks == 0
        if mode == "wrapper":  # the whole run (model.compile() lets Dynamo compile the global hooks'
            assert graphs_w == graphs  # own frames at the first step, until they are removed)
        assert weights_w == weights  # watching changed no number
        assert not [f.code for f in report.findings if f.is_problem]
    _, compiled = script("wrapper", 20.0, True)
    _, eager = script("eager", 20.0, True)
    codes = lambda r: [f.code for f in r.findings if f.is_problem]  # noqa: E731
    assert "lr.too_high" in codes(eager) and codes(compiled)[0] == codes(eager)[0]


def test_our_global_hooks_make_no_warning_of_a_compiled_model_under_warnings_as_errors(tmp_path):
    """torch warns at each call of a compiled model while a global module hook exists: under
    `-W error` our hooks would stop the script at its first step."""
    import torch._dynamo
    from torch.nn.modules import module as globals_
    path = tmp_path / "train.py"
    path.write_text(COMPILED_SCRIPT)
    torch._dynamo.reset()
    filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert run(str(path), ["wrapper", "0.1", str(tmp_path / "r.json")], out=tmp_path / "report") == 0
        model = torch.compile(nn.Linear(2, 2))
        doctor = nndoctor.watch(model, torch.optim.SGD(model.parameters(), 0.1))  # the API's capture hooks
        with doctor:
            model(torch.randn(4, 2)).sum().backward()
    assert "run.failed" not in [f.code for f in doctor.report().findings]
    report = nndoctor.Report.from_json((tmp_path / "report" / "report.json").read_text())
    assert not [f.code for f in report.findings if f.is_problem]
    assert not globals_._has_any_global_hook() and warnings.filters == filters  # all ours removed


def test_a_model_fed_token_ids_is_watched_and_its_nan_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), Log(), nn.Flatten(), nn.Linear(32, 3))
    batches = [(torch.randint(0, 20, (16, 4)), torch.randint(0, 3, (16,))) for _ in range(6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stopped watching"
        origin, finding = nonfinite_run(model, batches)
    assert origin["module"] == "1" and origin["stage"] == "forward"  # log of a negative embedding value


def test_a_strided_sample_of_a_large_output_meets_every_unit():
    """The positive share and the histograms read a strided sample of a large output. With a
    stride that shares a factor with one example's size (24 on 1000 features: the old
    `numel // limit + 1`), it would meet the same one unit in 8 every time."""
    from nndoctor.collect.activations import strided_sample
    # (shape, positions per repeat of the units, positions per unit): features, channels, features of a sequence
    for shape, period, unit_size in [((96, 1000), 1000, 1), ((128, 16, 8, 8), 1024, 64), ((40, 30, 512), 512, 1)]:
        t = torch.arange(math.prod(shape)).reshape(shape)
        read = strided_sample(t, 4096)
        units = (read % period) // unit_size
        assert read.numel() <= 4096 and units.unique().numel() == period // unit_size, shape
    small = torch.randn(10, 7)
    assert torch.equal(strided_sample(small, 4096), small.reshape(-1))


def test_a_step_whose_checked_gradients_are_empty_shards_is_still_checked():
    """FSDP2 on a rank holding none of a small bias: the checked gradient is an empty local
    shard. Its sum (0) says nothing, so the step's own checks must still run (found on review:
    the CPU fast path took the empty sum for a finite step and lost a NaN input)."""
    from nndoctor.collect.nonfinite import NonFiniteSentinel
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    sentinel = NonFiniteSentinel(model, {m: n for n, m in model.named_modules()})
    shard = nn.Parameter(torch.zeros(0))
    shard.grad = torch.zeros(0)
    sentinel.checked = [shard]
    x = torch.randn(5, 4)
    x[0, 0] = float("nan")
    sentinel.on_input(model, (x,), {})
    out = model(x)
    sentinel.on_output([out])(torch.ones_like(out))  # the output's gradient, as the backward hands it over
    sentinel.end_step(0)
    sentinel.flush()
    assert sentinel.origin is not None and sentinel.origin["module"] == "<input>"


def test_the_input_summary_of_a_constant_feature_under_a_large_mean_has_zero_spread():
    """data.split_mismatch compares per-feature spreads: a constant feature must read 0, not
    the rounding of a large mean (two passes about the first row; found on review)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(64, 4) * 3 + 1e4, torch.randint(0, 3, (64,))
    x[:, 2] = 3333.33
    with nndoctor.watch(model, opt, examine=False, live=False) as doctor:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        doctor.log(loss=loss)
    _, (mean, std, low, high) = doctor.forwards.stats["train"][0]
    assert std[2] == 0 and abs(mean[2] - 3333.33) < 1e-3 and np.allclose(std[[0, 1, 3]], 3, rtol=0.3)
    assert np.allclose(mean, x.double().mean(0).numpy(), atol=2e-3) and np.allclose(high, x.amax(0).numpy())
