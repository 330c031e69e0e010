"""Activation histograms over time (the "colorful dimension" plot): on sampled steps, each
activation layer's outputs are binned on the device with `torch.histc` into fixed bins, and
the rows move to the CPU with the other buffers at a flush. No per-step sync.

Fixed bins make the histograms comparable across steps without a pass to find the range:
sigmoid/tanh-like outputs on their own range; ReLU outputs and pre-activations on a log
scale, log10(1 + |x|) (with the sign for pre-activations), so 0.01 and 1e3 both show.
Values beyond the range land in the edge bins, so an explosion piles up there visibly.

Bounded: at most `MAX_LAYERS` layers (spread from input to output) and `MAX_SNAPSHOTS`
histograms per layer; when full, every other snapshot is dropped, so the kept ones stay
spread evenly over the whole run, and from then on histograms are only computed at the new
spacing: about 2·MAX_SNAPSHOTS per layer over any run length, each on at most
`MAX_VALUES` evenly strided outputs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .activations import SATURATING, first_tensor, kind_of, strided_sample
from .buffer import StepBuffer

BINS = 32
MAX_LAYERS = 8
MAX_SNAPSHOTS = 48
LOG_DECADES = 4.0   # log10(1 + |x|) up to 4: |x| up to ~1e4
MAX_VALUES = 4096   # outputs binned per histogram (a strided sample of larger outputs)


def value_range(module: nn.Module, kind: str) -> tuple[float, float, str]:
    """(low, high, scale) of the fixed bins for this module's outputs."""
    if kind == "saturating":
        lo, hi = SATURATING[type(module)]
        return lo, hi, "linear"
    if kind == "relu":
        return 0.0, LOG_DECADES, "log1p"
    return -LOG_DECADES, LOG_DECADES, "symlog1p"


class HistogramCollector:
    def __init__(self, names: dict[nn.Module, str]):
        layers = [(m, n, kind_of(m)) for m, n in names.items() if kind_of(m) in ("relu", "saturating")]
        if not layers:  # activations applied functionally: bin the weight layers' outputs instead
            layers = [(m, n, "weighted") for m, n in names.items() if kind_of(m) == "weighted"]
        if len(layers) > MAX_LAYERS:
            keep = np.unique(np.linspace(0, len(layers) - 1, MAX_LAYERS).round().astype(int))
            layers = [layers[i] for i in keep]
        self.layers = {n: (m, value_range(m, kind)) for m, n, kind in layers}
        self.buffer = StepBuffer()
        self.kept: dict[str, dict] = {}   # name -> {"step": [...], "value": [[fractions]], "range", "scale"}
        self.spacing = 0                  # steps between histograms; grows as the kept ones are thinned
        self._due: dict[str, int] = {}
        self._step = 0

    def modules(self):
        for name, (module, (lo, hi, scale)) in self.layers.items():
            yield module, self._hook(name, lo, hi, scale)

    def _hook(self, name: str, lo: float, hi: float, scale: str):
        def hook(mod, inputs, output):
            if not torch.is_grad_enabled() or self._step < self._due.get(name, 0):
                return
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            self._due[name] = self._step + max(1, self.spacing)
            x = strided_sample(out.detach(), MAX_VALUES).float()
            if scale == "log1p":
                x = torch.log10(1 + x.clamp(min=0))
            elif scale == "symlog1p":
                x = torch.sign(x) * torch.log10(1 + x.abs())
            x = torch.nan_to_num(x, nan=hi, posinf=hi, neginf=lo).clamp(lo, hi)
            counts = torch.histc(x, bins=BINS, min=lo, max=hi)
            self.buffer.append(self._step, (name,), counts / counts.sum().clamp(min=1))
        return hook

    def flush(self) -> None:
        for (name,), steps, rows in self.buffer.flush():
            lo, hi, scale = self.layers[name][1]
            kept = self.kept.setdefault(name, {"step": [], "value": [], "range": [lo, hi], "scale": scale})
            kept["step"].extend(int(s) for s in steps)
            kept["value"].extend(np.round(rows, 4).tolist())
            while len(kept["step"]) > MAX_SNAPSHOTS:
                kept["step"], kept["value"] = kept["step"][::2], kept["value"][::2]
                self.spacing = max(self.spacing, kept["step"][1] - kept["step"][0])

    def series(self) -> dict[str, dict]:
        """For the report: "activation_hist/<layer>" -> steps, fractions per bin, range, scale."""
        return {"activation_hist/" + n: dict(v) for n, v in self.kept.items() if v["step"]}
