"""CLI: bad input gives one clear line and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest
import torch
from torch import nn

import nndoctor


def run(*args):
    r = subprocess.run([sys.executable, "-m", "nndoctor.cli", *args], capture_output=True, text=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("args", [
    ["show", "/no/such/report.json"],
    ["show", "."],
    ["no-such-command"],
    ["show"],
])
def test_bad_input_is_one_clear_line(args):
    code, out = run(*args)
    assert code != 0 and "Traceback" not in out and len(out.splitlines()) == 1 and "nndoctor: error" in out


@pytest.mark.parametrize("content", ["not json at all", '{"a": 1}', '{"findings": [{"code": "lr.too_high"}]}',
                                     '{"findings": [{"code": "nope", "severity": "error", "message": "", "fix": ""}]}',
                                     "[1, 2]", '{"findings": 3}'])
def test_malformed_report_is_one_clear_line(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    code, out = run("show", str(path))
    assert code != 0 and "Traceback" not in out and len(out.splitlines()) == 1


def test_show_prints_a_saved_report_and_writes_html(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    X = torch.randn(256, 8)
    y = (X[:, 0] > 0).long()
    report = nndoctor.diagnose(model, (X, y), loss_fn=nn.CrossEntropyLoss(),
                               optimizer=torch.optim.SGD(model.parameters(), 50.0), steps=40, batch_size=32)
    path = tmp_path / "report.json"
    report.save_json(path)
    code, out = run("show", str(path), "--html", str(tmp_path / "page.html"))
    assert code == 0 and "lr.too_high" in out
    assert "lr.too_high" in (tmp_path / "page.html").read_text()


def test_help_reads_well():
    code, out = run("--help")
    assert code == 0 and "demo" in out and "show" in out
