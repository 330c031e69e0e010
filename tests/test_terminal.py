"""The terminal view: nesting that survives wrapping, one-line findings for live printing,
notes that never restate a withdrawn claim, the "/255" advice only for 8-bit pixels,
progress only on a TTY, one naming form for modules, the one-line repr, and the import
graph that keeps findings.py at the bottom."""
import ast
import io
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.findings import Finding, Report
from nndoctor.report.terminal import finding_line, print_finding, progress, render_text

SRC = Path(nndoctor.__file__).parent


def nested_report() -> Report:
    root = Finding.make("lr.too_high", "The loss grew at step 2 (from 13.2): " + "a long explanation " * 12, step=2)
    symptom = Finding.make("grad.exploding", "The gradient norm grew from 46.6 to 2.73e+05 by step 8, " +
                           "which goes on and on " * 10, step=8)
    symptom.cause = "lr.too_high"
    return Report(findings=[root, symptom], meta={"model": "Sequential", "steps": 40, "parameters": 9610,
                                                  "optimizer": "SGD", "lr": [8.0]})


def block_lines(text: str, code: str) -> list[str]:
    """The lines of one finding's block (its header to the line before the next blank one), borders cut."""
    lines = [line.strip("│").rstrip() for line in text.splitlines() if line.startswith("│")]
    start = next(i for i, line in enumerate(lines) if line.strip().split()[1:2] == [code])
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("width", [60, 100])
def test_wrapped_lines_keep_their_indent(width):
    text = render_text(nested_report(), width=width)
    root, symptom = block_lines(text, "lr.too_high"), block_lines(text, "grad.exploding")
    assert len(root) > 4 and len(symptom) > 4  # the messages really wrap
    indent = lambda line: len(line) - len(line.lstrip())  # noqa: E731
    assert indent(symptom[0]) == indent(root[0]) + 4
    assert all(indent(line) == indent(root[0]) + 2 for line in root[1:])       # every wrapped line, not just the first
    assert all(indent(line) == indent(symptom[0]) + 2 for line in symptom[1:])
    flat = " ".join(line.strip("│ ") for line in text.splitlines())
    assert "SGD, lr 8" in flat and "40 steps" in flat  # the run's one-line summary under the verdict


def test_one_finding_on_one_line():
    f = Finding.make("lr.too_high", "The loss grew at step 2: the learning rate `8.0` is too high.", step=2,
                     where="0.weight")
    line = str(finding_line(f, {"0": "Linear"}))
    assert "\n" not in line
    assert re.search(r"error lr\.too_high at step 2: The loss grew", line)
    assert "[0.weight (Linear)]" in line and "fix: Lower the learning rate, about 10x" in line
    assert "use a tenth of it" not in line  # only the fix's first sentence
    buffer = io.StringIO()  # not a terminal: plain text, one line, no colour codes
    print_finding(f, file=buffer)
    assert buffer.getvalue().count("\n") == 1 and "\x1b[" not in buffer.getvalue()


def test_a_withdrawn_finding_is_not_restated_as_true():
    # zero-initialised weights no longer yield an update ratio (issue 14 item 9), so the run itself
    # never suspects lr.too_low there; the withdrawal's wording is checked on the finding it gets
    from nndoctor.findings import Finding
    from nndoctor.rules import withdraw_contradicted
    low = Finding.make("lr.too_low", "The largest update is 0 of the weights' norm per step (healthy is "
                       "about 1e-3): the learning rate 0.001 is too low.", step=40)
    root = Finding.make("init.symmetric", "The 32 units of layer 0 start identical.")
    notes: list[str] = []
    kept = withdraw_contradicted([root, low], notes)
    assert [f.code for f in kept] == ["init.symmetric"]
    note = next(n for n in notes if n.startswith("lr.too_low withdrawn"))
    assert "0.001 is too low" not in note and "explained by init.symmetric" in note
    assert "largest update is 0" in note  # what was seen is kept


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_255_only_for_8_bit_pixels():
    from sklearn.datasets import load_digits
    digits = load_digits()
    X16 = torch.tensor(digits.images[:512], dtype=torch.float32).unsqueeze(1)  # integers 0..16
    y = torch.tensor(digits.target[:512])
    pixels = nndoctor.checkup(small_cnn(), ((X16 * 255 / 16).round(), y), nn.CrossEntropyLoss())
    assert "/ 255" in pixels.get("data.not_normalized").fix
    counts = nndoctor.checkup(small_cnn(), (X16 * 10, y), nn.CrossEntropyLoss())  # integers 0..160: not pixels
    finding = counts.get("data.not_normalized")
    assert finding is not None and "255" not in finding.fix and "Standardize" in finding.fix


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal():
    tty, pipe = FakeTerminal(), io.StringIO()
    for stream in (tty, pipe):
        with progress("find_lr: LR range test", total=3, stream=stream) as advance:
            for _ in range(3):
                advance()
    assert "find_lr: LR range test" in tty.getvalue()
    assert pipe.getvalue() == ""
    with progress("outer", total=2, stream=FakeTerminal()) as outer:  # nested calls share one display
        with progress("inner", total=1) as inner:
            inner()
        outer()


def test_modules_are_named_with_their_type_and_where_stays_the_path():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.Linear(32, 32), nn.ReLU())
    model = nn.Sequential(OrderedDict(features=features, head=nn.Linear(32, 4)))
    with torch.no_grad():
        features[2].bias.fill_(-20.0)  # the ReLU after it is dead from the start
    X = torch.randn(512, 12)
    y = X[:, :4].argmax(1)
    report = nndoctor.diagnose(model, (X, y), loss_fn=nn.CrossEntropyLoss(),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.05), steps=200, batch_size=32)
    dead = report.get("units.dead")
    assert dead is not None and "features.3" in (dead.where if isinstance(dead.where, list) else [dead.where])
    assert "`features.3` (ReLU)" in dead.message
    assert report.meta["module_types"]["features.1"] == "BatchNorm1d"
    assert "features.3 (ReLU)" in render_text(report)
    softmax = nn.Sequential(nn.Linear(12, 4), nn.Softmax(dim=1))
    f = nndoctor.checkup(softmax, (X, y), nn.CrossEntropyLoss()).get("output.activation_mismatch")
    assert f.where == "1" and "`1` (Softmax" in f.message  # the checkup names modules the same way


def test_repr_is_one_line_and_the_notebook_view_is_the_page_content():
    report = nested_report()
    assert repr(report) == "<Report: 2 errors — root lr.too_high; 40 steps>"
    assert repr(Report()) == "<Report: healthy>"
    html = report._repr_html_()
    assert "<html" not in html and "<body" not in html and "<title" not in html
    assert html.startswith("<style>") and ".nnd " in html and 'class="nnd"' in html
    assert "Learning rate too high" in html and 'data-code="grad.exploding"' in html


def module_imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, level) of each import at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
        elif isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
    return found


def test_findings_stays_at_the_bottom_of_the_import_graph():
    assert [m for m, level in module_imports(SRC / "findings.py") if level or m.startswith("nndoctor")] == []
    for path in (SRC / "report").glob("*.py"):
        for module, level in module_imports(path):
            assert not (level == 2 and module.split(".")[0] in ("rules", "preflight", "watcher", "diagnosis")), \
                f"{path.name} imports {module}: the renderers read the report, never a rule"


def test_the_run_line_says_how_watching_began():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.randn(64, 4)
    with nndoctor.watch(model, optimizer) as doctor:
        for _ in range(20):
            optimizer.zero_grad()
            loss = ((model(X) - X.sum(1, keepdim=True)) ** 2).mean()
            loss.backward()
            optimizer.step()
            doctor.log(loss=loss)
    report = doctor.report()
    assert report.meta["call"] == "nndoctor.watch(Sequential, SGD)" and report.meta["lr"] == [0.1]
    line = render_text(report, width=200).splitlines()[2]
    assert "nndoctor.watch(Sequential, SGD) · Sequential, 49 trainable parameters · SGD, lr 0.1 · 20 steps" in line
