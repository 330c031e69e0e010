"""The catalogue: healthy bases and the faults mutated from them, each with the finding
codes an expert would name (root cause first). Evidence notes come from plain-PyTorch runs
at seed 0."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from . import bases as b
from . import mutations as m
from .recipe import Recipe, Scenario


def scenario(name: str, description: str, expected: tuple[str, ...], base: Recipe,
             *mutations: m.Mutation, tags: tuple[str, ...] = ()) -> Scenario:
    recipe = m.apply(base, *mutations)
    kind = "sick" if expected else "healthy"
    return Scenario(name, description, tuple(expected), recipe.build,
                    frozenset({recipe.family, kind, *tags}))


HEALTHY = [
    scenario("mlp-digits", "healthy: a 1-hidden-layer ReLU MLP with Adam on standardized digits.",
             (), b.MLP_DIGITS, tags=("demo", "quick")),
    scenario("mlp-digits/sgd-momentum", "healthy: the same MLP with SGD + momentum 0.9.",
             (), b.MLP_DIGITS_SGD, tags=("quick",)),
    scenario("mlp-digits/functional", "healthy: the MLP written with F.relu in an nn.Module subclass.",
             (), b.MLP_DIGITS, m.model(b.FunctionalMLP), tags=("quick",)),
    scenario("cnn-digits", "healthy: a two-conv CNN on 1x8x8 digit images.",
             (), b.CNN_DIGITS, tags=("demo", "quick")),
    scenario("lstm-sequence", "healthy: an LSTM remembers the sign of an early window 25+ steps back.",
             (), b.LSTM_SEQUENCE, tags=("quick",)),
    scenario("transformer-pointer", "healthy: a one-layer transformer learns to look up a pointed-to token.",
             (), b.TRANSFORMER_POINTER, tags=("quick",)),
    scenario("mlp-diabetes", "healthy: MLP regression on standardized features and targets.",
             (), b.MLP_DIABETES, tags=("demo", "quick")),
    scenario("mlp-cancer", "healthy: binary classification with BCEWithLogitsLoss.",
             (), b.MLP_CANCER, tags=("quick",)),
    scenario("mlp-rings", "healthy: a 2-hidden-layer MLP separates two concentric rings.",
             (), b.MLP_RINGS, tags=("quick",)),
    scenario("mlp-digits/batch=8", "healthy but noisy: Adam with batches of 8.",
             (), b.MLP_DIGITS, m.batch(8), tags=("quick",)),
    scenario("mlp-digits/wide-dropout=0.5", "healthy: a 512-wide net with dropout 0.5 (train loss is noisy and above val loss).",
             (), b.MLP_DIGITS, m.arch(hidden=(512,), dropout=0.5), tags=("quick",)),
    scenario("mlp-digits/batchnorm", "healthy: two hidden layers with BatchNorm.",
             (), b.MLP_DIGITS, m.arch(hidden=(128, 128), batchnorm=True), tags=("quick",)),
    scenario("mlp-digits/weight-decay=1e-4", "healthy: SGD + momentum with a mild weight decay.",
             (), b.MLP_DIGITS_SGD, m.optim(weight_decay=1e-4), tags=("quick",)),
    scenario("mlp-digits/cosine", "healthy: the user's own loop with a cosine learning-rate decay.",
             (), b.MLP_DIGITS_SGD, m.lr(0.1), m.loop(cosine=True), tags=("quick",)),
]

SICK = [
    # learning rate
    scenario("mlp-digits/lr=8", "SGD at lr=8 diverges.",
             ("lr.too_high",), b.MLP_DIGITS_SGD, m.lr(8.0), tags=("demo", "quick")),
    scenario("mlp-digits/adam-lr=1", "Adam at lr=1 on an MLP.",
             ("lr.too_high",), b.MLP_DIGITS, m.lr(1.0)),
    scenario("cnn-digits/sgd-lr=1", "SGD + momentum at lr=1 on a CNN.",
             ("lr.too_high",), b.CNN_DIGITS, m.optimizer(torch.optim.SGD, lr=1.0, momentum=0.9)),
    scenario("transformer-pointer/adam-lr=0.1", "Adam at lr=0.1 on a transformer.",
             ("lr.too_high",), b.TRANSFORMER_POINTER, m.lr(0.1)),
    scenario("mlp-digits/lr=1e-5", "SGD at lr=1e-5.",
             ("lr.too_low",), b.MLP_DIGITS_SGD, m.lr(1e-5), tags=("demo", "quick")),
    scenario("mlp-diabetes/sgd-lr=1e-4", "Plain SGD at lr=1e-4 on a regression.",
             ("lr.too_low",), b.MLP_DIABETES, m.optimizer(torch.optim.SGD, lr=1e-4)),
    # loss shape over time
    scenario("mlp-digits/momentum=0.99", "SGD with momentum 0.99.",
             ("loss.oscillation",), b.MLP_DIGITS_SGD, m.optim(momentum=0.99, lr=0.1)),
    scenario("mlp-diabetes/sgd-batch=2", "Plain SGD, batch 2, constant lr.",
             ("loss.fluctuation",), b.MLP_DIABETES, m.optimizer(torch.optim.SGD, lr=0.05), m.batch(2), m.steps(400)),
    scenario("mlp-digits/tiny-init", "Weights N(0, 0.01^2) in a 3-hidden-layer ReLU net.",
             ("init.scale_mismatch", "loss.plateau"), b.MLP_DIGITS_SGD, m.arch(hidden=(128, 128, 128)), m.init_normal(0.01)),
    scenario("mlp-digits/log-activations", "A log of ReLU activations: log(0) = -inf.",
             ("loss.nonfinite",), b.MLP_DIGITS, m.insert(2, m.Log)),
    scenario("mlp-diabetes/sqrt-preactivation", "A sqrt of a pre-activation that can be negative.",
             ("loss.nonfinite",), b.MLP_DIABETES, m.insert(1, m.Sqrt)),
    # gradients
    scenario("mlp-digits/sigmoid-8-layers", "Eight sigmoid layers with SGD.",
             ("grad.vanishing", "layers.slow_bottom"), b.MLP_DIGITS_SGD, m.arch(hidden=(128,) * 7, act=nn.Sigmoid)),
    scenario("rnn-sequence/vanilla-tanh", "A vanilla tanh RNN instead of the LSTM.",
             ("grad.vanishing",), b.LSTM_SEQUENCE, m.arch(cell="rnn")),
    scenario("mlp-digits/deep-init-std=0.3", "Eight ReLU layers with weights N(0, 0.3^2), no normalization.",
             ("init.scale_mismatch", "grad.exploding"), b.MLP_DIGITS_SGD, m.arch(hidden=(128,) * 7), m.init_normal(0.3)),
    scenario("mlp-digits/round-hidden", "torch.round after the first layer.",
             ("grad.zero",), b.MLP_DIGITS, m.insert(1, m.Round)),
    scenario("mlp-digits/sign-activation", "sign() as the activation.",
             ("grad.zero",), b.MLP_DIGITS, m.arch(act=m.Sign)),
    scenario("cnn-digits/round-conv", "Rounding after the first convolution.",
             ("grad.zero",), b.CNN_DIGITS, m.insert(1, m.Round)),
    scenario("mlp-digits/unused-layer", "A layer defined in __init__ and never called.",
             ("grad.none",), b.MLP_DIGITS, m.model(m.SkipsALayer)),
    scenario("cnn-digits/detached-features", "Features detached before the head.",
             ("grad.none",), b.CNN_DIGITS, m.insert(6, m.Detach)),
    scenario("mlp-digits/clip=0.01", "clip_grad_norm_(0.01) every step with SGD lr=5.",
             ("grad.clipped_always",), b.MLP_DIGITS_SGD, m.lr(5.0), m.loop(clip_norm=0.01)),
    # units
    scenario("mlp-digits/negative-bias", "Hidden biases at -3.",
             ("units.dead",), b.MLP_DIGITS, m.arch(hidden=(128, 128)), m.hidden_bias(-3.0)),
    scenario("mlp-digits/functional-negative-bias", "F.relu net with hidden biases at -3.",
             ("units.dead",), b.MLP_DIGITS, m.model(b.FunctionalMLP), m.hidden_bias(-3.0)),
    scenario("mlp-digits/lr-kills-relus", "SGD lr=1 kills ReLUs.",
             ("lr.too_high", "units.dead"), b.MLP_DIGITS_SGD, m.lr(1.0)),
    scenario("mlp-digits/tanh-inputs-x100", "Tanh net fed inputs x100.",
             ("data.not_normalized", "units.saturated"), b.MLP_DIGITS, m.arch(act=nn.Tanh), m.scale_inputs(100.0)),
    scenario("mlp-digits/tanh-init-std=1", "Tanh net with weights N(0,1).",
             ("init.scale_mismatch", "units.saturated"), b.MLP_DIGITS, m.arch(act=nn.Tanh, hidden=(128, 128)), m.init_normal(1.0)),
    scenario("mlp-digits/tanh-8-layers", "Eight tanh layers with SGD.",
             ("layers.slow_bottom",), b.MLP_DIGITS_SGD, m.arch(hidden=(128,) * 7, act=nn.Tanh)),
    # regularization and fit
    scenario("mlp-digits/dropout=0.9", "Dropout 0.9 on a 32-unit net.",
             ("reg.too_strong", "fit.underfitting"), b.MLP_DIGITS, m.arch(hidden=(32,), dropout=0.9)),
    scenario("mlp-digits/weight-decay=1", "Weight decay 1.0.",
             ("reg.too_strong", "fit.underfitting"), b.MLP_DIGITS_SGD, m.optim(weight_decay=1.0)),
    scenario("mlp-digits/60-rows", "60 training rows, a 512x512 net, 400 steps.",
             ("fit.overfitting",), b.MLP_DIGITS, m.subset(60), m.arch(hidden=(512, 512)), m.steps(400)),
    scenario("mlp-diabetes/40-rows", "40 training rows, a wide net, 400 steps.",
             ("fit.overfitting",), b.MLP_DIABETES, m.subset(40), m.arch(hidden=(256, 256)), m.steps(400)),
    scenario("mlp-rings/linear", "A linear model on concentric rings.",
             ("fit.underfitting",), b.MLP_RINGS, m.arch(hidden=())),
    # the user's loop
    scenario("mlp-digits/no-zero-grad", "optimizer.zero_grad() never called.",
             ("loop.missing_zero_grad",), b.MLP_DIGITS_SGD, m.loop(zero_grad=False)),
    scenario("cnn-digits/no-zero-grad", "Adam without zero_grad.",
             ("loop.missing_zero_grad",), b.CNN_DIGITS, m.loop(zero_grad=False)),
    scenario("mlp-digits/eval-mode", "Trains after model.eval(): dropout off, BatchNorm frozen.",
             ("loop.eval_mode",), b.MLP_DIGITS, m.arch(hidden=(128, 128), batchnorm=True, dropout=0.5), m.loop(train_mode=False)),
    # data
    scenario("mlp-cancer/raw-features", "Raw breast-cancer features.",
             ("data.not_normalized",), b.MLP_CANCER, m.raw_inputs()),
    scenario("mlp-diabetes/raw-features", "Raw diabetes features.",
             ("data.not_normalized",), b.MLP_DIABETES, m.raw_inputs()),
    scenario("cnn-digits/pixels-0-255", "Pixels 0..255.",
             ("data.not_normalized",), b.CNN_DIGITS, m.raw_inputs(), m.scale_inputs(16.0)),
    scenario("mlp-digits/raw-pixels-sgd", "Raw pixels 0..16 with SGD.",
             ("data.not_normalized",), b.MLP_DIGITS_SGD, m.raw_inputs()),
    scenario("mlp-digits/labels-1-10", "Labels 1..10 for 10 outputs.",
             ("data.labels_out_of_range",), b.MLP_DIGITS, m.shift_labels(1)),
    scenario("mlp-cancer/labels-pm1", "Targets -1/+1 with BCEWithLogitsLoss.",
             ("data.labels_out_of_range",), b.MLP_CANCER, m.signed_labels()),
    scenario("mlp-digits/nan-rows", "NaN in 2% of the rows.",
             ("data.nonfinite",), b.MLP_DIGITS, m.nan_rows()),
    scenario("mlp-diabetes/nan-targets", "NaN in 2% of the targets.",
             ("data.nonfinite",), b.MLP_DIABETES, m.nan_rows(in_targets=True)),
    scenario("mlp-digits/sorted-by-label", "Rows sorted by label, shuffle=False.",
             ("data.unshuffled",), b.MLP_DIGITS, m.sort_by_label()),
    scenario("mlp-diabetes/targets-x1000", "Targets x1000 + 5000.",
             ("data.target_scale",), b.MLP_DIABETES, m.affine_targets(1000.0, 5000.0)),
    scenario("mlp-diabetes/raw-targets", "Raw targets 25..346.",
             ("data.target_scale",), b.MLP_DIABETES, m.raw_targets()),
    scenario("mlp-digits/imbalanced", "Class 0 dominates.",
             ("data.class_imbalance",), b.MLP_DIGITS, m.imbalance(0, 0.03)),
    scenario("mlp-digits/shuffled-labels", "Labels shuffled.",
             ("data.no_signal",), b.MLP_DIGITS, m.shuffle_labels()),
    scenario("mlp-diabetes/shuffled-targets", "Targets shuffled.",
             ("data.no_signal",), b.MLP_DIABETES, m.shuffle_labels()),
    # model and loss
    scenario("mlp-digits/softmax-before-ce", "Softmax before CrossEntropyLoss.",
             ("output.activation_mismatch",), b.MLP_DIGITS, m.append(partial(nn.Softmax, dim=1))),
    scenario("mlp-cancer/sigmoid-before-bce-logits", "Sigmoid before BCEWithLogitsLoss.",
             ("output.activation_mismatch",), b.MLP_CANCER, m.append(nn.Sigmoid)),
    scenario("mlp-diabetes/relu-head", "ReLU on the regression head; targets are standardized.",
             ("output.activation_mismatch",), b.MLP_DIABETES, m.append(nn.ReLU)),
    scenario("mlp-diabetes/target-shape", "(N,1) output vs (N,) target with MSELoss.",
             ("loss.shape_mismatch",), b.MLP_DIABETES, m.flat_targets()),
    scenario("mlp-digits/zero-init", "All weights zero.",
             ("init.symmetric",), b.MLP_DIGITS, m.init_constant(0.0)),
    scenario("mlp-digits/constant-init", "All weights 0.05.",
             ("init.symmetric",), b.MLP_DIGITS, m.init_constant(0.05)),
    scenario("mlp-digits/wide-init-std=1", "Weights N(0,1) on a 512-wide ReLU MLP.",
             ("init.scale_mismatch",), b.MLP_DIGITS, m.arch(hidden=(512, 512)), m.init_normal(1.0)),
    scenario("mlp-digits/logits-x20", "Last layer x20.",
             ("loss.init_mismatch",), b.MLP_DIGITS, m.scale_output(20.0)),
    scenario("mlp-cancer/output-bias=10", "Output bias 10.",
             ("loss.init_mismatch",), b.MLP_CANCER, m.output_bias(10.0)),
    scenario("mlp-digits/tanh-20-layers", "20 tanh layers.",
             ("arch.too_deep",), b.MLP_DIGITS, m.arch(hidden=(64,) * 19, act=nn.Tanh)),
    scenario("mlp-digits/bottleneck=2", "A 2-unit layer.",
             ("arch.bottleneck", "fit.underfitting"), b.MLP_DIGITS, m.arch(hidden=(128, 2))),
]

SCENARIOS: list[Scenario] = HEALTHY + SICK
