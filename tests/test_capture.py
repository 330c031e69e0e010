"""The full examination wherever training runs (issue 12): the first training step's case
(model, batch, output, target, loss) captured by hooks, the pre-flight checks on it under
every watcher with the same codes as diagnose(), crash translation, live findings, fail_on."""
import os
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nndoctor
from nndoctor.collect.case import CaseCapture, Replay
from nndoctor.findings import Report
from nndoctor.integrations.script import run
from nndoctor.live import DoomedRun
from nndoctor.report.terminal import verdict

HEAD = """
import sys
import torch
import torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
X = torch.randn(512, 20)
y = (X @ torch.randn(20, 5)).argmax(1)
"""
LOOP = """
if __name__ == "__main__":
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        perm = torch.randperm(512)
        for i in range(0, 512, 32):
            idx = perm[i:i + 32]
            loss = loss_fn(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
"""
MLP = "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))\n"
NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc2(h)
"""


def dropout_net(p: float) -> str:
    return NET.replace("h = F.relu(self.fc1(x))", f"h = F.dropout(F.relu(self.fc1(x)), p={p}, training=self.training)")


HEALTHY = MLP + "loss_fn = nn.CrossEntropyLoss()\nY = y\n"
# (name, sick body, the code diagnose() names for it, the healthy twin)
BUGS = [
    ("softmax_module", "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.Softmax(dim=1))\n"
                       "loss_fn = nn.CrossEntropyLoss()\nY = y\n", "output.activation_mismatch", HEALTHY),
    ("softmax_functional", NET.replace("return self.fc2(h)", "return F.softmax(self.fc2(h), dim=1)")
     + "model = Net()\nloss_fn = F.cross_entropy\nY = y\n", "output.activation_mismatch",
     NET + "model = Net()\nloss_fn = F.cross_entropy\nY = y\n"),
    ("zero_init", MLP + "for p in model.parameters():\n    nn.init.zeros_(p)\nloss_fn = nn.CrossEntropyLoss()\nY = y\n",
     "init.symmetric", HEALTHY),
    ("sigmoid_before_softmax", "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.Sigmoid())\n"
                               "loss_fn = nn.CrossEntropyLoss()\nY = y\n", "output.activation_mismatch", HEALTHY),
    ("functional_dropout_p099", dropout_net(0.99) + "model = Net()\nloss_fn = nn.CrossEntropyLoss()\nY = y\n",
     "loss.init_mismatch", dropout_net(0.1) + "model = Net()\nloss_fn = nn.CrossEntropyLoss()\nY = y\n"),
    ("inputs_0_255", "X = (torch.rand(512, 20) * 255).round()\ny = ((X - 127.5) @ torch.randn(20, 5)).argmax(1)\n"
                     + HEALTHY, "data.not_normalized", HEALTHY),
    ("labels_1_to_C", MLP + "loss_fn = nn.CrossEntropyLoss()\nY = y + 1\n", "data.labels_out_of_range", HEALTHY),
    ("float_labels", MLP + "loss_fn = nn.CrossEntropyLoss()\nY = y.float()\n", "loss.shape_mismatch", HEALTHY),
    ("head_narrower_than_classes", "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))\n"
                                   "loss_fn = nn.CrossEntropyLoss()\nY = y\n", "data.labels_out_of_range", HEALTHY),
]


def write(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def watched(tmp_path: Path, body: str, args=(), **options) -> tuple[int, Report]:
    out = tmp_path / "report"
    status = run(str(write(tmp_path, body)), list(args), out=out, **options)
    return status, Report.from_json((out / "report.json").read_text())


def problems(report: Report) -> list[str]:
    return [f.code for f in report.findings if f.is_problem]


def diagnosed(path: Path) -> Report:
    """diagnose() on the objects the script builds (its training loop not run)."""
    g = runpy.run_path(str(path), run_name="not_main")
    optimizer = torch.optim.SGD(g["model"].parameters(), lr=0.1)
    return nndoctor.diagnose(g["model"], (g["X"], g["Y"]), loss_fn=g["loss_fn"], optimizer=optimizer,
                             steps=48, batch_size=32)


@pytest.mark.parametrize("name,sick,code", [b[:3] for b in BUGS], ids=[b[0] for b in BUGS])
def test_bug_named_at_the_first_step_under_nndoctor_watch_as_diagnose_names_it(tmp_path, name, sick, code):
    status, report = watched(tmp_path, HEAD + sick + LOOP)
    assert report.root.code == code, problems(report)
    assert report.get(code).step is None  # the pre-flight verdict on the first step's case
    assert "run.failed" not in problems(report)
    assert code in problems(diagnosed(tmp_path / "train.py"))


TWINS = sorted({b[3] for b in BUGS})


@pytest.mark.parametrize("healthy", TWINS, ids=[f"twin{i}" for i in range(len(TWINS))])
def test_healthy_twins_stay_silent(tmp_path, healthy):
    status, twin = watched(tmp_path, HEAD + healthy + LOOP)
    assert status == 0 and problems(twin) == [], problems(twin)


def test_crash_at_step_0_is_the_pitfall_with_its_real_fix(tmp_path):
    status, report = watched(tmp_path, HEAD + MLP + "loss_fn = nn.CrossEntropyLoss()\nY = y + 1\n" + LOOP)
    assert status == 1
    assert problems(report) == ["data.labels_out_of_range"]
    assert "y = y - 1" in report.root.fix
    assert not verdict(report)[0].startswith("Healthy")


def test_crash_no_pitfall_explains_keeps_run_failed_with_a_fix_that_is_not_run_the_script(tmp_path):
    body = HEAD + MLP + "loss_fn = nn.CrossEntropyLoss()\nY = y\n" + LOOP.replace(
        "opt.step()", "opt.step()\n            raise RuntimeError('disk full while saving')")
    status, report = watched(tmp_path, body)
    assert status == 1 and report.root.code == "run.failed"
    assert "run the training script" not in report.root.fix.lower()
    assert "train.py:" in report.root.fix


def test_batch_of_one_through_batchnorm_is_explained(tmp_path):
    body = HEAD + ("model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 5))\n"
                   "loss_fn = nn.CrossEntropyLoss()\nY = y\n") + LOOP.replace("range(0, 512, 32)", "range(0, 513, 32)")\
        .replace("perm[i:i + 32]", "perm[i:i + 32] if i < 512 else perm[:1]")
    status, report = watched(tmp_path, body)
    assert status == 1 and report.root.code == "run.failed"
    assert "drop_last=True" in report.root.fix


def test_early_stop_is_never_headlined_healthy(tmp_path):
    body = HEAD + HEALTHY + LOOP.replace("opt.step()", "opt.step()\n            if i == 320: raise KeyboardInterrupt")
    status, report = watched(tmp_path, body)
    assert status == 130 and problems(report) == []
    assert verdict(report)[0].startswith("Stopped early")


LOADER_LOOP = """
from torch.utils.data import DataLoader, TensorDataset
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(X, Y), batch_size=32, shuffle=SHUFFLE)
for epoch in range(3):
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""
SORTED = MLP + "loss_fn = nn.CrossEntropyLoss()\norder = y.argsort()\nX, Y = X[order], y[order]\n"
REGRESSION = "model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))\nloss_fn = nn.MSELoss()\n" \
             "Y = X[:, :1] - X[:, 1:2]\n"


@pytest.mark.parametrize("code,sick,twin", [
    ("data.unshuffled", SORTED + "SHUFFLE = False\n", SORTED + "SHUFFLE = True\n"),
    # the NaN target is in the 13th batch: the first batch alone is clean
    ("data.nonfinite", REGRESSION + "Y[400] = float('nan')\nSHUFFLE = False\n", REGRESSION + "SHUFFLE = False\n"),
], ids=["unshuffled", "nan_target_after_the_first_batch"])
def test_data_checks_read_the_dataloader_the_first_batch_came_from(tmp_path, code, sick, twin):
    """diagnose() checks the whole train_data; a script's watcher finds the DataLoader whose
    batch the model took and checks its dataset the same way, not the first batch alone."""
    status, report = watched(tmp_path, HEAD + sick + LOADER_LOOP)
    assert report.root.code == code and report.root.step is None, problems(report)
    status, healthy = watched(tmp_path, HEAD + twin + LOADER_LOOP)
    assert status == 0 and problems(healthy) == [], problems(healthy)


def test_a_loader_with_its_own_collate_fn_leaves_the_data_checks_on_the_first_batch(tmp_path):
    """Its dataset's rows need not be what the model takes (padding, tokenizing): not sampled."""
    loop = LOADER_LOOP.replace("shuffle=SHUFFLE)", "shuffle=False,\n                    collate_fn=lambda rows: torch.utils.data.default_collate(rows))")
    status, report = watched(tmp_path, HEAD + SORTED + loop)
    assert "data.unshuffled" not in problems(report)
    assert any("collates its rows with its own collate_fn" in n for n in report.notes), report.notes


def dropout_mlp(p: float) -> str:
    return (f"model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout({p}), nn.Linear(32, 5))\n"
            "loss_fn = nn.CrossEntropyLoss()\nY = y\n")


def test_dropout_too_strong_is_measured_after_the_run_as_diagnose_measures_it(tmp_path):
    """diagnose() compares the loss with dropout on and off on one batch after training; the
    script's watcher does it on the first step's batch."""
    status, report = watched(tmp_path, HEAD + dropout_mlp(0.9) + LOOP)
    assert report.root.code == "reg.too_strong", problems(report)
    assert report.root.evidence["p"] == 0.9
    status, healthy = watched(tmp_path, HEAD + dropout_mlp(0.1) + LOOP)
    assert status == 0 and problems(healthy) == [], problems(healthy)


# ---- the user's own loop, the losses as users write them ------------------------------------
def own_loop(model, loss_fn, X, Y, steps=40, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with nndoctor.watch(model, opt, **options) as doctor:
        for step in range(steps):
            idx = torch.arange(step * 16, step * 16 + 32) % len(X)
            loss = loss_fn(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return doctor.report()


def data():
    torch.manual_seed(0)
    X = torch.randn(512, 20)
    return X, (X @ torch.randn(20, 5)).argmax(1)


def hand_written_ce(out, y):
    onehot = F.one_hot(y, 5).float()
    return -(onehot * F.log_softmax(out, dim=1)).sum(dim=1).mean()


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), F.cross_entropy,
                                     lambda out, y: F.cross_entropy(out.reshape(-1, 5), y.reshape(-1)) / 2])
def test_softmax_before_cross_entropy_under_watch(loss_fn):
    X, y = data()
    torch.manual_seed(1)
    sick = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.Softmax(dim=1))
    report = own_loop(sick, loss_fn, X, y)
    assert report.root.code == "output.activation_mismatch", problems(report)
    assert "lr.too_low" not in problems(report)
    torch.manual_seed(1)
    assert problems(own_loop(nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5)), loss_fn, X, y)) == []


def test_hand_written_loss_is_replayed_from_the_traced_ops():
    X, y = data()
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    capture = CaseCapture(model)
    capture.install()
    try:
        out = model(X[:32])
        loss = hand_written_ce(out, y[:32]) / 4  # gradient accumulation's scaling is not the loss
        loss.backward()
        case = capture.case()
    finally:
        capture.finish()
    assert isinstance(case.loss_fn, Replay) and torch.equal(case.target, y[:32])
    assert torch.allclose(case.loss_fn(out.detach(), y[:32]), loss.detach() * 4)
    assert torch.allclose(case.loss_fn(out.detach()[:8], y[:8]), hand_written_ce(out.detach()[:8], y[:8]))
    zeros = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    for p in zeros.parameters():
        nn.init.zeros_(p)
    assert own_loop(zeros, hand_written_ce, X, y).root.code == "init.symmetric"
    assert problems(own_loop(model, hand_written_ce, X, y)) == []


def test_the_examination_leaves_training_bit_identical_and_the_rng_where_it_was():
    X, y = data()

    def train(watch: bool):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        doctor = nndoctor.watch(model, opt, live=False) if watch else None
        if doctor:
            doctor.attach()
        for step in range(30):
            idx = torch.randint(0, 512, (32,))
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if doctor:
            doctor.detach()
            assert doctor.checkup_meta["checkup"]["at"] == "first training step"
        return [p.detach().clone() for p in model.parameters()], torch.rand(3)

    (plain, plain_rng), (seen, seen_rng) = train(False), train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, seen)) and torch.equal(plain_rng, seen_rng)


def test_the_first_step_examination_is_quick_on_a_small_model():
    X, y = data()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    report = own_loop(model, nn.CrossEntropyLoss(), X, y, steps=5)
    assert report.meta["checkup"]["seconds"] < 1.0


# ---- live, fail_on, SIGTERM --------------------------------------------------------------------
DIVERGING = HEAD + MLP + """
opt = torch.optim.SGD(model.parameters(), lr=float(sys.argv[1]))
for step in range(200):
    idx = torch.randint(0, 512, (32,))
    loss = F.cross_entropy(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step == 150:
        print("STEP 150", file=sys.stderr, flush=True)
print("FINISHED", flush=True)
"""


def cli(tmp_path: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nndoctor.cli", "watch", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_a_finding_is_said_live_before_the_run_ends_and_fail_on_error_stops_it(tmp_path):
    path = write(tmp_path, DIVERGING)
    done = cli(tmp_path, str(path), "50")
    assert done.returncode == 0, done.stderr
    live = [line for line in done.stderr.splitlines() if line.startswith("nndoctor step") and " lr.too_high:" in line]
    assert live and done.stderr.index(live[0]) < done.stderr.index("STEP 150"), done.stderr
    assert len(live) == 1  # said once
    stopped = cli(tmp_path, "--fail-on", "error", str(path), "50")
    assert stopped.returncode == 3, stopped.stderr
    assert "FINISHED" not in stopped.stdout and "STEP 150" not in stopped.stderr
    report = Report.from_json((tmp_path / "out" / "report.json").read_text())
    assert report.has("lr.too_high") and report.meta["steps"] < 150
    healthy = cli(tmp_path, "--fail-on", "warning", str(path), "0.05")
    assert healthy.returncode == 0 and "FINISHED" in healthy.stdout, healthy.stderr


def test_fail_on_in_the_own_loop_raises_from_the_optimizer_step():
    X, y = data()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5), nn.Softmax(dim=1))
    with pytest.raises(DoomedRun) as stopped:
        own_loop(model, nn.CrossEntropyLoss(), X, y, steps=40, fail_on="error", live=False)
    assert stopped.value.finding.code == "output.activation_mismatch"
    with pytest.raises(ValueError):
        nndoctor.watch(model, fail_on="sometimes")


def test_sigterm_writes_the_report_like_ctrl_c(tmp_path):
    body = HEAD + HEALTHY + LOOP.replace("opt.step()", "opt.step()\n            if i == 256: os.kill(os.getpid(), signal.SIGTERM)")
    path = write(tmp_path, "import os, signal\n" + body)
    done = cli(tmp_path, str(path))
    assert done.returncode == 143, done.stderr
    report = Report.from_json((tmp_path / "out" / "report.json").read_text())
    assert report.meta["ended"] == "SIGTERM" and verdict(report)[0].startswith("Stopped early")


# ---- no nn.Module ----------------------------------------------------------------------------
TENSORS = """
import sys
import torch
torch.manual_seed(0)
lr = float(sys.argv[1])
X = torch.randn(512, 8)
y = (X @ torch.randn(8, 3)).argmax(1)
W1 = (torch.randn(8, 32) * 0.3).requires_grad_()
b1 = torch.zeros(32, requires_grad=True)
W2 = (torch.randn(32, 3) * 0.2).requires_grad_()
b2 = torch.zeros(3, requires_grad=True)

def model(x):
    return torch.relu(x @ W1 + b1) @ W2 + b2

for step in range(200):
    idx = torch.randint(0, 512, (64,))
    loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
    loss.backward()
    with torch.no_grad():
        for p in (W1, b1, W2, b2):
            p -= lr * p.grad
            p.grad = None
"""


def test_training_without_an_nn_module_is_watched_from_its_leaf_tensors(tmp_path):
    status, report = watched(tmp_path, TENSORS, ["0.1"])
    assert status == 0 and problems(report) == []
    assert report.meta["steps"] == 200 and report.meta["parameters"] == 8 * 32 + 32 + 32 * 3 + 3
    assert "grad_norm/W1" in report.series
    _, diverging = watched(tmp_path, TENSORS, ["50"])
    assert diverging.root.code == "lr.too_high"


# ---- Lightning --------------------------------------------------------------------------------
def test_lightning_names_softmax_before_cross_entropy_at_the_first_step_and_logs_it_live(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import Logger

    from nndoctor.integrations.lightning import DoctorCallback

    class Recording(Logger):
        def __init__(self):
            super().__init__()
            self.metrics = []

        name, version = "recording", 0

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    class Classifier(pl.LightningModule):
        def __init__(self, softmax: bool):
            super().__init__()
            self.softmax = softmax
            self.fc1, self.fc2 = nn.Linear(20, 64), nn.Linear(64, 5)

        def forward(self, x):
            out = self.fc2(F.relu(self.fc1(x)))
            return F.softmax(out, dim=1) if self.softmax else out

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    X, y = data()
    for softmax in (True, False):
        torch.manual_seed(0)
        logger, callback = Recording(), DoctorCallback(out=None, print_report=False)
        trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=logger, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32, shuffle=True)
        trainer.fit(Classifier(softmax), loader)
        if softmax:
            assert callback.report.root.code == "output.activation_mismatch"
            assert (0, {"nndoctor/output.activation_mismatch": 1.0}) in logger.metrics  # said at step 0
        else:
            assert problems(callback.report) == []
