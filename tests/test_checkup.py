"""The pre-flight checkup (issue 4): every code fires on a real broken setup and stays silent
on healthy ones, including healthy setups that look odd; hands off the user's state; never raises."""
from __future__ import annotations

import random
import time
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nndoctor.preflight import checkup, run_checks


# ----------------------------------------------------------------------------- data

def _standardize(X):
    return (X - X.mean(0)) / X.std(0).clamp_min(1e-8)


_digits = load_digits()
DIGITS_RAW = torch.tensor(_digits.data, dtype=torch.float32)          # pixels 0..16
DIGITS_Y = torch.tensor(_digits.target)
DIGITS = _standardize(DIGITS_RAW)                                     # per feature; 3 pixels stay constant
_cancer = load_breast_cancer()
CANCER_RAW = torch.tensor(_cancer.data, dtype=torch.float32)          # feature scales from 1e-3 to 1e3
CANCER = _standardize(CANCER_RAW)
CANCER_Y = torch.tensor(_cancer.target, dtype=torch.float32).view(-1, 1)
_diabetes = load_diabetes()
DIAB = _standardize(torch.tensor(_diabetes.data, dtype=torch.float32))
DIAB_Y_RAW = torch.tensor(_diabetes.target, dtype=torch.float32).view(-1, 1)   # 25..346
DIAB_Y = _standardize(DIAB_Y_RAW)


def images(X):
    return X.view(-1, 1, 8, 8)


def rows(X):
    return X.view(-1, 8, 8)  # the 8 pixel rows of a digit as a sequence


# ----------------------------------------------------------------------------- models

def mlp(n_in=64, n_out=10, width=128, depth=3, act=nn.ReLU, final=None):
    torch.manual_seed(0)
    layers, d = [], n_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, n_out))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class Net(nn.Module):
    """An nn.Module subclass with functional activations."""
    def __init__(self, n_in=64, n_out=10, width=128, softmax=False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(n_in, width), nn.Linear(width, width), nn.Linear(width, n_out)
        self.softmax = softmax

    def forward(self, x):
        x = self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return F.softmax(x, dim=1) if self.softmax else x


def cnn(final=None, n_out=10):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, n_out)]
    return nn.Sequential(*layers, *([final] if final else []))


class GRUNet(nn.Module):
    def __init__(self, hidden=64, n_out=10, cell=nn.GRU):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.head = cell(8, hidden, batch_first=True), nn.Linear(hidden, n_out)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, n_out=10):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, n_out)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class ResidualMLP(nn.Module):
    def __init__(self, blocks=12):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(64, 64)
        self.blocks = nn.ModuleList(nn.Linear(64, 64) for _ in range(blocks))
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = x + F.relu(block(x))
        return self.out(x)


def init_all(model, fn):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fn(m)
    return model


def problems(report):
    return {f.code for f in report.findings if f.is_problem}


CE = nn.CrossEntropyLoss



# how the output and the loss are built (tracecodes): read from the loss's autograd graph

class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Normalized(nn.Module):
    """The digits Net with a softmax-family call of the user's choice at the end of forward()."""
    def __init__(self, end):
        super().__init__()
        self.net, self.end = Net(), end

    def forward(self, x):
        return self.end(self.net(x))


class StepScores(nn.Module):
    """Per-step class scores (N, T, C) of the 8 pixel rows; `end` is applied to them."""
    def __init__(self, end=None):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.head, self.end = nn.GRU(8, 32, batch_first=True), nn.Linear(32, 10), end

    def forward(self, x):
        scores = self.head(self.rnn(x)[0])
        return self.end(scores) if self.end is not None else scores


def per_step_nll(out, y):
    """Every step predicts the digit: NLL over (N*T, C)."""
    return F.nll_loss(out.reshape(-1, out.shape[-1]), y.repeat_interleave(out.shape[1]))


class AttentionPool(nn.Module):
    """Digits as 64 one-pixel steps, pooled by a softmax over time (dim=1): as long as the
    traced batch of 64 rows, yet not the batch axis."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.value, self.head = nn.Linear(1, 32), nn.Linear(32, 10)
        self.position, self.query = nn.Parameter(torch.randn(64, 32)), nn.Parameter(torch.randn(32) / 32 ** 0.5)

    def forward(self, x):
        h = torch.relu(self.value(x.view(-1, 64, 1)) + self.position)
        weights = torch.softmax(h @ self.query, dim=1)
        return self.head((weights[..., None] * h).sum(1))


def hand_ce(logits, y):
    return -(F.one_hot(y, logits.shape[1]) * torch.log(F.softmax(logits, dim=1))).sum(1).mean()


def hand_ce_stable(logits, y):
    return -(F.one_hot(y, logits.shape[1]) * F.log_softmax(logits, dim=1)).sum(1).mean()


def hand_bce(logits, y):
    p = torch.sigmoid(logits)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def tagging():
    from nndoctor.zoo.data import tagging as load
    return load().train


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.rnn, self.head = nn.Embedding(12, 16, padding_idx=0), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 5)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0]).transpose(1, 2)


def next_tokens(n=1000, length=16):
    """Teacher forcing on arithmetic sequences of tokens 1..11 (start and stride vary, so
    the next token follows from the two before it): the true tokens in, the next ones out,
    right-padded with 0 after a random length."""
    g = torch.Generator().manual_seed(0)
    start, stride = torch.randint(0, 11, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
    tokens = (start + stride * torch.arange(length)) % 11 + 1
    tokens[torch.arange(length) >= torch.randint(4, length, (n, 1), generator=g)] = 0
    return tokens[:, :-1], tokens[:, 1:]


class LanguageModel(Tagger):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 12)


# ----------------------------------------------------------------------------- healthy setups stay silent

HEALTHY = {
    "digits MLP": lambda: (mlp(), (DIGITS, DIGITS_Y), CE()),
    "digits MLP depth 8, default init": lambda: (mlp(depth=8), (DIGITS, DIGITS_Y), CE()),
    "digits MLP, tanh": lambda: (mlp(act=nn.Tanh, depth=4), (DIGITS, DIGITS_Y), CE()),
    "digits Net (functional)": lambda: (Net(), (DIGITS, DIGITS_Y), CE()),
    "digits Net, F.cross_entropy": lambda: (Net(), (DIGITS, DIGITS_Y), F.cross_entropy),
    "digits CNN, [0, 1] pixels": lambda: (cnn(), (images(DIGITS_RAW / 16), DIGITS_Y), CE()),
    "digits GRU": lambda: (GRUNet(), (rows(DIGITS), DIGITS_Y), CE()),
    "digits LSTM": lambda: (GRUNet(cell=nn.LSTM), (rows(DIGITS), DIGITS_Y), CE()),
    "digits transformer": lambda: (TinyTransformer(), (rows(DIGITS), DIGITS_Y), CE()),
    "digits residual MLP, 14 layers": lambda: (ResidualMLP(), (DIGITS, DIGITS_Y), CE()),
    "digits MLP, 14 layers with BatchNorm": lambda: (
        nn.Sequential(*[m for i in range(13) for m in (nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU())], nn.Linear(64, 10)),
        (DIGITS, DIGITS_Y), CE()),
    "digits one-hot float targets, BCEWithLogits": lambda: (mlp(), (DIGITS, F.one_hot(DIGITS_Y, 10).float()), nn.BCEWithLogitsLoss()),
    "digits MLP, LogSoftmax + NLLLoss": lambda: (mlp(final=nn.LogSoftmax(1)), (DIGITS, DIGITS_Y), nn.NLLLoss()),
    "digits MLP, zero-init output layer": lambda: (_zero_head(mlp()), (DIGITS, DIGITS_Y), CE()),
    "digits MLP, shuffled DataLoader": lambda: (mlp(), DataLoader(TensorDataset(*_sorted_digits()), batch_size=64, shuffle=True), CE()),
    "digits MLP, unsorted DataLoader without shuffle": lambda: (mlp(), DataLoader(TensorDataset(DIGITS, DIGITS_Y), batch_size=64), CE()),
    "digits MLP, sorted (X, y) tensors": lambda: (mlp(), _sorted_digits(), CE()),
    "digits MLP, no loss given": lambda: (mlp(), (DIGITS, DIGITS_Y), None),
    "cancer, BatchNorm first on raw data": lambda: (
        nn.Sequential(nn.BatchNorm1d(30), nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 1)), (CANCER_RAW, CANCER_Y), nn.BCEWithLogitsLoss()),
    "cancer MLP, BCEWithLogits": lambda: (mlp(30, 1, 64), (CANCER, CANCER_Y), nn.BCEWithLogitsLoss()),
    "cancer MLP, Sigmoid + BCELoss": lambda: (mlp(30, 1, 64, final=nn.Sigmoid()), (CANCER, CANCER_Y), nn.BCELoss()),
    "diabetes regression": lambda: (mlp(10, 1, 64), (DIAB, DIAB_Y), nn.MSELoss()),
    "diabetes regression, L1": lambda: (mlp(10, 1, 64), (DIAB, DIAB_Y), nn.L1Loss()),
    "autoencoder (narrow code on purpose)": lambda: (
        nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 64)), (DIGITS, DIGITS), nn.MSELoss()),
    # how the output and the loss are built (tracecodes)
    "digits Net, F.log_softmax(dim=1) + NLLLoss": lambda: (Normalized(partial(F.log_softmax, dim=1)), (DIGITS, DIGITS_Y), nn.NLLLoss()),
    "digits Net, x.log_softmax(-1) + F.nll_loss": lambda: (Normalized(lambda z: z.log_softmax(-1)), (DIGITS, DIGITS_Y), F.nll_loss),
    "digits Net, label smoothing 0.1": lambda: (Net(), (DIGITS, DIGITS_Y), CE(label_smoothing=0.1)),
    "digits Net, hand-written CE on log_softmax": lambda: (Net(), (DIGITS, DIGITS_Y), hand_ce_stable),
    "digits GRU, per-step LogSoftmax(dim=-1)": lambda: (StepScores(nn.LogSoftmax(dim=-1)), (rows(DIGITS), DIGITS_Y), per_step_nll),
    "digits attention pooling, softmax over 64 steps": lambda: (AttentionPool(), (DIGITS, DIGITS_Y), CE()),
    "tagger, padding ignored (ignore_index=0)": lambda: (Tagger(), tagging(), CE(ignore_index=0)),
    "language model, teacher forcing, padding ignored": lambda: (LanguageModel(), next_tokens(), CE(ignore_index=0)),
    "regression, round with a straight-through estimator": lambda: (
        mlp(10, 1, 64, final=Lambda(lambda z: z + (torch.round(z) - z).detach())), (DIAB, DIAB_Y), nn.MSELoss()),
}


def _zero_head(model):
    nn.init.zeros_(model[-1].weight)
    nn.init.zeros_(model[-1].bias)
    return model


def _sorted_digits():
    order = torch.argsort(DIGITS_Y, stable=True)
    return DIGITS[order], DIGITS_Y[order]


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_setups_are_silent(name):
    model, data, loss = HEALTHY[name]()
    report = checkup(model, data, loss)
    assert problems(report) == set(), [(f.code, f.message) for f in report.findings]
    assert not any("could not run" in n for n in report.notes), report.notes
    assert all(f.step is None for f in report.findings)


def test_constant_pixels_are_info_only():
    report = checkup(mlp(), (DIGITS, DIGITS_Y), CE())
    finding = report.get("data.constant_feature")
    assert finding is not None and finding.severity == "info" and not report.has("data.constant_feature")
    assert finding.evidence["constant"] == [0, 32, 39]


def test_log_softmax_before_cross_entropy_is_info_only():
    report = checkup(mlp(final=nn.LogSoftmax(1)), (DIGITS, DIGITS_Y), CE())
    finding = report.get("output.activation_mismatch")
    assert finding is not None and finding.severity == "info" and problems(report) == set()


# ----------------------------------------------------------------------------- each code fires

def _nan_digits():
    X = DIGITS.clone()
    X[5, 3] = float("nan")
    X[9, 0] = float("inf")
    return X


def _near_constant():
    X = DIGITS.clone()
    X[:, 0] = torch.randn(len(X), generator=torch.Generator().manual_seed(0)) * 1e-9
    return X


def _imbalanced():
    keep = (DIGITS_Y != 0) | (torch.arange(len(DIGITS_Y)) < 120)   # class 0 cut to ~10 rows
    return DIGITS[keep], DIGITS_Y[keep]


def _shuffled_labels():
    return DIGITS, DIGITS_Y[torch.randperm(len(DIGITS_Y), generator=torch.Generator().manual_seed(1))]


class LabelsOnly(Dataset):
    """A Dataset (not tensors) to show that Datasets are sampled too."""
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


SICK = [
    # (code, name, setup)
    ("data.nonfinite", "MLP", lambda: (mlp(), (_nan_digits(), DIGITS_Y), CE())),
    ("data.nonfinite", "GRU, Dataset", lambda: (GRUNet(), LabelsOnly(rows(_nan_digits()), DIGITS_Y), CE())),
    ("data.not_normalized", "CNN on 0..255 pixels", lambda: (cnn(), (images(DIGITS_RAW * 255 / 16).round(), DIGITS_Y), CE())),
    ("data.not_normalized", "MLP on raw cancer features", lambda: (mlp(30, 1, 64), (CANCER_RAW, CANCER_Y), nn.BCEWithLogitsLoss())),
    ("data.not_normalized", "Net on offset features", lambda: (Net(), (DIGITS + 1000, DIGITS_Y), CE())),
    ("data.constant_feature", "MLP, near-constant feature", lambda: (mlp(), (_near_constant(), DIGITS_Y), CE())),
    ("data.target_scale", "regression on raw targets", lambda: (mlp(10, 1, 64), (DIAB, DIAB_Y_RAW), nn.MSELoss())),
    ("data.labels_out_of_range", "MLP, labels 1..10", lambda: (mlp(), (DIGITS, DIGITS_Y + 1), CE())),
    ("data.labels_out_of_range", "GRU, 9 outputs for 10 classes", lambda: (GRUNet(n_out=9), (rows(DIGITS), DIGITS_Y), CE())),
    ("data.labels_out_of_range", "BCE, labels 1/2", lambda: (mlp(30, 1, 64), (CANCER, CANCER_Y + 1), nn.BCEWithLogitsLoss())),
    ("data.unshuffled", "sorted DataLoader without shuffle", lambda: (mlp(), DataLoader(TensorDataset(*_sorted_digits()), batch_size=64), CE())),
    ("data.class_imbalance", "MLP, class 0 nearly absent", lambda: (mlp(), _imbalanced(), CE())),
    ("data.no_signal", "MLP, labels shuffled", lambda: (mlp(), _shuffled_labels(), CE())),
    ("data.no_signal", "CNN, labels shuffled", lambda: (cnn(), (images(DIGITS), _shuffled_labels()[1]), CE())),
    ("init.symmetric", "MLP, constant init", lambda: (init_all(mlp(), lambda m: (nn.init.constant_(m.weight, 0.05), nn.init.zeros_(m.bias))), (DIGITS, DIGITS_Y), CE())),
    ("init.symmetric", "Net, zero init", lambda: (init_all(Net(), lambda m: (nn.init.zeros_(m.weight), nn.init.zeros_(m.bias))), (DIGITS, DIGITS_Y), CE())),
    ("init.symmetric", "GRU, constant init", lambda: (_constant_rnn(GRUNet()), (rows(DIGITS), DIGITS_Y), CE())),
    ("init.scale_mismatch", "MLP, std 1 weights", lambda: (init_all(mlp(depth=5), lambda m: nn.init.normal_(m.weight, std=1.0)), (DIGITS, DIGITS_Y), CE())),
    ("init.scale_mismatch", "Net, std 0.001 weights", lambda: (init_all(Net(), lambda m: nn.init.normal_(m.weight, std=1e-3)), (DIGITS, DIGITS_Y), CE())),
    ("init.scale_mismatch", "CNN, std 1 weights", lambda: (init_all(cnn(), lambda m: nn.init.normal_(m.weight, std=1.0)), (images(DIGITS), DIGITS_Y), CE())),
    ("init.scale_mismatch", "tanh MLP, std 1 weights (saturated)", lambda: (init_all(mlp(act=nn.Tanh, depth=5), lambda m: nn.init.normal_(m.weight, std=1.0)), (DIGITS, DIGITS_Y), CE())),
    ("loss.init_mismatch", "MLP, last layer x30", lambda: (_scaled_head(mlp(), 30), (DIGITS, DIGITS_Y), CE())),
    ("loss.init_mismatch", "regression, targets offset by 5", lambda: (mlp(10, 1, 64), (DIAB, DIAB_Y + 5), nn.MSELoss())),
    ("arch.too_deep", "plain 14-layer MLP", lambda: (mlp(depth=14, width=64), (DIGITS, DIGITS_Y), CE())),
    ("arch.bottleneck", "MLP with a 4-unit layer", lambda: (nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4), nn.ReLU(), nn.Linear(4, 10)), (DIGITS, DIGITS_Y), CE())),
    ("arch.bottleneck", "GRU with 4 hidden units", lambda: (GRUNet(hidden=4), (rows(DIGITS), DIGITS_Y), CE())),
    ("output.activation_mismatch", "Sequential, Softmax + CrossEntropy", lambda: (mlp(final=nn.Softmax(dim=1)), (DIGITS, DIGITS_Y), CE())),
    ("output.activation_mismatch", "Net, F.softmax + CrossEntropy", lambda: (Net(softmax=True), (DIGITS, DIGITS_Y), CE())),
    ("output.activation_mismatch", "CNN, Sigmoid + BCEWithLogits", lambda: (cnn(nn.Sigmoid(), n_out=1), (images(DIGITS), (DIGITS_Y == 0).float().view(-1, 1)), nn.BCEWithLogitsLoss())),
    ("output.activation_mismatch", "regression, ReLU head", lambda: (mlp(10, 1, 64, final=nn.ReLU()), (DIAB, DIAB_Y), nn.MSELoss())),
    ("output.activation_mismatch", "NLLLoss on raw outputs", lambda: (mlp(), (DIGITS, DIGITS_Y), nn.NLLLoss())),
    ("output.activation_mismatch", "BCELoss without sigmoid", lambda: (mlp(30, 1, 64), (CANCER, CANCER_Y), nn.BCELoss())),
    ("loss.shape_mismatch", "MSE (N, 1) vs (N,)", lambda: (mlp(10, 1, 64), (DIAB, DIAB_Y.view(-1)), nn.MSELoss())),
    ("loss.shape_mismatch", "BCEWithLogits (N, 1) vs (N,)", lambda: (Net(30, 1), (CANCER, CANCER_Y.view(-1)), nn.BCEWithLogitsLoss())),
    ("loss.shape_mismatch", "CrossEntropy with float labels", lambda: (GRUNet(), (rows(DIGITS), DIGITS_Y.float()), CE())),
    ("fit.underfitting", "Softmax + CrossEntropy cannot overfit", lambda: (mlp(final=nn.Softmax(dim=1)), (DIGITS, DIGITS_Y), CE())),
    ("fit.underfitting", "std 0.001 init cannot overfit", lambda: (init_all(mlp(depth=6), lambda m: (nn.init.normal_(m.weight, std=1e-3), nn.init.zeros_(m.bias))), (DIGITS, DIGITS_Y), CE())),
    # how the output and the loss are built (tracecodes)
    ("output.softmax_wrong_dim", "Net, F.log_softmax(dim=0) + NLLLoss", lambda: (Normalized(partial(F.log_softmax, dim=0)), (DIGITS, DIGITS_Y), nn.NLLLoss())),
    ("output.softmax_wrong_dim", "Sequential, nn.Softmax(dim=0) + CrossEntropy", lambda: (mlp(final=nn.Softmax(dim=0)), (DIGITS, DIGITS_Y), CE())),
    ("output.softmax_wrong_dim", "GRU, nn.LogSoftmax() on (N, T, C): implicit dim 0", lambda: (StepScores(nn.LogSoftmax()), (rows(DIGITS), DIGITS_Y), per_step_nll)),
    ("output.softmax_wrong_dim", "log_softmax(dim=0) inside the loss", lambda: (Net(), (DIGITS, DIGITS_Y), lambda z, y: F.nll_loss(F.log_softmax(z, 0), y))),
    ("loss.unstable_log", "hand-written cross-entropy", lambda: (Net(), (DIGITS, DIGITS_Y), hand_ce)),
    ("loss.unstable_log", "torch.log(F.softmax) in forward + NLLLoss", lambda: (Normalized(lambda z: torch.log(F.softmax(z, 1) + 1e-8)), (DIGITS, DIGITS_Y), nn.NLLLoss())),
    ("loss.unstable_log", "hand-written BCE on sigmoid outputs", lambda: (mlp(30, 1, 64), (CANCER, CANCER_Y), hand_bce)),
    ("loss.unstable_log", "CNN, nn.Softmax(dim=1) then log + gather", lambda: (cnn(nn.Softmax(dim=1)), (images(DIGITS), DIGITS_Y), lambda p, y: -p.gather(1, y[:, None]).log().mean())),
    ("data.padding_in_loss", "tagger, CrossEntropyLoss without ignore_index", lambda: (Tagger(), tagging(), CE())),
    ("data.padding_in_loss", "language model, teacher forcing, padding counted", lambda: (LanguageModel(), next_tokens(), CE())),
    ("grad.zero", "regression, torch.round on the output", lambda: (mlp(10, 1, 64, final=Lambda(torch.round)), (DIAB, DIAB_Y), nn.MSELoss())),
    ("grad.zero", "Net, sign() on the logits", lambda: (Normalized(torch.sign), (DIGITS, DIGITS_Y), CE())),
]


def _scaled_head(model, factor):
    with torch.no_grad():
        model[-1].weight.mul_(factor)
    return model


def _constant_rnn(model):
    for name, p in model.rnn.named_parameters():
        nn.init.constant_(p, 0.1)
    return model


@pytest.mark.parametrize("code, name, setup", SICK, ids=[f"{c}: {n}" for c, n, _ in SICK])
def test_code_fires(code, name, setup):
    model, data, loss = setup()
    report = checkup(model, data, loss)
    assert report.has(code), [(f.code, f.severity, f.message) for f in report.findings] + report.notes
    finding = report.get(code)
    assert finding.step is None and finding.message and finding.fix and finding.evidence


def test_constant_feature_warns_only_when_near_constant():
    report = checkup(mlp(), (_near_constant(), DIGITS_Y), CE())
    assert report.get("data.constant_feature").severity == "warning"


def test_fixes_name_the_module_and_the_line():
    f = checkup(mlp(final=nn.Softmax(dim=1)), (DIGITS, DIGITS_Y), CE()).get("output.activation_mismatch")
    assert "model[5]" in f.fix and "Softmax" in f.fix and f.where == "5"  # where: the path named_modules() gives
    f = checkup(Net(softmax=True), (DIGITS, DIGITS_Y), CE()).get("output.activation_mismatch")
    assert "Net.forward()" in f.fix
    f = checkup(mlp(), (DIGITS, DIGITS_Y + 1), CE()).get("data.labels_out_of_range")
    assert "y = y - 1" in f.fix and f.evidence["label_max"] == 10
    f = checkup(init_all(mlp(), lambda m: nn.init.constant_(m.weight, 0.05)), (DIGITS, DIGITS_Y), CE()).get("init.symmetric")
    assert "model[0].reset_parameters()" in f.fix


def test_underfitting_names_its_explanation():
    report = checkup(mlp(final=nn.Softmax(dim=1)), (DIGITS, DIGITS_Y), CE())
    f = report.get("fit.underfitting")
    assert f.severity == "error" and f.evidence["explained_by"][0] == "output.activation_mismatch"
    assert f.cause == "output.activation_mismatch"


def test_no_signal_is_not_claimed_for_a_model_that_cannot_learn():
    X, y = _shuffled_labels()
    report = checkup(mlp(final=nn.Softmax(dim=1)), (X, y), CE())
    assert report.has("fit.underfitting") and not report.has("data.no_signal")


def test_val_data_is_checked():
    report = checkup(mlp(), (DIGITS, DIGITS_Y), CE(), val_data=(_nan_digits(), DIGITS_Y + 1))
    assert {f.where for f in report.findings if f.code in ("data.nonfinite", "data.labels_out_of_range")} == \
        {"val_data", "val_data targets"}


# ----------------------------------------------------------------------------- hands off

class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("data", ["tensors", "loader"])
def test_hands_off(data):
    model = Mixed()
    model.train()
    model.body[1].eval()      # a mix of modes must survive exactly
    model.body[1].running_mean.fill_(0.3)
    train = (DIGITS, DIGITS_Y) if data == "tensors" else DataLoader(TensorDataset(DIGITS, DIGITS_Y), batch_size=32, shuffle=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(DIGITS[:8]).sum().backward()
    opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {k: v["momentum_buffer"].clone() for k, v in opt.state.items()}
    grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123); np.random.seed(123); random.seed(123)
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    threads, grad_mode = torch.get_num_threads(), torch.is_grad_enabled()

    report = checkup(model, train, CE())

    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(torch.equal(v, opt.state[k]["momentum_buffer"]) for k, v in opt_state.items())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
    assert torch.get_num_threads() == threads and torch.is_grad_enabled() == grad_mode
    assert report.meta["checkup"]["rows_examined"] > 0


def test_checkup_is_deterministic():
    a = checkup(mlp(), _shuffled_labels(), CE())
    torch.manual_seed(999)
    b = checkup(mlp(), _shuffled_labels(), CE())
    assert a.to_json() == b.to_json().replace(str(b.meta["checkup"]["seconds"]), str(a.meta["checkup"]["seconds"]))


# ----------------------------------------------------------------------------- never raises

class DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, batch):
        return self.fc(batch["x"])


class DictData(Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):
        return {"x": DIGITS[i], "y": DIGITS_Y[i]}


class Crashes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x[:, :32])  # a shape error inside forward


class ReturnsDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return {"logits": self.fc(x)}


class Custom(nn.Module):
    """A layer kind the init checks do not judge."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 10) * 0.1)

    def forward(self, x):
        return x @ self.w


def _raising_loss(out, y):
    raise RuntimeError("boom")


BROKEN = {
    "NaN data, GRU": lambda: (GRUNet(), (rows(_nan_digits()), DIGITS_Y), CE()),
    "labels out of range, GRU": lambda: (GRUNet(), (rows(DIGITS), DIGITS_Y + 5), CE()),
    "negative labels, Net": lambda: (Net(), (DIGITS, DIGITS_Y - 3), CE()),
    "shape mismatch BCE, CNN": lambda: (cnn(n_out=1), (images(DIGITS), CANCER_Y[:0].new_zeros(len(DIGITS))), nn.BCEWithLogitsLoss()),
    "wrong output width for MSE": lambda: (mlp(10, 3, 64), (DIAB, DIAB_Y), nn.MSELoss()),
    "dict inputs": lambda: (DictInput(), DictData(), CE()),
    "forward raises": lambda: (Crashes(), (DIGITS, DIGITS_Y), CE()),
    "dict output": lambda: (ReturnsDict(), (DIGITS, DIGITS_Y), CE()),
    "custom layer": lambda: (Custom(), (DIGITS, DIGITS_Y), CE()),
    "loss that raises": lambda: (mlp(), (DIGITS, DIGITS_Y), _raising_loss),
    "unknown loss": lambda: (mlp(), (DIGITS, DIGITS_Y), lambda out, y: F.cross_entropy(out, y)),
    "all NaN": lambda: (mlp(), (torch.full((50, 64), float("nan")), DIGITS_Y[:50]), CE()),
    "one row": lambda: (mlp(), (DIGITS[:1], DIGITS_Y[:1]), CE()),
    "int inputs to an Embedding": lambda: (nn.Sequential(nn.Embedding(17, 8), nn.Flatten(), nn.Linear(64 * 8, 10)), (DIGITS_RAW.long(), DIGITS_Y), CE()),
    "float64 model, float32 data": lambda: (mlp().double(), (DIGITS, DIGITS_Y), CE()),
    "lazy layers": lambda: (nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(10)), (DIGITS, DIGITS_Y), CE()),
    "no parameters": lambda: (nn.Flatten(), (DIGITS[:, :10], DIGITS_Y), CE()),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_setups_never_raise(name):
    model, data, loss = BROKEN[name]()
    report = checkup(model, data, loss)
    assert all(f.step is None for f in report.findings)
    assert not any("could not run" in n for n in report.notes), report.notes


def test_skips_are_explained_in_notes():
    assert any("(input, target)" in n for n in checkup(DictInput(), DictData(), CE()).notes)
    assert any("could not be run" in n for n in checkup(Crashes(), (DIGITS, DIGITS_Y), CE()).notes)
    assert any("Custom" in n for n in checkup(Custom(), (DIGITS, DIGITS_Y), CE()).notes)
    assert checkup(mlp(), (DIGITS, DIGITS_Y + 5), CE()).has("data.labels_out_of_range")
    assert checkup(cnn(n_out=1), (images(DIGITS), torch.zeros(len(DIGITS))), nn.BCEWithLogitsLoss()).has("loss.shape_mismatch")


def test_probes_stop_at_their_time_budget(monkeypatch):
    import nndoctor.preflight.overfit as overfit
    monkeypatch.setattr(overfit, "TIME_BUDGET", 0.0)
    report = checkup(mlp(final=nn.Softmax(dim=1)), (DIGITS, DIGITS_Y), CE())
    assert not report.get("fit.underfitting") and any("time budget" in n for n in report.notes)
    assert report.has("output.activation_mismatch")


def test_large_rows_are_sampled_within_budget():
    X = torch.rand(3000, 3, 32, 32)  # [0, 1] images: fine
    y = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    report = checkup(model, (X, y), CE())
    assert report.meta["checkup"]["rows_examined"] < 3000 and not report.has("data.not_normalized")


def test_not_data_at_all_is_a_type_error():
    with pytest.raises(TypeError):
        checkup(mlp(), "digits.csv", CE())
    with pytest.raises(TypeError):
        checkup("model", (DIGITS, DIGITS_Y), CE())


def test_run_checks_returns_findings_notes_meta():
    findings, notes, meta = run_checks(mlp(), (DIGITS, DIGITS_Y + 1), CE(), None, None)
    assert [f.code for f in findings if f.is_problem] == ["data.labels_out_of_range"]
    assert isinstance(notes, list) and "checkup" in meta


# ----------------------------------------------------------------------------- speed

def test_digits_mlp_checkup_is_fast():
    model = mlp()
    checkup(model, (DIGITS, DIGITS_Y), CE())  # warm-up: first-call costs of torch itself
    start = time.perf_counter()
    checkup(model, (DIGITS, DIGITS_Y), CE())
    seconds = time.perf_counter() - start
    print(f"checkup of the digits MLP: {seconds:.3f} s")
    assert seconds < 4  # the target is 2 s on 2 cores; margin for CI noise
