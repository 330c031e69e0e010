"""The HTML report: one self-contained page (no network), every user string escaped, the
plots the report has data for (and none it has not), rebuilt from the JSON alone, bounded
in size, and it renders in a real browser without console errors."""
import functools
import json
import re
import shutil
import subprocess
import sys

import numpy as np
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


# ---- what the page shows (issue 16) ---------------------------------------------------
def mlp(hidden=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 4))


@functools.lru_cache(maxsize=None)
def lr_report():
    """A real run whose root is lr.too_high: the update ratio drops to 0 and the loss to NaN."""
    model = mlp()
    X, y = data()
    return nndoctor.diagnose(model, (X * 3, y), loss_fn=nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(model.parameters(), lr=2.0), steps=100, batch_size=32)


class Rounded(nn.Module):
    """Rounds its hidden layer: every gradient to fc1 is exactly zero (grad.zero)."""
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.round(torch.relu(self.fc1(x))))


def svg_texts(image: bytes) -> list[str]:
    """The texts of a matplotlib SVG (it writes each one as a comment beside its glyphs)."""
    return re.findall(r"<!-- (.*?) -->", image.decode())


def test_zeros_and_nan_stay_visible_on_log_axes():
    from nndoctor.report import plots
    report = lr_report()
    assert report.root.code == "lr.too_high"
    ratios = [plots.floats(v["value"]) for k, v in report.series.items() if k.startswith("update_ratio/")]
    zeros, bad = any((r == 0).any() for r in ratios), any((~np.isfinite(r)).any() for r in ratios)
    assert zeros or bad  # the evidence the plot used to drop
    texts = svg_texts(plots.update_ratios(report))
    assert ("exactly 0 (drawn on the dashed floor)" in texts) == zeros
    assert ("NaN/Inf (drawn on the top edge)" in texts) == bad
    torch.manual_seed(0)
    model = Rounded()
    X, y = data()
    rounded = nndoctor.diagnose(model, (X, y), loss_fn=nn.CrossEntropyLoss(),
                                optimizer=torch.optim.SGD(model.parameters(), lr=0.1), steps=60, batch_size=32)
    assert rounded.has("grad.zero")
    heat = svg_texts(plots.gradient_heatmap(rounded))
    assert "exactly 0" in heat and "fc1.weight (Linear)" in heat  # zero is a colour of its own, not white
    assert "exactly 0 (drawn on the dashed floor)" in svg_texts(plots.update_ratios(rounded))  # fc1 never moves


def boxes(fig):
    """Window boxes of the finding labels, the legend and the title of a drawn figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "finding-label"]
    return labels, ax.get_legend().get_window_extent(renderer), ax.title.get_window_extent(renderer)


def test_finding_labels_never_collide_and_the_caption_needs_findings():
    from nndoctor.findings import Finding
    from nndoctor.report.plots import finding_marks, loss_figure
    report = nndoctor.Report.from_json(lr_report().to_json())
    crowd = [Finding.make(code, "stress", step=step) for code, step in
             (("units.dead", 3), ("loss.oscillation", 4), ("grad.vanishing", 5), ("layers.slow_bottom", 90),
              ("fit.underfitting", 99), ("loss.plateau", 3))]
    crowded = nndoctor.Report(findings=report.findings + crowd, meta=report.meta, series=report.series)
    for r in (report, crowded):
        fig = loss_figure(r)
        labels, legend, title = boxes(fig)
        assert len(labels) == len(finding_marks(r)) >= 3
        for i, a in enumerate(labels):
            assert not a.overlaps(legend) and not a.overlaps(title)
            assert not any(a.overlaps(b) for b in labels[i + 1:])
        assert "dashed lines" in fig.axes[0].get_title()
    quiet = nndoctor.Report(findings=[f for f in report.findings if f.step is None], meta=report.meta,
                            series=report.series)
    fig = loss_figure(quiet)
    assert boxes(fig)[0] == [] and "dashed" not in fig.axes[0].get_title()


def test_code_spans_and_the_run_header(tmp_path):
    report = nndoctor.Report.from_json(lr_report().to_json())
    report.findings[0].message += " Try `lr=<0.2>` instead."
    page = render(report, tmp_path)
    assert "<code>lr=&lt;0.2&gt;</code>" in page and "`" not in re.sub(r"<style>.*?</style>", "", page)
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "Sequential" in title and "lr.too_high" in title
    run = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", page))
    assert {"Run", "When", "Model", "Optimizer", "Steps", "Device", "Versions"} <= set(run)
    assert "nndoctor.diagnose(Sequential" in run["Run"] and "SGD, lr 2" in run["Optimizer"]
    assert "torch " + torch.__version__ in run["Versions"] and "trainable parameters" in run["Model"]
    assert "cpu" in run["Device"] and re.search(r"\d{4}-\d\d-\d\dT", run["When"])
    facts = page.split("Recorded facts")[1]
    assert "<td>steps_planned</td>" in facts and '{"' not in facts  # a table, not a JSON dump


def test_the_page_names_the_script_it_watched(tmp_path):
    from nndoctor.integrations.script import run
    script = tmp_path / "train_tiny.py"
    script.write_text(
        "import sys, torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=float(sys.argv[2]))\n"
        "X = torch.randn(64, 4); y = X.sum(1, keepdim=True)\n"
        "for _ in range(30):\n    opt.zero_grad(); loss = ((model(X) - y) ** 2).mean(); loss.backward(); opt.step()\n")
    assert run(str(script), ["--lr", "0.01"], out=tmp_path / "out") == 0
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<title>nndoctor: train_tiny\.py", page)
    assert re.search(r"<tr><th>Run</th><td><code>[^<]*train_tiny\.py --lr 0\.01</code>", page)


def render(report, tmp_path) -> str:
    path = tmp_path / "page.html"
    report.save_html(path)
    return path.read_text(encoding="utf-8")


def test_find_lr_range_is_never_a_point_and_its_curve_is_shown(tmp_path):
    model = mlp()
    X, y = data()
    found = nndoctor.find_lr(model, (X, y), loss_fn=nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.1), batch_size=32)
    assert found.low < found.suggestion < found.high or found.low <= found.suggestion <= found.high
    assert found.high > found.low * 1.05  # a range, not one rate printed twice
    assert f"{found.low:.3g} to {found.high:.3g}" in str(found)
    page = render(found.report(), tmp_path)
    assert "lr_range" in plots_in(page) and "LR range test: suggestion" in page
    ax = found.plot().axes[0]
    marked = [line for line in ax.get_lines() if str(line.get_label()).startswith("suggestion")]
    assert marked and marked[0].get_xdata()[0] == pytest.approx(found.suggestion)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MEASURE = """<script>const frame = document.querySelector("iframe");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const box = i => i.closest(".plot").getBoundingClientRect();
  const out = {page: doc.documentElement.scrollWidth, view: win.innerWidth,
    plots: [...doc.querySelectorAll("figure img")].map(i => ({w: i.getBoundingClientRect().width,
      frame: box(i).width, right: box(i).right, loaded: i.complete && i.naturalWidth > 0})),
    text: parseFloat(win.getComputedStyle(doc.querySelector(".card p")).fontSize),
    run: [...doc.querySelectorAll("table.run th")].map(t => t.textContent),
    cards: doc.querySelectorAll(".card").length, code: doc.querySelectorAll(".card p code").length};
  const pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def measure(page_path, tmp_path, width: int) -> dict:
    """Layout facts of the page in a viewport `width` CSS px wide, and a screenshot of it.
    Chromium's window is at least 500 px wide, so the page sits in an iframe of that width
    (srcdoc: same origin, so the outer page can measure inside it)."""
    from html import escape, unescape
    frame = (f'<!doctype html><html><body style="margin:0"><iframe style="border:0;width:{width}px;height:2000px" '
             f'srcdoc="{escape(page_path.read_text(encoding="utf-8"))}"></iframe>{MEASURE}</body></html>')
    probe = tmp_path / f"probe-{width}.html"
    probe.write_text(frame, encoding="utf-8")
    args = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            f"--window-size={max(width, 500)},2000", "--virtual-time-budget=10000"]
    subprocess.run(args + [f"--screenshot={tmp_path / f'page-{width}.png'}", probe.as_uri()],
                   capture_output=True, timeout=120)
    dom = subprocess.run(args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(unescape(found.group(1)))


@pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium on this machine (Debian: apt-get install chromium)")
def test_page_layout_on_a_desktop_and_a_phone(tmp_path):
    page = tmp_path / "r.html"
    lr_report().save_html(page)
    desk, phone = measure(page, tmp_path, 1400), measure(page, tmp_path, 390)
    for m in (desk, phone):
        assert m["page"] <= m["view"]  # the page itself never scrolls sideways
        assert m["plots"] and all(p["loaded"] for p in m["plots"])
        assert m["run"][:1] == ["Run"] and m["cards"] == len(lr_report().findings) and m["code"] >= 1
        assert m["text"] >= 14
    assert all(p["w"] <= p["frame"] + 1 and p["w"] > 700 for p in desk["plots"])  # full column on a desktop
    assert phone["view"] == 390
    assert all(p["w"] >= 600 and p["right"] <= 390 + 1 for p in phone["plots"])  # legible width, scrolls in its frame
    assert (tmp_path / "page-1400.png").exists() and (tmp_path / "page-390.png").exists()


def test_histograms_binned_together_at_the_flush_equal_histc_of_each_layer():
    """The flush bins every layer's samples in one pass; each row must be what `torch.histc`
    gives on that layer's strided sample, out-of-range and NaN values in the edge bins."""
    from nndoctor.collect.activations import strided_sample
    from nndoctor.collect.histograms import BINS, MAX_VALUES, HistogramCollector
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    collector = HistogramCollector({m: n for n, m in model.named_modules()})
    for module, hook in collector.modules():
        module.register_forward_hook(hook)
    expected = {"1": [], "3": []}
    for step in range(3):
        collector._step = step
        x = torch.randn(128, 8) * 5 * (step + 1)
        x[0, 0] = float("nan")
        model(x)
        outputs = {"1": model[1](model[0](x)), "3": model[3](model[2](model[1](model[0](x))))}
        for name, out in outputs.items():
            lo, hi = (0.0, 4.0) if name == "1" else (-1.0, 1.0)
            v = strided_sample(out.detach(), MAX_VALUES).float()
            v = torch.log10(1 + v.clamp(min=0)) if name == "1" else v
            counts = torch.histc(torch.nan_to_num(v, nan=hi, posinf=hi, neginf=lo).clamp(lo, hi), bins=BINS, min=lo, max=hi)
            expected[name].append(counts / counts.sum())
    collector.flush()
    for name, rows in expected.items():
        assert collector.kept[name]["step"] == [0, 1, 2]
        assert torch.allclose(torch.tensor(collector.kept[name]["value"]), torch.stack(rows), atol=1e-4), name
