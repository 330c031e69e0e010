"""CLI: bad input gives one clear line and a non-zero exit, never a traceback."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.cli import main
from nndoctor.demo import agreement
from test_trackers import train
from nndoctor.findings import Finding, Report


def run(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "nndoctor.cli", *args], capture_output=True, text=True, timeout=300,
                       cwd=cwd)
    return r.returncode, (r.stdout + r.stderr).strip()


def run_split(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "nndoctor", *args], capture_output=True, text=True, timeout=300,
                       cwd=cwd)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


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


def saved_report() -> dict:
    finding = Finding.make("lr.too_high", "The loss grew at step 2.", evidence={"lr": 8.0}, where="0", step=2)
    return Report(findings=[finding], meta={"steps": 10, "model": "Sequential"}, notes=["a note"],
                  series={"loss": {"step": [0, 1], "value": [2.3, 9.9]}}).to_dict()


def set_at(report: dict, path: str, value) -> dict:
    """`path` like "findings.0.message" or "meta"."""
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = report
    for key in parents:
        target = target[key]
    target[last] = value
    return report


@pytest.mark.parametrize("path, value, named", [
    ("findings.0.message", 3, "findings[0].message must be a string, not an integer"),
    ("findings.0.message", ["a", "b"], "findings[0].message must be a string, not a list"),
    ("findings.0.fix", None, "findings[0].fix must be a string, not null"),
    ("findings.0.evidence", "big", "findings[0].evidence must be an object, not a string"),
    ("findings.0.step", "2", "findings[0].step must be an integer or null, not a string"),
    ("findings.0.where", [1], "findings[0].where[0] must be a string"),
    ("findings.0.severity", "fatal", "findings[0]: severity must be one of"),
    ("meta", [1, 2], "meta must be an object, not a list"),
    ("meta", "Sequential", "meta must be an object, not a string"),
    ("notes", 3, "notes must be a list, not an integer"),
    ("notes", ["ok", {"a": 1}], "notes[1] must be a string, not an object"),
    ("series.loss", [1, 2], "series.loss must be an object, not a list"),
    ("series.loss.value", [1.0], "series.loss has 2 steps but 1 values"),
])
def test_each_malformed_field_is_named_in_one_line(tmp_path, capsys, path, value, named):
    file = tmp_path / "r.json"
    file.write_text(json.dumps(set_at(saved_report(), path, value)))
    assert main(["show", str(file), "--html", str(tmp_path / "page.html")]) != 0
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and named in err, err
    assert not (tmp_path / "page.html").exists()


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path, capsys):
    for depth in (200, 100_000):  # 200: json reads it, the check refuses it; 100000: json itself recurses too deep
        file = tmp_path / "deep.json"
        file.write_text(json.dumps(saved_report())[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}")
        assert main(["show", str(file)]) != 0
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and "nested deeper than 64 levels" in err, err


def test_a_lone_surrogate_is_one_line(tmp_path, capsys):
    file = tmp_path / "r.json"
    file.write_text(json.dumps(saved_report()).replace("The loss grew", "\\ud800 The loss grew"))
    assert main(["show", str(file), "--html", str(tmp_path / "page.html")]) != 0
    out, err = capsys.readouterr()
    assert "findings[0].message is not valid Unicode" in err and len(err.strip().splitlines()) == 1


def test_rich_markup_in_the_report_is_shown_literally(tmp_path, capsys):
    file = tmp_path / "r.json"
    file.write_text(json.dumps(set_at(saved_report(), "meta.model", "[bold red]Net[/] [link=https://x.y]z[/link]")))
    assert main(["show", str(file)]) == 0
    assert "[bold red]Net[/] [link=https://x.y]z[/link]" in capsys.readouterr().out


def test_a_saved_report_still_loads_equal():
    report = Report.from_dict(json.loads(json.dumps(saved_report())))
    assert report.to_dict() == saved_report()


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


def test_version_and_python_m_nndoctor():
    code, out, err = run_split("--version")
    assert code == 0 and out == f"nndoctor {nndoctor.__version__}"


def test_watch_usage_shows_the_script_arguments_as_optional():
    code, out, _ = run_split("watch", "--help")
    assert code == 0 and "SCRIPT.py [ARGS ...]" in out


def test_errors_go_to_stderr():
    code, out, err = run_split("show", "/no/such/report.json")
    assert code == 1 and out == "" and err == "nndoctor: error: no such file: /no/such/report.json"


TRAIN = textwrap.dedent("""
    import pathlib, torch
    from torch import nn
    pathlib.Path("ran").write_text("yes")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X = torch.randn(64, 4); y = X.sum(1, keepdim=True)
    for _ in range(30):
        loss = nn.functional.mse_loss(model(X), y)
        opt.zero_grad(); loss.backward(); opt.step()
""")


@pytest.mark.parametrize("out, why", [("taken.txt", "it is a file, not a folder"),
                                      ("taken.txt/reports", "Not a directory")])
def test_watch_refuses_an_unwritable_out_before_the_script_runs(tmp_path, out, why):
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "taken.txt").write_text("a file")
    code, stdout, err = run_split("watch", "--out", out, "train.py", cwd=tmp_path)
    assert code == 1 and stdout == "" and why in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ran").exists()  # refused before the training, not after it


def test_watch_writes_each_run_to_a_fresh_folder_and_the_latest_to_nndoctor_report(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    for _ in range(2):
        code, out, err = run_split("watch", "train.py", cwd=tmp_path)
        assert code == 0, err
    runs = sorted((tmp_path / "nndoctor-runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("train-") for r in runs)
    assert all((r / "report.json").is_file() and (r / "report.html").is_file() for r in runs)
    latest = max(runs, key=lambda r: (r / "report.json").stat().st_mtime)
    assert (tmp_path / "nndoctor-report" / "report.json").read_text() == (latest / "report.json").read_text()
    assert Report.from_json((latest / "report.json").read_text()).meta["steps"] == 30


def test_demo_repair_honours_out(tmp_path):
    code, out, err = run_split("demo", "--repair", "--only", "mlp-digits/lr=8", "--out", str(tmp_path / "d"))
    assert code == 0, err
    before = Report.from_json((tmp_path / "d" / "mlp-digits_lr-8.before.json").read_text())
    after = Report.from_json((tmp_path / "d" / "mlp-digits_lr-8.after.json").read_text())
    assert before.has("lr.too_high") and not after.has("lr.too_high")
    assert (tmp_path / "d" / "mlp-digits_lr-8.after.html").is_file()


def test_demo_says_partly_when_only_some_expected_codes_came():
    expected = ("loss.shape_mismatch", "output.collapsed")
    assert agreement(expected, ["loss.shape_mismatch", "output.collapsed"]) == "yes"
    assert agreement(expected, ["loss.shape_mismatch"]) == "partly"
    assert agreement(expected, ["output.collapsed", "loss.shape_mismatch"]) == "partly"  # root not first
    assert agreement(expected, ["lr.too_high"]) == "no"
    assert agreement((), []) == "yes" and agreement((), ["lr.too_high"]) == "no"


# ---- compare: a healthy run and its twin with the learning rate 400x higher -----------------
def saved_run(tmp_path, name: str, lr: float, seed: int = 0) -> str:
    report = train(lr, steps=150, seed=seed)
    path = tmp_path / name
    report.save_json(path)
    return str(path)


def test_compare_names_what_changed_between_two_real_runs(tmp_path, capsys):
    from nndoctor.compare import compare
    good, bad = saved_run(tmp_path, "last_week.json", 0.1), saved_run(tmp_path, "today.json", 40.0)
    a, b = (Report.from_json(open(p).read()) for p in (good, bad))
    c = compare(a, b)
    assert [f.code for f in c.gained][0] == "lr.too_high" and c.lost == []
    assert c.parted_at is not None and c.parted_at < 20  # the batches are the same (same seed): they part at once
    assert ("lr", [0.1], [40.0]) in c.setup and not any(k.startswith("versions") for k, _, _ in c.setup)
    assert compare(a, a).gained == [] and compare(a, a).parted_at is None and compare(a, a).setup == []
    reseeded = compare(a, Report.from_json(open(saved_run(tmp_path, "seed1.json", 0.1, seed=1)).read()))
    assert reseeded.parted_at is None and reseeded.gained == []  # another seed's jitter is not a parting
    assert main(["compare", good, bad, "--html", str(tmp_path / "cmp.html")]) == 0
    out = capsys.readouterr().out
    assert "lr.too_high" in out and f"at step {c.parted_at}" in out and "[0.1] -> [40.0]" in out
    page = (tmp_path / "cmp.html").read_text()
    assert "lr.too_high" in page and "gained in today.json" in page
    assert main(["compare", bad, good]) == 0 and "lost since today.json" in capsys.readouterr().out


@pytest.mark.parametrize("second", ["/no/such.json", "bad"])
def test_compare_bad_input_is_one_line(tmp_path, capsys, second):
    (tmp_path / "bad").write_text('{"findings": 3}')
    first = tmp_path / "ok.json"
    first.write_text(json.dumps(saved_report()))
    second = str(tmp_path / "bad") if second == "bad" else second
    assert main(["compare", str(first), second]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "nndoctor: error" in err
