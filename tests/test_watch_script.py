"""`nndoctor watch SCRIPT.py`: unmodified scripts in the usual styles, run as __main__."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nndoctor.findings import Report
from nndoctor.integrations.script import run

MANUAL_SGD = """
    import torch
    from torch import nn
    torch.manual_seed(0)
    X = torch.randn(512, 8)
    y = X @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    for step in range(200):
        idx = torch.randint(0, 512, (64,))
        loss = nn.functional.mse_loss(model(X[idx]), y[idx])
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.05)   # no torch.optim at all
                p.grad = None
"""

LBFGS_SINE = """
    import math
    import torch
    from torch import nn
    torch.manual_seed(0)
    x = torch.linspace(-math.pi, math.pi, 200).unsqueeze(1)
    y = torch.sin(x)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    for step in range(60):
        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)
    assert loss.item() < 1e-3
"""

LSTM_LM = """
    import torch
    from torch import nn
    torch.manual_seed(0)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(c) for c in text])

    class LM(nn.Module):
        def __init__(self, n, d=32):
            super().__init__()
            self.embed = nn.Embedding(n, d)
            self.lstm = nn.LSTM(d, 64, batch_first=True)
            self.head = nn.Linear(64, n)

        def forward(self, x):
            out, _ = self.lstm(self.embed(x))
            return self.head(out)

    model = LM(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(200):
        starts = torch.randint(0, len(data) - 33, (16,))
        x = torch.stack([data[s:s + 32] for s in starts])
        y = torch.stack([data[s + 1:s + 33] for s in starts])
        loss = nn.functional.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
"""

ADAMW = """
    import sys
    import torch
    from torch import nn
    torch.manual_seed(0)
    lr = float(sys.argv[1])
    X = torch.randn(1024, 20)
    y = (X[:, :5].sum(1) > 0).long() + (X[:, 5:10].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(8):
        for i in range(0, 1024, 32):
            loss = loss_fn(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
"""


def script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def watched(tmp_path: Path, body: str, args=(), **options) -> tuple[int, Report]:
    out = tmp_path / "report"
    status = run(str(script(tmp_path, body)), list(args), out=out, **options)
    report = Report.from_json((out / "report.json").read_text())
    assert (out / "report.html").read_text().lower().startswith("<!doctype html")
    return status, report


def problems(report: Report) -> list[str]:
    return [f.code for f in report.findings if f.is_problem]


def test_manual_sgd_without_torch_optim(tmp_path):
    status, report = watched(tmp_path, MANUAL_SGD)
    assert status == 0
    assert report.meta["steps"] == 200 and report.meta["losses_logged"] == 200
    assert report.meta["optimizer"].startswith("none")
    assert "update_ratio/0.weight" in report.series  # measured from the weights between backward passes
    assert problems(report) == []


def test_lbfgs_closure(tmp_path):
    status, report = watched(tmp_path, LBFGS_SINE)
    assert status == 0
    assert report.meta["optimizer"] == "LBFGS"
    assert report.meta["steps"] == 60 and report.meta["losses_logged"] == 60
    loss = report.series["loss"]["value"]
    assert loss[-1] < loss[0] / 100  # the loss at the start of each step, the one LBFGS returns
    assert problems(report) == []


def test_lstm_language_model_with_clipping(tmp_path):
    status, report = watched(tmp_path, LSTM_LM)
    assert status == 0 and report.meta["model"] == "LM" and report.meta["steps"] == 200
    assert problems(report) == []


def test_adamw_learning_rate_far_too_high_is_named(tmp_path):
    status, report = watched(tmp_path, ADAMW, args=["1.0"])
    assert status == 0
    assert report.findings[0].code == "lr.too_high"


def test_healthy_script_stays_silent(tmp_path):
    status, report = watched(tmp_path, ADAMW, args=["1e-3"])
    assert status == 0 and report.meta["steps"] == 256
    assert problems(report) == []


def test_script_runs_as_python_would_run_it(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    cwd = os.getcwd()
    argv, path0 = list(sys.argv), sys.path[0]
    status, _ = watched(tmp_path, """
        import os, sys, json
        import helper                          # a sibling module
        assert __name__ == "__main__"
        json.dump({"file": __file__, "argv": sys.argv, "cwd": os.getcwd(), "value": helper.VALUE},
                  open(os.path.join(os.path.dirname(__file__), "seen.json"), "w"))
        """, args=["--epochs", "3"])
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert status == 0
    assert seen == {"file": str(tmp_path / "train.py"), "argv": [str(tmp_path / "train.py"), "--epochs", "3"],
                    "cwd": cwd, "value": 42}
    assert (sys.argv, sys.path[0], os.getcwd()) == (argv, path0, cwd)


def global_hooks():
    from torch.nn.modules import module
    from torch.optim import optimizer
    return (len(module._global_forward_pre_hooks), len(module._global_forward_hooks),
            len(optimizer._global_optimizer_pre_hooks), len(optimizer._global_optimizer_post_hooks),
            torch.autograd.backward, torch.distributed.destroy_process_group, torch.amp.GradScaler.scale)


@pytest.mark.parametrize("ending, status", [("raise ValueError('bad batch')", 1), ("raise KeyboardInterrupt", 130),
                                            ("sys.exit(3)", 3), ("sys.exit(0)", 0)])
def test_exit_status_kept_and_report_written_after_an_early_end(tmp_path, capsys, ending, status):
    before = global_hooks()
    body = textwrap.dedent(MANUAL_SGD).replace("for step in range(200):", "import sys\nfor step in range(60):")
    got, report = watched(tmp_path, body + f"    if step == 40:\n        {ending}\n")
    assert got == status
    assert report.meta["steps"] == 41
    err = capsys.readouterr().err
    if status in (1, 130):
        assert "Traceback (most recent call last)" in err and str(tmp_path / "train.py") in err
        assert "nndoctor" not in err  # the script's own traceback, without our frames
        assert any("stopped early" in n for n in report.notes)
    assert global_hooks() == before  # every global hook removed, backward restored


def test_no_training_seen_is_said(tmp_path):
    status, report = watched(tmp_path, "print('hello')\n")
    assert status == 0
    assert problems(report) == ["run.failed"]


def test_cli_keeps_the_exit_status_and_names_a_missing_script(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
    path = script(tmp_path, MANUAL_SGD.replace("range(200)", "range(30)") + "\n    raise SystemExit(4)\n")
    done = subprocess.run([sys.executable, "-m", "nndoctor.cli", "watch", "--out", str(tmp_path / "out"), str(path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 4, done.stderr
    assert "Report written to" in done.stdout and (tmp_path / "out" / "report.json").exists()
    missing = subprocess.run([sys.executable, "-m", "nndoctor.cli", "watch", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [f"nndoctor: error: no such file: {tmp_path / 'nope.py'}"]


def test_watching_changes_no_number_of_the_training(tmp_path):
    body = ADAMW + "\n    torch.save(model.state_dict(), sys.argv[2])\n"
    path = script(tmp_path, body)
    import runpy
    argv = sys.argv
    try:
        sys.argv = [str(path), "1e-2", str(tmp_path / "plain.pt")]
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert run(str(path), ["1e-2", str(tmp_path / "watched.pt")], out=tmp_path / "report") == 0
    plain, watched_ = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "watched.pt")
    assert all(torch.equal(plain[k], watched_[k]) for k in plain)


def test_two_optimizers_the_first_to_step_is_watched_with_its_own_loss(tmp_path):
    status, report = watched(tmp_path, """
        import torch
        from torch import nn
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
        D = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
        bce = nn.BCEWithLogitsLoss()
        for step in range(60):
            real, fake = torch.randn(64, 2) * 0.5 + 2, G(torch.randn(64, 4))
            d_loss = bce(D(real), torch.ones(64, 1)) + bce(D(fake.detach()), torch.zeros(64, 1))
            opt_d.zero_grad(); d_loss.backward(); opt_d.step()
            g_loss = bce(D(fake), torch.ones(64, 1)) * 100   # far from d_loss: a mix-up would show
            opt_g.zero_grad(); g_loss.backward(); opt_g.step()
        """)
    assert status == 0 and report.meta["parameters"] == 2 * 32 + 32 + 32 + 1  # D's
    assert max(report.series["loss"]["value"]) < 2  # D's loss (~1.4), never G's (~100x larger)
    assert any("only the first optimizer" in n for n in report.notes)


def test_modules_called_separately_are_watched_together(tmp_path):
    status, report = watched(tmp_path, """
        import torch
        from torch import nn
        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        decoder = nn.Linear(16, 8)
        opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], 1e-2)
        X = torch.randn(256, 8)
        for step in range(100):
            loss = nn.functional.mse_loss(decoder(encoder(X)), X)
            opt.zero_grad(); loss.backward(); opt.step()
        """)
    assert status == 0
    assert {"grad_norm/encoder.0.weight", "grad_norm/decoder.weight"} <= set(report.series)


def test_amp_with_grad_scaler_is_judged_unscaled(tmp_path):
    status, report = watched(tmp_path, """
        import torch
        from torch import nn
        torch.manual_seed(0)
        X = torch.randn(1024, 20)
        y = (X[:, :5].sum(1) > 0).long()
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)   # the first steps overflow: skipped
        for step in range(150):
            i = (step % 32) * 32
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        """)
    assert status == 0
    assert 100 < report.meta["steps"] < 150  # the skipped steps never reached the optimizer
    assert max(report.series["loss"]["value"]) < 5  # scaled by 2**30 the loss would be ~1e9
    assert max(report.series["grad_norm/total"]["value"]) < 100
    assert problems(report) == []


@pytest.mark.parametrize("body", [ADAMW, MANUAL_SGD], ids=["torch.optim", "hand-written update"])
def test_the_first_step_capture_leaves_the_torch_function_stack(tmp_path, body):
    """The capture of the first step is a TorchFunctionMode: once the step is examined, no torch
    call of the script may pass through it. The examination runs inside the first backward,
    where torch has taken the mode off its stack, so it leaves at the next forward instead."""
    body = body.replace("    import torch\n", "    import torch\n    from torch.overrides import _get_current_function_mode_stack\n", 1)
    loop = "for i in range(0, 1024, 32):" if body.count("for i in range") else "for step in range(200):"
    marker = loop + "\n            modes = len(_get_current_function_mode_stack())" if "for i" in loop else \
        loop + "\n        modes = len(_get_current_function_mode_stack())"
    body = body.replace(loop, marker, 1) + "\n    assert modes == 0, modes\n"
    status, report = watched(tmp_path, body, args=["1e-3"])
    assert status == 0 and report.meta["steps"] > 100
