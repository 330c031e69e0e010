"""Issue 13, traced codes and held-out misses, the way users meet them: their own loop under
`nndoctor.watch`, `checkup` / `diagnose` with the batch size they train with, and the zoo at
other seeds. (The pre-flight cases of each code are in test_checkup.py's contract.)"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndoctor
from nndoctor import zoo

DIGITS = zoo.get("mlp-digits").build(0).train_data
DIABETES = zoo.get("mlp-diabetes").build(0).train_data


def problems(report):
    return [f.code for f in report.findings if f.is_problem]


def own_loop(model, optimizer, data, loss_fn, steps, clip=None, seed=0):
    """A plain loop as users write it: zero_grad, forward, loss, backward, clip, step."""
    X, y = data
    g = torch.Generator().manual_seed(seed)
    with nndoctor.watch(model, optimizer) as doctor:
        for _ in range(steps):
            i = torch.randint(0, len(X), (32,), generator=g)
            optimizer.zero_grad()
            loss = loss_fn(model(X[i]), y[i])
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            doctor.log(loss=loss.item())
    return doctor.report()


def mlp(n_in=64, n_out=10, end=None):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, n_out), *([end] if end else []))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("clip, clipped", [(0.01, True), (1e3, False)], ids=["clip=0.01", "clip=1000"])
def test_clipping_every_step_is_named_in_a_100_step_loop(clip, clipped):
    """Sampled every 20 steps, 100 steps give five gradient norms: three equal ones suffice."""
    model = mlp()
    report = own_loop(model, torch.optim.SGD(model.parameters(), lr=5.0 if clipped else 0.05), DIGITS,
                      F.cross_entropy, steps=100, clip=clip)
    assert report.has("grad.clipped_always") == clipped, problems(report)


@pytest.mark.parametrize("op", [torch.round, torch.sign], ids=["round", "sign"])
def test_zero_derivative_op_at_the_end_of_the_model_is_named(op):
    """Every parameter's gradient is zero: nothing to compare with, the loss says it is not a fit."""
    model = mlp(10, 1, end=Lambda(op))
    report = own_loop(model, torch.optim.Adam(model.parameters(), 1e-3), DIABETES, F.mse_loss, steps=200)
    assert problems(report)[:1] == ["grad.zero"], problems(report)
    assert report.get("grad.zero").evidence["all_parameters"] is True


def test_a_straight_through_round_is_healthy():
    model = mlp(10, 1, end=Lambda(lambda z: z + (torch.round(z) - z).detach()))
    report = own_loop(model, torch.optim.Adam(model.parameters(), 3e-3), DIABETES, F.mse_loss, steps=200)
    assert "grad.zero" not in problems(report)
    report = nndoctor.checkup(mlp(10, 1, end=Lambda(lambda z: z + (torch.round(z) - z).detach())), DIABETES, nn.MSELoss())
    assert "grad.zero" not in problems(report)


@pytest.mark.parametrize("name", ["mlp-digits/sgd-batch=4", "mlp-diabetes/sgd-batch=2"])
@pytest.mark.parametrize("seed", [1, 2])
def test_fluctuation_is_named_at_other_seeds(name, seed):
    report = zoo.run(name, seed=seed)
    assert problems(report)[:1] == ["loss.fluctuation"], problems(report)


@pytest.mark.parametrize("batch, too_large", [(32, False), (None, True)], ids=["batch=32", "full batch"])
def test_batch_too_large_is_judged_without_deep(batch, too_large):
    """The default estimate: the gradient noise scale at init in the checkup (advice, `info`)."""
    model = mlp(30, 1)
    X, y = zoo.get("mlp-cancer").build(0).train_data
    report = nndoctor.checkup(model, (X, y), nn.BCEWithLogitsLoss(), batch_size=batch or len(X))
    finding = report.get("batch.too_large")
    assert (finding is not None) == too_large, [(f.code, f.message) for f in report.findings]
    if too_large:
        assert finding.severity == "info" and finding.evidence["batch_size"] >= 10 * finding.evidence["b_simple"]
    assert "noise_scale" in report.meta["checkup"]


# ---- under every watcher: the first step's case goes through the same graph checks ----------

SCRIPT_HEAD = """
import torch
import torch.nn.functional as F
from torch import nn
import nndoctor
torch.manual_seed(0)
X = torch.randn(512, 20)
y = (X @ torch.randn(20, 5)).argmax(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 64), nn.Linear(64, 5)

    def forward(self, x):
        return OUTPUT


model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
"""
SCRIPT_LOOP = """
def train(doctor=None):
    for epoch in range(2):
        perm = torch.randperm(512)
        for i in range(0, 512, 32):
            xb, yb = X[perm[i:i + 32]], y[perm[i:i + 32]]
            out = model(xb)
            loss = LOSS
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor is not None:
                doctor.log(loss=loss.item())
"""
SEQUENCE_HEAD = """
import torch
from torch import nn
import nndoctor
torch.manual_seed(0)
tokens = torch.randint(1, 12, (512, 24))
lengths = torch.randint(2, 12, (512, 1))
tokens[torch.arange(24) >= lengths] = 0            # right-padded with 0
X, y = tokens, (tokens + tokens.roll(3, 1)) % 4 + 1
y[tokens == 0] = 0                                 # padding's tag


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(12, 16, padding_idx=0), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0]).transpose(1, 2)


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
"""
H = "F.relu(self.fc1(x))"
CASES = [  # (name, head, model output, loss in the loop, the code, the healthy twin's (output, loss))
    ("log_softmax over the batch", SCRIPT_HEAD, f"F.log_softmax(self.fc2({H}), dim=0)", "F.nll_loss(out, yb)",
     "output.softmax_wrong_dim", (f"F.log_softmax(self.fc2({H}), dim=1)", "F.nll_loss(out, yb)")),
    ("hand-written cross-entropy", SCRIPT_HEAD, f"self.fc2({H})",
     "-(F.one_hot(yb, 5) * torch.log(F.softmax(out, dim=1))).sum(1).mean()", "loss.unstable_log",
     (f"self.fc2({H})", "F.cross_entropy(out, yb, label_smoothing=0.1)")),
    ("padding counted", SEQUENCE_HEAD, None, "nn.CrossEntropyLoss()(out, yb)", "data.padding_in_loss",
     (None, "nn.CrossEntropyLoss(ignore_index=0)(out, yb)")),
]


def script(head, output, loss, main):
    body = (head.replace("OUTPUT", output) if output else head) + SCRIPT_LOOP.replace("LOSS", loss)
    return body + ("\nif __name__ == '__main__':\n    train()\n" if main == "script" else
                   "\nwith nndoctor.watch(model, opt) as doctor:\n    train(doctor)\nREPORT = doctor.report()\n")


def report_under(watcher, tmp_path, body):
    if watcher == "script":
        from nndoctor.findings import Report
        from nndoctor.integrations.script import run
        (tmp_path / "train.py").write_text(body)
        run(str(tmp_path / "train.py"), [], out=tmp_path / "report")
        return Report.from_json((tmp_path / "report" / "report.json").read_text())
    namespace: dict = {}
    exec(compile(body, "train.py", "exec"), namespace)
    return namespace["REPORT"]


@pytest.mark.parametrize("watcher", ["script", "watch"])
@pytest.mark.parametrize("name, head, output, loss, code, twin", CASES, ids=[c[0] for c in CASES])
def test_named_at_the_first_step_under_every_watcher(tmp_path, watcher, name, head, output, loss, code, twin):
    report = report_under(watcher, tmp_path, script(head, output, loss, watcher))
    assert code in problems(report), (problems(report), report.notes)
    healthy = report_under(watcher, tmp_path, script(head, *twin, watcher))
    assert code not in problems(healthy), [(f.code, f.message) for f in healthy.findings]
