"""The report's plots, drawn with matplotlib from the report alone (its series, meta and
the findings' evidence), so a report loaded from JSON draws the same page. Each function
returns an SVG (bytes) or None when the report has no data for it: a plot without data is
omitted, never drawn empty. SVG keeps text and lines crisp on HiDPI screens and under a
phone's pinch-zoom; heatmaps inside it are embedded at twice the screen resolution.

Zeros and NaN/Inf are evidence, not gaps: on a log axis they are drawn at a marked floor
(zeros) or at the top edge (NaN/Inf), and in a heatmap in colours of their own, each with
a legend entry.

Only the object-oriented API with the Agg canvas is used: no pyplot, no global backend
switch, nothing left open in the user's session.
"""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

WIDTH = 8.4          # inches: ~920 px at 110 dpi, the page's column
DPI = 220            # rasters inside the SVG (heatmaps): 2x the page's 110 dpi
SEVERITY_COLOR = {"error": "#c62828", "warning": "#d48a00", "info": "#1e88e5"}
HEALTHY_UPDATE = (1e-4, 1e-2)   # update/weight ratios around the 1e-3 rule of thumb (CS231n)
ZERO_COLOR = "#26c6da"          # exactly zero: a colour no sequential map in these plots uses
NONFINITE_COLOR = "#9e9e9e"     # NaN/Inf
FONT = 8                        # the smallest text: still legible at a phone's scale (see html.CSS)


def floats(values) -> np.ndarray:
    """JSON values to floats: non-finite numbers come back from JSON as "nan"/"inf" strings."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return np.asarray(out, dtype=float)


def trace(report, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    s = report.series.get(name)
    if not isinstance(s, dict) or not s.get("step"):
        return None
    return floats(s["step"]), floats(s["value"])


def _svg(fig: Figure | None) -> bytes | None:
    if fig is None:
        return None
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="svg", dpi=DPI, bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH, height))


def _log_axis(axis) -> None:
    """A log scale labelled in plain numbers (0.3, 1, 3) rather than 3×10⁻¹."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    low, high = axis.get_view_interval()
    if high / max(low, 1e-300) < 1e3:  # under three decades: label 1, 2, 5 of each
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if 1 <= v < 1e5 else f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_useful(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size and (v > 0).all() and v.max() / max(v.min(), 1e-300) > 30)


def layer_order(report, names: list[str], prefix_of=lambda n: n) -> list[str]:
    """`names` sorted from input to output by the modules' execution order (meta), else as given."""
    order = report.meta.get("module_order") or []
    position = {n: i for i, n in reversed(list(enumerate(order)))}

    def key(name):
        module = prefix_of(name)
        return position.get(module, len(position))
    return sorted(names, key=key)


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else param


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _typed(report, name: str, width: int = 28) -> str:
    """A layer's label: its path (shortened) with its module's type, as the findings name it."""
    from ..names import type_of
    kind = type_of(name, report.meta.get("module_types") or {})
    return _short(name, width) + (f" ({kind})" if kind else "")


# ---- training curves ---------------------------------------------------------------------
def finding_marks(report) -> list[tuple[float, str, str]]:
    """(step, label, colour) for each step where problems were first detected; the codes
    first seen at one step share one label, the most severe one's colour."""
    at: dict[int, list] = {}
    for f in report.findings:
        if f.step is None or not f.is_problem or any(f.code in codes for codes in at.values()):
            continue
        at.setdefault(int(f.step), []).append(f)
    marks = []
    for step, found in sorted(at.items()):
        worst = min(found, key=lambda f: ("error", "warning", "info").index(f.severity))
        marks.append((step, ", ".join(f.code for f in found), SEVERITY_COLOR[worst.severity]))
    return marks


LANE = 11  # points between label lanes above the loss plot


def _place_labels(fig: Figure, ax, marks) -> int:
    """Write each mark's label above the axes, in the first lane where it overlaps no other
    label (measured with the renderer, not guessed); returns the number of lanes used."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    axes_box = ax.get_window_extent(renderer)
    lanes: list[list] = []
    for step, label, color in marks:
        x = float(np.clip(step, *sorted(ax.get_xlim())))
        for lane in range(len(lanes) + 1):
            if lane == len(lanes):
                lanes.append([])
            text = ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3 + lane * LANE),
                               textcoords="offset points", ha="left", va="bottom", fontsize=FONT, color=color,
                               annotation_clip=False, gid="finding-label")
            box = text.get_window_extent(renderer)
            if box.x1 > axes_box.x1:  # past the right edge: end the label at its line instead
                text.set_horizontalalignment("right")
                box = text.get_window_extent(renderer)
            if not any(box.x0 - 4 < other.x1 and other.x0 < box.x1 + 4 for other in lanes[lane]):
                lanes[lane].append(box)
                ax.plot([x, x], [1.0, 1.0 + (3 + lane * LANE) / axes_box.height * fig.dpi / 72],
                        transform=ax.get_xaxis_transform(), color=color, lw=0.8, ls=":", clip_on=False)
                break
            text.remove()
    return len(lanes)


def loss_figure(report) -> Figure | None:
    """Train (and validation) loss, with a line where each finding was first detected. The
    finding labels sit in lanes above the plot and the legend below it: neither can cover
    the curve or each other."""
    train = trace(report, "loss")
    if train is None:
        return None
    fig = _figure(3.2)
    ax = fig.add_subplot()
    steps, values = train
    ax.plot(steps, values, color="#37474f", lw=1.2, label="train loss")
    val = trace(report, "val_loss")
    if val is not None:
        ax.plot(val[0], val[1], "o-", color="#2e7d32", ms=3, lw=1.2, label="validation loss")
    everything = np.concatenate([values] + ([val[1]] if val is not None else []))
    if _log_useful(everything):
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    bad = ~np.isfinite(values)
    if bad.any():
        ax.axvspan(steps[bad].min(), steps.max(), color="#c62828", alpha=0.08, label="loss NaN/Inf")
    marks = finding_marks(report)
    for step, _, color in marks:
        ax.axvline(step, color=color, ls="--", lw=1)
    if marks:
        ax.plot([], [], color="#555", ls="--", lw=1, label="a finding first detected")
    ax.set_xlabel("training step", fontsize=FONT + 1)
    ax.set_ylabel("loss", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, ncol=4)
    lanes = _place_labels(fig, ax, marks) if marks else 0
    caption = " (dashed lines: where each finding was first detected)" if marks else ""
    ax.set_title("Loss" + caption, fontsize=10, pad=6 + lanes * LANE + 2)
    return fig


def loss_curve(report) -> bytes | None:
    return _svg(loss_figure(report))


def _weight_params(report, prefix: str) -> list[str]:
    names = [k[len(prefix):] for k in report.series if k.startswith(prefix) and not k.endswith("/total")]
    weights = [n for n in names if not n.endswith("bias")] or names
    return layer_order(report, weights, _module_of)


def _nearest(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`values` at each grid step: the last measurement at or before it, and where the grid
    step lies inside the trace at all)."""
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    idx = np.clip(np.searchsorted(steps, grid, side="right") - 1, 0, len(steps) - 1)
    inside = (grid >= steps[0]) & (grid <= steps[-1])
    return np.where(inside, values[idx], np.nan), inside


def _legend_below(fig: Figure, ax, **kwargs) -> None:
    """A legend under the x-axis label, clear of the data whatever the figure's height."""
    below = 34 / (ax.get_position().height * fig.get_figheight() * 72)  # 34 pt: tick labels and x label
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), frameon=False, fontsize=FONT, **kwargs)


def gradient_heatmap(report) -> bytes | None:
    """log10 gradient norm per weight over time, input layer at the top; exactly-zero and
    NaN/Inf gradients in colours of their own (white is only "not measured")."""
    names = _weight_params(report, "grad_norm/")
    traces = [t for t in (trace(report, "grad_norm/" + n) for n in names)]
    if not names or any(t is None for t in traces):
        return None
    grid_steps = np.unique(np.concatenate([t[0] for t in traces]))
    if len(grid_steps) < 2:
        return None
    sampled = [_nearest(steps, values, grid_steps) for steps, values in traces]
    raw, inside = np.vstack([r for r, _ in sampled]), np.vstack([i for _, i in sampled])
    zero, nonfinite = raw == 0, inside & ~np.isfinite(raw)
    positive = np.isfinite(raw) & (raw > 0)
    if not (positive | zero | nonfinite).any():
        return None
    fig = _figure(1.2 + 0.3 * len(names))
    ax = fig.add_subplot()
    extent = (grid_steps[0], grid_steps[-1], len(names) - 0.5, -0.5)
    logs = np.where(positive, np.log10(np.where(positive, raw, 1.0)), np.nan)
    image = ax.imshow(logs, aspect="auto", cmap="magma", interpolation="nearest", extent=extent)
    handles = []
    for mask, color, label in ((zero, ZERO_COLOR, "exactly 0"), (nonfinite, NONFINITE_COLOR, "NaN/Inf")):
        if mask.any():
            ax.imshow(np.where(mask, 1.0, np.nan), aspect="auto", cmap=ListedColormap([color]),
                      interpolation="nearest", extent=extent, vmin=0, vmax=1)
            handles.append(Patch(color=color, label=label))
    ax.set_yticks(range(len(names)), [_typed(report, n) for n in names], fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlabel("training step", fontsize=FONT + 1)
    ax.set_title("Gradient norm per layer, log10 (input layer at the top; dark = vanishing)", fontsize=10)
    if np.isfinite(logs).any():
        fig.colorbar(image, ax=ax, label="log10 ‖grad‖", pad=0.01)
    if handles:
        _legend_below(fig, ax, handles=handles + [Patch(facecolor="white", edgecolor="#bbb", label="not measured")],
                      ncol=3)
    return _svg(fig)


def update_ratios(report) -> bytes | None:
    """||Δw||/||w|| per weight over time, against the healthy band around 1e-3. A ratio of
    exactly 0 (no update at all) is drawn on a marked floor below the data, NaN/Inf on the
    top edge: on a log axis both would otherwise vanish."""
    names = _weight_params(report, "update_ratio/")
    traces = [(n, trace(report, "update_ratio/" + n)) for n in names]
    traces = [(n, t) for n, t in traces if t is not None and len(t[1])]
    if not traces:
        return None
    everything = np.concatenate([t[1] for _, t in traces])
    positive = everything[np.isfinite(everything) & (everything > 0)]
    low = min(positive.min(), HEALTHY_UPDATE[0]) if positive.size else HEALTHY_UPDATE[0]
    high = max(positive.max(), HEALTHY_UPDATE[1]) if positive.size else HEALTHY_UPDATE[1]
    floor, ceiling = 10 ** (math.floor(math.log10(low)) - 1), 10 ** (math.ceil(math.log10(high)) + 1)
    fig = _figure(3.2)
    ax = fig.add_subplot()
    ax.axhspan(*HEALTHY_UPDATE, color="#2e7d32", alpha=0.08, label="healthy band (1e-4 to 1e-2)")
    ax.axhline(1e-3, color="#2e7d32", lw=1, ls=":")
    colors = _layer_colors(len(traces))
    zeros = nonfinite = False
    for (name, (steps, values)), color in zip(traces, colors):
        ok = np.isfinite(values) & (values > 0)
        ax.plot(steps[ok], values[ok], lw=1, color=color, label=_typed(report, name, 24))
        if (values == 0).any():
            zeros = True
            ax.plot(steps[values == 0], np.full(int((values == 0).sum()), floor), "v", ms=3.5, color=color,
                    clip_on=False)
        if np.isnan(values).any() or np.isinf(values).any():
            nonfinite = True
            bad = ~np.isfinite(values)
            ax.plot(steps[bad], np.full(int(bad.sum()), ceiling), "x", ms=4, color=color, clip_on=False)
    if zeros:
        ax.axhline(floor, color="#607d8b", lw=0.8, ls="--")
        ax.plot([], [], "v", color="#607d8b", ms=3.5, label="exactly 0 (drawn on the dashed floor)")
    if nonfinite:
        ax.plot([], [], "x", color="#607d8b", ms=4, label="NaN/Inf (drawn on the top edge)")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2 if zeros else low / 2, ceiling if nonfinite else high * 2)
    ax.set_xlabel("training step", fontsize=FONT + 1)
    ax.set_ylabel("‖Δw‖ / ‖w‖ per step", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3, which="major")
    _legend_below(fig, ax, ncol=3)
    ax.set_title("Update-to-weight ratio per layer (input: light, output: dark)", fontsize=10)
    return _svg(fig)


def _layer_colors(n: int):
    from matplotlib import colormaps
    cmap = colormaps["viridis_r"]
    return [cmap(0.15 + 0.8 * i / max(1, n - 1)) for i in range(n)]


def unit_health(report) -> bytes | None:
    """The share of dead (ReLU) and saturated (sigmoid/tanh) units per layer, at the end."""
    rows = []
    for prefix, label, color in (("dead/", "dead", "#6d4c41"), ("saturated/", "saturated", "#8e24aa")):
        for key in report.series:
            if key.startswith(prefix):
                t = trace(report, key)
                values = t[1][np.isfinite(t[1])] if t else []
                if len(values):
                    rows.append((key[len(prefix):], label, color, float(values[-1]), float(values.max())))
    if not rows:
        return None
    rows = [rows[i] for i in _order_index(report, [r[0] for r in rows])]
    fig = _figure(0.9 + 0.32 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y, [r[3] for r in rows], color=[r[2] for r in rows], alpha=0.85)
    ax.scatter([r[4] for r in rows], y, marker="|", s=120, color="black", label="highest during the run")
    for i, r in enumerate(rows):
        ax.annotate(f" {r[3]:.0%}", (r[3], i), va="center", fontsize=FONT)
    ax.set_yticks(y, [f"{_typed(report, r[0], 22)}: {r[1]}" for r in rows], fontsize=FONT)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of units (last measurement)")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=FONT, loc="lower right")
    ax.set_title("Dead and saturated units per layer (input layer at the top)", fontsize=10)
    return _svg(fig)


def _order_index(report, modules: list[str]) -> list[int]:
    ordered = layer_order(report, list(range(len(modules))), lambda i: modules[i])
    return ordered


def activation_histograms(report) -> bytes | None:
    """Each layer's activation histogram over time (bins on y, steps on x, colour = share)."""
    layers = [k for k in report.series if k.startswith("activation_hist/")]
    layers = layer_order(report, layers, lambda k: k[len("activation_hist/"):])
    layers = [k for k in layers if len(report.series[k].get("step", [])) >= 2]
    if not layers:
        return None
    cols = min(4, len(layers))
    nrows = math.ceil(len(layers) / cols)
    fig = _figure(0.6 + 1.9 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, layers):
        h = report.series[key]
        data = np.vstack([floats(row) for row in h["value"]]).T  # bins x snapshots
        lo, hi = floats(h.get("range", [0, 1]))
        steps = floats(h["step"])
        ax.imshow(np.where(data > 0, data, np.nan), aspect="auto", origin="lower", cmap="viridis",
                  norm=LogNorm(vmin=1e-4, vmax=1), interpolation="nearest",
                  extent=(steps[0], steps[-1], lo, hi))
        scale = h.get("scale", "linear")
        ax.set_title(_typed(report, key[len("activation_hist/"):], 22), fontsize=FONT)
        ax.tick_params(labelsize=6)
        ax.set_ylabel({"log1p": "log10(1+x)", "symlog1p": "±log10(1+|x|)"}.get(scale, "output"), fontsize=6)
    fig.suptitle("Activation histograms over training steps (colour: share of outputs, log scale)", fontsize=10,
                 y=1 + 0.3 / fig.get_figheight())
    return _svg(fig)


def lr_range_figure(report) -> Figure | None:
    """The LR range test as fastai's and Lightning's finders show it: the (smoothed) loss
    against the learning rate on a log axis, the suggestion marked on the curve, the range
    around it shaded, and the rate the run used, when known."""
    t = trace(report, "lr_range")
    if t is None:
        return None
    lrs, losses = t
    ok = np.isfinite(lrs) & np.isfinite(losses) & (lrs > 0)
    if ok.sum() < 2:
        return None
    lrs, losses = lrs[ok], losses[ok]
    fig = _figure(3.0)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="#37474f", lw=1.2, label="loss (smoothed)")
    ax.set_xscale("log")
    info = report.meta.get("lr_range") or {}
    low, high, suggestion = (_number(info.get(k)) for k in ("low", "high", "suggestion"))
    if low and high:
        ax.axvspan(low, high, color="#2e7d32", alpha=0.12, label=f"range {low:.2g} to {high:.2g}")
    if suggestion:
        at = float(np.interp(math.log(suggestion), np.log(lrs), losses))
        ax.axvline(suggestion, color="#2e7d32", lw=1, ls=":")
        ax.plot([suggestion], [at], "o", ms=7, color="#c62828", zorder=5,
                label=f"suggestion {suggestion:.2g}" + (f" ({info['rule']})" if info.get("rule") else ""))
    used = [v for v in (_number(x) for x in (report.meta.get("lr") or [])) if v]
    if used and lrs.min() <= used[0] <= lrs.max():
        ax.axvline(used[0], color="#d48a00", lw=1, ls="--", label=f"the run's rate {used[0]:.2g}")
    ax.set_xlabel("learning rate (log scale)", fontsize=FONT + 1)
    ax.set_ylabel("loss", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, ncol=4)
    ax.set_title("LR range test: loss while the rate grows each step", fontsize=10)
    return fig


def lr_range(report) -> bytes | None:
    return _svg(lr_range_figure(report))


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


# ---- deep analysis -----------------------------------------------------------------------
def landscape_line(report) -> bytes | None:
    """Loss along the straight line from the initial (α=0) to the final (α=1) weights."""
    path = (report.meta.get("analysis") or {}).get("line")
    if not path or not path.get("alpha"):
        return None
    alphas, losses = floats(path["alpha"]), floats(path["loss"])
    if np.isfinite(losses).sum() < 2:
        return None
    fig = _figure(2.6)
    ax = fig.add_subplot()
    ax.plot(alphas, losses, "o-", ms=3, color="#37474f", lw=1.2)
    for a, label in ((0.0, "initial"), (1.0, "final")):
        ax.axvline(a, color="#90a4ae", lw=1, ls=":")
        ax.annotate(label, (a, 0.97), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8,
                    color="#607d8b")
    if _log_useful(losses):
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.set_xlabel("α: weights (1-α)·initial + α·final")
    ax.set_ylabel("loss (fixed batch)")
    ax.grid(alpha=0.3)
    verdict = "monotone descent: no hill between start and end" if path.get("monotone") else \
        f"not monotone (largest rise above the chord {_fmt(path.get('barrier'))})"
    ax.set_title(f"Loss from initial to final weights — {verdict}", fontsize=10)
    return _svg(fig)


def landscape_plane(report) -> bytes | None:
    """Contours of the loss on a filter-normalized random plane through the final weights."""
    plane = (report.meta.get("analysis") or {}).get("plane")
    if not plane or not plane.get("coords"):
        return None
    coords = floats(plane["coords"])
    grid = np.vstack([floats(row) for row in plane["loss"]])
    if np.isfinite(grid).sum() < 4:
        return None
    fig = _figure(4.2)
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    shown = np.log10(np.clip(grid, max(finite.min(), 1e-12), None)) if (finite > 0).all() else grid
    contours = ax.contourf(coords, coords, np.where(np.isfinite(shown), shown, np.nanmax(shown)), levels=20,
                           cmap="viridis")
    ax.contour(coords, coords, np.where(np.isfinite(shown), shown, np.nanmax(shown)), levels=20,
               colors="white", linewidths=0.3, alpha=0.6)
    ax.plot([0], [0], marker="*", ms=12, color="#ff7043", label="final weights")
    ax.set_aspect("equal")
    ax.set_xlabel("direction 1 (filter-normalized)")
    ax.set_ylabel("direction 2")
    ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(contours, ax=ax, label="log10 loss" if shown is not grid else "loss", pad=0.01)
    ax.set_title("Loss surface around the final weights (Li et al. 2018)", fontsize=10)
    return _svg(fig)


def curvature_bars(report) -> bytes | None:
    """Top Hessian eigenvalue against the mean one and against 2/lr (the stability limit)."""
    c = (report.meta.get("analysis") or {}).get("curvature")
    top = _number((c or {}).get("top_eigenvalue"))
    if not top:
        return None
    bars = [("mean eigenvalue tr(H)/P", _number(c.get("bulk")), "#90a4ae"),
            ("top eigenvalue λmax", top, "#c62828" if _over_limit(c, top) else "#37474f"),
            ("2 / lr", _number(c.get("two_over_lr")), "#2e7d32")]
    limit = _number(c.get("stability_limit"))
    if limit and limit != _number(c.get("two_over_lr")):
        bars.append(("2(1+momentum) / lr", limit, "#66bb6a"))
    bars = [b for b in bars if b[1]]
    fig, ax = _log_bars(bars)
    note = "" if c.get("stability_limit") else " (adaptive optimizer: 2/lr is indicative only)"
    ax.set_title("Curvature: plain gradient descent is stable only while λmax < 2/lr" + note, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _log_bars(bars: list[tuple[str, float, str]]):
    """A figure of labelled horizontal bars (label, value, colour) on a log axis, values written."""
    fig = _figure(0.9 + 0.35 * len(bars))
    ax = fig.add_subplot()
    y = np.arange(len(bars))
    ax.barh(y, [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.annotate(f" {b[1]:.3g}", (b[1], i), va="center", fontsize=8)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(b[1] for b in bars) / 3, max(b[1] for b in bars) * 4)
    _log_axis(ax.xaxis)
    return fig, ax


def _over_limit(c: dict, top: float) -> bool:
    limit = _number(c.get("stability_limit"))
    return bool(limit and top > limit)


def noise_scale_bars(report) -> bytes | None:
    """The batch size against the gradient noise scale B_simple."""
    ns = (report.meta.get("analysis") or {}).get("noise_scale")
    scale, batch = _number((ns or {}).get("b_simple")), _number(report.meta.get("batch_size"))
    if not scale or not batch:
        return None
    bars = [(f"noise scale B_simple ({ns.get('at', 'final')} weights)", scale, "#90a4ae"),
            ("batch size", batch, "#37474f")]
    final = _number(ns.get("final_b_simple"))
    if final:
        bars.insert(1, ("noise scale at the final weights", final, "#b0bec5"))
    fig, ax = _log_bars(bars)
    finding = report.get("batch.too_large")
    factor = _number((finding.evidence if finding else {}).get("factor") or ns.get("factor"))
    if factor:  # the rule's threshold, as the report recorded it
        limit = factor * scale
        ax.axvline(limit, color="#c62828", ls="--", lw=1)
        ax.annotate(f"{factor:g}x noise scale: batches beyond waste examples ", (limit, 0.02),
                    xycoords=("data", "axes fraction"), ha="right", fontsize=FONT, color="#c62828")
        ax.set_xlim(right=max(ax.get_xlim()[1], 2 * limit))
    ax.set_xlabel("examples")
    ax.set_title("Batch size against the gradient noise scale (McCandlish et al. 2018)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _fmt(value) -> str:
    v = _number(value)
    return f"{v:.3g}" if v else str(value)


# name -> (title, function): the page's plots in the order they appear in "All plots"
PLOTS = {
    "loss": ("Loss", loss_curve),
    "lr_range": ("LR range test", lr_range),
    "gradients": ("Gradient norm per layer", gradient_heatmap),
    "updates": ("Update-to-weight ratio", update_ratios),
    "units": ("Dead and saturated units", unit_health),
    "activations": ("Activation histograms", activation_histograms),
    "line": ("Loss from initial to final weights", landscape_line),
    "plane": ("Loss surface", landscape_plane),
    "curvature": ("Curvature", curvature_bars),
    "noise": ("Gradient noise scale", noise_scale_bars),
}
