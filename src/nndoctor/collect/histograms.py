"""Activation histograms over time (the "colorful dimension" plot): on sampled steps, a
strided sample of each activation layer's outputs is copied; at the flush the samples of all
layers are binned together on the device into fixed bins (one transform and one `index_add_`
for all, not a `histc` and its transform per layer), and move to the CPU with the other
buffers. No per-step sync.

Fixed bins make the histograms comparable across steps without a pass to find the range:
sigmoid/tanh-like outputs on their own range; ReLU outputs and pre-activations on a log
scale, log10(1 + |x|) (with the sign for pre-activations), so 0.01 and 1e3 both show.
Values beyond the range land in the edge bins, so an explosion piles up there visibly.

Bounded: at most `MAX_LAYERS` layers (spread from input to output) and `MAX_SNAPSHOTS`
histograms per layer; when full, every other snapshot is dropped, so the kept ones stay
spread evenly over the whole run, and from then on histograms are only computed at the new
spacing: about 2·MAX_SNAPSHOTS per layer over any run length, each on at most
`MAX_VALUES` evenly strided outputs; at most `SAMPLES_HELD` samples wait for a flush.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .activations import SATURATING, first_tensor, kind_of, strided_sample

BINS = 32
MAX_LAYERS = 8
MAX_SNAPSHOTS = 48
LOG_DECADES = 4.0   # log10(1 + |x|) up to 4: |x| up to ~1e4
MAX_VALUES = 4096   # outputs binned per histogram (a strided sample of larger outputs)
SAMPLES_HELD = 64   # samples held for binning at the flush (bounded memory whatever `flush_every`)


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
        self._binned: list[tuple[list[tuple[int, str]], torch.Tensor]] = []  # binned on the device, for the flush
        self.kept: dict[str, dict] = {}   # name -> {"step": [...], "value": [[fractions]], "range", "scale"}
        self.spacing = 0                  # steps between histograms; grows as the kept ones are thinned
        self._due: dict[str, int] = {}
        self._samples: list[tuple[int, str, torch.Tensor]] = []  # (step, layer, values) to bin at the flush
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
            # a copy (the output itself is freed by the backward); binned with the others at the flush
            self._samples.append((self._step, name, strided_sample(out.detach(), MAX_VALUES).to(torch.float32, copy=True)))
            if len(self._samples) >= SAMPLES_HELD:
                self._bin()
        return hook

    def _bin(self) -> None:
        """Bin the held samples, all the layers of one scale (and device) together: one transform, one
        `index_add_` into a row of bins per sample (no per-layer ops, no device sync)."""
        by_range: dict[tuple, list[tuple[int, str, torch.Tensor]]] = {}
        for step, name, x in self._samples:  # a model split over devices: each device's layers apart
            by_range.setdefault((*self.layers[name][1], x.device), []).append((step, name, x))
        self._samples = []
        for (lo, hi, scale, _), held in by_range.items():
            x = torch.cat([v for _, _, v in held])
            if scale == "log1p":
                x = torch.log10(1 + x.clamp(min=0))
            elif scale == "symlog1p":
                x = torch.sign(x) * torch.log10(1 + x.abs())
            x = torch.nan_to_num(x, nan=hi, posinf=hi, neginf=lo).clamp(lo, hi)
            bins = ((x - lo) * (BINS / (hi - lo))).long().clamp_(max=BINS - 1)  # histc's bins: [lo, hi] in BINS, hi in the last
            # each sample's first bin, made on the device (a host tensor copied there would wait for it)
            first_bin = torch.cat([torch.full((v.numel(),), i * BINS, dtype=torch.long, device=x.device)
                                   for i, (_, _, v) in enumerate(held)])
            counts = torch.zeros(len(held) * BINS, device=x.device).index_add_(0, first_bin + bins, torch.ones_like(x))
            counts = counts.view(len(held), BINS)
            self._binned.append(([(step, name) for step, name, _ in held], counts / counts.sum(1, keepdim=True).clamp(min=1)))

    def flush(self) -> None:
        self._bin()
        touched = set()
        for held, fractions in self._binned:  # one transfer per scale; a layer's samples are in step order
            for (step, name), row in zip(held, np.round(fractions.cpu().numpy().astype(np.float64), 4).tolist()):
                lo, hi, scale = self.layers[name][1]
                kept = self.kept.setdefault(name, {"step": [], "value": [], "range": [lo, hi], "scale": scale})
                kept["step"].append(step)
                kept["value"].append(row)
                touched.add(name)
        self._binned = []
        for name in touched:
            kept = self.kept[name]
            while len(kept["step"]) > MAX_SNAPSHOTS:
                kept["step"], kept["value"] = kept["step"][::2], kept["value"][::2]
                self.spacing = max(self.spacing, kept["step"][1] - kept["step"][0])

    def series(self) -> dict[str, dict]:
        """For the report: "activation_hist/<layer>" -> steps, fractions per bin, range, scale."""
        return {"activation_hist/" + n: dict(v) for n, v in self.kept.items() if v["step"]}
