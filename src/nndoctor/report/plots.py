"""The report's plots, drawn with matplotlib from the report alone (its series and meta), so
a report loaded from JSON draws the same page. Each function returns a PNG (bytes) or None
when the report has no data for it: a plot without data is omitted, never drawn empty.

Only the object-oriented API with the Agg canvas is used: no pyplot, no global backend
switch, nothing left open in the user's session.
"""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..rules.curvature import NOISE_FACTOR

WIDTH = 8.4          # inches at DPI: ~920 px, the page's column
DPI = 110
SEVERITY_COLOR = {"error": "#c62828", "warning": "#d48a00", "info": "#1e88e5"}
HEALTHY_UPDATE = (1e-4, 1e-2)   # update/weight ratios around the 1e-3 rule of thumb (CS231n)


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


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
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


# ---- training curves ---------------------------------------------------------------------
def loss_curve(report) -> bytes | None:
    """Train (and validation) loss, with a marker where each finding was first detected."""
    train = trace(report, "loss")
    if train is None:
        return None
    fig = _figure(3.0)
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
    marked = set()
    for f in report.findings:
        if f.step is None or not f.is_problem or f.code in marked:
            continue
        marked.add(f.code)
        ax.axvline(f.step, color=SEVERITY_COLOR[f.severity], ls="--", lw=1)
        ax.annotate(f.code, (f.step, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color=SEVERITY_COLOR[f.severity],
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Loss (dashed lines: where each finding was first detected)", fontsize=10)
    return _png(fig)


def _weight_params(report, prefix: str) -> list[str]:
    names = [k[len(prefix):] for k in report.series if k.startswith(prefix) and not k.endswith("/total")]
    weights = [n for n in names if not n.endswith("bias")] or names
    return layer_order(report, weights, _module_of)


def gradient_heatmap(report) -> bytes | None:
    """log10 gradient norm per weight over time, input layer at the top."""
    names = _weight_params(report, "grad_norm/")
    if not names:
        return None
    traces = [trace(report, "grad_norm/" + n) for n in names]
    grid_steps = max((t[0] for t in traces), key=len)
    if len(grid_steps) < 2:
        return None
    rows = []
    for steps, values in traces:
        ok = np.isfinite(values) & (values > 0)
        logs = np.log10(np.where(ok, values, np.nan))
        rows.append(np.interp(grid_steps, steps[ok], logs[ok], left=np.nan, right=np.nan) if ok.sum() >= 2
                    else np.full(len(grid_steps), np.nan))
    data = np.vstack(rows)
    if not np.isfinite(data).any():
        return None
    fig = _figure(0.9 + 0.28 * len(names))
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(grid_steps[0], grid_steps[-1], len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)), [_short(n) for n in names], fontsize=7)
    ax.set_xlabel("training step")
    ax.set_title("Gradient norm per layer, log10 (input layer at the top; dark = vanishing)", fontsize=10)
    fig.colorbar(image, ax=ax, label="log10 ‖grad‖", pad=0.01)
    return _png(fig)


def update_ratios(report) -> bytes | None:
    """||Δw||/||w|| per weight over time, against the healthy band around 1e-3."""
    names = _weight_params(report, "update_ratio/")
    traces = [(n, trace(report, "update_ratio/" + n)) for n in names]
    traces = [(n, t) for n, t in traces if t is not None and (np.isfinite(t[1]) & (t[1] > 0)).any()]
    if not traces:
        return None
    fig = _figure(3.0)
    ax = fig.add_subplot()
    ax.axhspan(*HEALTHY_UPDATE, color="#2e7d32", alpha=0.08, label="healthy band (1e-4 to 1e-2)")
    ax.axhline(1e-3, color="#2e7d32", lw=1, ls=":")
    colors = _layer_colors(len(traces))
    for (name, (steps, values)), color in zip(traces, colors):
        ok = np.isfinite(values) & (values > 0)
        ax.plot(steps[ok], values[ok], lw=1, color=color, label=_short(name, 24))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖Δw‖ / ‖w‖ per step")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title("Update-to-weight ratio per layer (input: light, output: dark)", fontsize=10)
    return _png(fig)


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
        ax.annotate(f" {r[3]:.0%}", (r[3], i), va="center", fontsize=7)
    ax.set_yticks(y, [f"{_short(r[0], 22)} ({r[1]})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of units (last measurement)")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Dead and saturated units per layer (input layer at the top)", fontsize=10)
    return _png(fig)


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
        ax.set_title(_short(key[len("activation_hist/"):], 22), fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_ylabel({"log1p": "log10(1+x)", "symlog1p": "±log10(1+|x|)"}.get(scale, "output"), fontsize=6)
    fig.suptitle("Activation histograms over training steps (colour: share of outputs, log scale)", fontsize=10,
                 y=1 + 0.3 / fig.get_figheight())
    return _png(fig)


def lr_range(report) -> bytes | None:
    """The LR range test: loss against learning rate, with its suggestion."""
    t = trace(report, "lr_range")
    if t is None:
        return None
    lrs, losses = t
    ok = np.isfinite(lrs) & np.isfinite(losses) & (lrs > 0)
    if ok.sum() < 2:
        return None
    fig = _figure(2.8)
    ax = fig.add_subplot()
    ax.plot(lrs[ok], losses[ok], color="#37474f", lw=1.2)
    ax.set_xscale("log")
    info = report.meta.get("lr_range") or {}
    low, high, suggestion = (_number(info.get(k)) for k in ("low", "high", "suggestion"))
    if low and high:
        ax.axvspan(low, high, color="#2e7d32", alpha=0.1, label=f"usable range {low:.2g} to {high:.2g}")
    if suggestion:
        ax.axvline(suggestion, color="#2e7d32", lw=1.5, label=f"suggestion {suggestion:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if suggestion or (low and high):
        ax.legend(fontsize=8)
    ax.set_title("LR range test", fontsize=10)
    return _png(fig)


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
    return _png(fig)


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
    return _png(fig)


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
    return _png(fig)


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
    limit = NOISE_FACTOR * scale
    ax.axvline(limit, color="#c62828", ls="--", lw=1)
    ax.annotate(f"{NOISE_FACTOR:g}x noise scale: batches beyond waste examples ", (limit, 0.02),
                xycoords=("data", "axes fraction"), ha="right", fontsize=7, color="#c62828")
    ax.set_xlim(right=max(ax.get_xlim()[1], 2 * limit))
    ax.set_xlabel("examples")
    ax.set_title("Batch size against the gradient noise scale (McCandlish et al. 2018)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


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
