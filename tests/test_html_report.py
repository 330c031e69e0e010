"""The HTML report: one self-contained page (no network), every user string escaped, the
plots the report has data for (and none it has not), rebuilt from the JSON alone, bounded
in size, and it renders in a real browser without console errors."""
import functools
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.collect.histograms import MAX_LAYERS, MAX_SNAPSHOTS

EVIL = "<img src=x onerror=alert(1)>"


def data(rows=512, features=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, features, generator=g)
    y = (X[:, :classes] + 0.3 * torch.randn(rows, classes, generator=g)).argmax(1)
    return X, y


@functools.lru_cache(maxsize=None)
def evil_report():
    """A real run of a net with a hostile module name, lr high enough for findings, deep analysis on."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(EVIL, nn.Linear(12, 32))
    model.add_module("relu", nn.ReLU())
    model.add_module("out", nn.Linear(32, 4))
    X, y = data()
    report = nndoctor.diagnose(model, (X[:400], y[:400]), loss_fn=nn.CrossEntropyLoss(),
                               optimizer=torch.optim.SGD(model.parameters(), lr=2.0), val_data=(X[400:], y[400:]),
                               steps=200, batch_size=32, deep=True)
    report.meta["script"] = EVIL  # a hostile path in meta too
    report.notes.append(f"a note about {EVIL}")
    return report


def plots_in(page: str) -> set[str]:
    return set(re.findall(r'data-plot="([a-z_]+)"', page))


def test_page_is_self_contained_and_escaped(tmp_path):
    path = tmp_path / "r.html"
    evil_report().save_html(path)
    page = path.read_text(encoding="utf-8")
    assert EVIL not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)  # nothing fetched
    assert re.findall(r'<img [^>]*src="([^"]{0,26})', page) and all(
        s.startswith("data:image/svg+xml;base64,") for s in re.findall(r'<img [^>]*src="([^"]{0,26})', page))
    assert {"loss", "gradients", "updates", "units", "activations", "line", "plane", "curvature"} <= plots_in(page)
    assert "lr_range" not in plots_in(page)  # no data, no plot


def test_lr_range_is_drawn_when_present(tmp_path):
    report = nndoctor.Report.from_json(evil_report().to_json())
    lrs = [10 ** (-5 + i / 10) for i in range(50)]
    report.series["lr_range"] = {"step": lrs, "value": [2.3 - 0.5 * (i > 20) + (i > 42) * (i - 42) for i in range(50)]}
    report.meta["lr_range"] = {"suggestion": 1e-3, "low": 1e-4, "high": 1e-2, "rule": "steepest descent"}
    path = tmp_path / "r.html"
    report.save_html(path)
    assert "lr_range" in plots_in(path.read_text(encoding="utf-8"))


def test_show_rebuilds_the_same_page_from_json(tmp_path):
    report = evil_report()
    report.save_json(tmp_path / "r.json")
    report.save_html(tmp_path / "direct.html")
    r = subprocess.run([sys.executable, "-m", "nndoctor.cli", "show", str(tmp_path / "r.json"), "--html",
                        str(tmp_path / "shown.html")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    direct = (tmp_path / "direct.html").read_text(encoding="utf-8")
    shown = (tmp_path / "shown.html").read_text(encoding="utf-8")
    assert plots_in(shown) == plots_in(direct) and EVIL not in shown


def test_histograms_are_bounded_and_a_1000_step_report_stays_small():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(12, 12), nn.Tanh())], nn.Linear(12, 4))
    X, y = data()
    report = nndoctor.diagnose(model, (X, y), loss_fn=nn.CrossEntropyLoss(),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.05), steps=1000, batch_size=16)
    hists = {k: v for k, v in report.series.items() if k.startswith("activation_hist/")}
    assert 0 < len(hists) <= MAX_LAYERS
    assert all(len(v["step"]) <= MAX_SNAPSHOTS and len(v["value"]) == len(v["step"]) for v in hists.values())
    assert max(max(v["step"]) for v in hists.values()) > 800  # the kept snapshots span the run
    size = len(report.to_json().encode())
    assert size < 2_000_000, size
    json.loads(report.to_json())  # strict JSON


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no headless Chromium on this machine (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium_without_console_errors(tmp_path):
    import numpy as np
    from PIL import Image
    page, shot = tmp_path / "r.html", tmp_path / "r.png"
    evil_report().save_html(page)
    control = tmp_path / "control.html"  # proves the console check can fail
    control.write_text('<html><body><script>console.error("boom")</script></body></html>')
    assert console_messages(control, tmp_path / "control.png")[1]
    returncode, console = console_messages(page, shot)
    assert returncode == 0 and console == []
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape == (2400, 1280, 3)
    banner = image[60:200, 150:1130]  # the verdict banner is coloured, not blank
    assert ((banner.max(2) - banner.min(2)) > 60).mean() > 0.3


def console_messages(page, shot):
    """(exit code, console and network error lines) of a headless Chromium screenshot of `page`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    r = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                        "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,2400",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    return r.returncode, [line for line in r.stderr.splitlines()
                          if ":CONSOLE" in line or "net::ERR" in line or "Failed to load resource" in line]


def test_a_malformed_saved_report_still_gives_a_page(tmp_path):
    data = json.loads(evil_report().to_json())
    data["meta"]["analysis"]["plane"] = {"coords": "not a grid", "loss": 3}
    data["series"]["grad_norm/0.weight"] = {"step": [1, 2, 3], "value": ["x", None, {}]}
    path = tmp_path / "r.html"
    nndoctor.Report.from_dict(data).save_html(path)
    page = path.read_text(encoding="utf-8")
    assert "plot plane not drawn" in page and "loss" in plots_in(page)
