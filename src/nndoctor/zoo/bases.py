"""Healthy bases: model builders and the setups every fault is mutated from.

Each base is configured the way a careful practitioner would: standardized inputs,
PyTorch's default (Kaiming-uniform) init, Adam or SGD with momentum at a rate that works,
and a number of steps that reaches a good fit in about a second on one CPU core.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .recipe import Recipe


def mlp(n_in: int, n_out: int, *, hidden: tuple[int, ...] = (128,), act=nn.ReLU,
        dropout: float = 0.0, batchnorm: bool = False) -> nn.Sequential:
    """A plain stack of Linear layers with `hidden` widths, `act` after each hidden layer
    (BatchNorm before it and Dropout after it when asked)."""
    layers: list[nn.Module] = []
    sizes = [n_in, *hidden]
    for a, b in zip(sizes, sizes[1:]):
        layers.append(nn.Linear(a, b))
        if batchnorm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(act())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], n_out))
    return nn.Sequential(*layers)


def cnn(n_out: int = 10, *, channels: int = 16) -> nn.Sequential:
    """Two 3x3 convolutions and a pooling step for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(2 * channels * 4 * 4, n_out))


class FunctionalMLP(nn.Module):
    """A two-hidden-layer MLP written as a subclass calling F.relu, the common style: its
    activations are not modules, so nothing can find them by module type."""

    def __init__(self, n_in: int = 64, n_out: int = 10, *, width: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SeqClassifier(nn.Module):
    """A one-layer recurrent net that classifies a sequence from its last hidden state.

    The LSTM's forget-gate bias starts at 3 (Jozefowicz et al., 2015), so the cell keeps
    its memory by default and long-range credit assignment starts on the first step."""

    def __init__(self, n_in: int = 2, n_out: int = 2, *, hidden: int = 32, cell: str = "lstm"):
        super().__init__()
        kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = kind(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)
        if cell == "lstm":
            with torch.no_grad():
                self.rnn.bias_ih_l0[hidden:2 * hidden].fill_(3.0)  # gates are (input, forget, cell, output)
                self.rnn.bias_hh_l0[hidden:2 * hidden].zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class PointerTransformer(nn.Module):
    """Token + learned position embeddings, transformer encoder layers, and a class read
    out at position 0 (the token that names where to look)."""

    def __init__(self, vocab: int = 10, length: int = 10, *, d_model: int = 32, heads: int = 4,
                 layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(0.1 * torch.randn(length, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(h[:, 0])


MLP_DIGITS = Recipe(
    family="mlp", data=data.digits, model=partial(mlp, 64, 10),
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=1e-3), steps=200)

MLP_DIGITS_SGD = Recipe(
    family="mlp", data=data.digits, model=partial(mlp, 64, 10),
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9), steps=200)

CNN_DIGITS = Recipe(
    family="cnn", data=partial(data.digits, images=True), model=cnn,
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=2e-3), steps=150)

CNN_DIGITS_SGD = Recipe(
    family="cnn", data=partial(data.digits, images=True), model=cnn,
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9), steps=150)

LSTM_SEQUENCE = Recipe(
    family="rnn", data=data.early_majority, model=SeqClassifier,
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=1e-2), steps=250, batch_size=64)

TRANSFORMER_POINTER = Recipe(
    family="transformer", data=data.pointer, model=PointerTransformer,
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=3e-3), steps=200)

MLP_DIABETES = Recipe(
    family="mlp", data=data.diabetes, model=partial(mlp, 10, 1, hidden=(32,)),
    loss=nn.MSELoss, optimizer=partial(torch.optim.Adam, lr=3e-3), steps=150)

MLP_CANCER = Recipe(
    family="mlp", data=data.breast_cancer, model=partial(mlp, 30, 1, hidden=(32,)),
    loss=nn.BCEWithLogitsLoss, optimizer=partial(torch.optim.Adam, lr=1e-3), steps=200)

MLP_RINGS = Recipe(
    family="mlp", data=data.rings, model=partial(mlp, 2, 2, hidden=(32, 32)),
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=1e-2), steps=200)

MLP_XOR = Recipe(
    family="mlp", data=data.xor, model=partial(mlp, 2, 2, hidden=(16,)),
    loss=nn.CrossEntropyLoss, optimizer=partial(torch.optim.Adam, lr=1e-2), steps=300)


# how the output and the loss are built (tracecodes) ----------------------------------------

class Tagger(nn.Module):
    """Embedding (padding_idx=0) -> GRU -> a tag per position, returned as (N, tags, T), the
    layout `nn.CrossEntropyLoss` takes for sequences."""

    def __init__(self, vocab: int = 12, tags: int = 5, *, d_model: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model, padding_idx=data.PAD)
        self.rnn = nn.GRU(d_model, hidden, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens):
        h, _ = self.rnn(self.embed(tokens))
        return self.head(h).transpose(1, 2)


GRU_TAGGER = Recipe(
    family="rnn", data=data.tagging, model=Tagger,
    loss=partial(nn.CrossEntropyLoss, ignore_index=data.PAD),
    optimizer=partial(torch.optim.Adam, lr=3e-3), steps=150)
