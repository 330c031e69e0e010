"""Setups written from scratch, outside the zoo, in the style users write them: each one once
got a wrong verdict (a false alarm or the wrong root cause) and is kept here so it stays right."""
import numpy as np
import pytest
import torch
from sklearn import datasets
from torch import nn

import nndoctor


def split(X, y, standardize=True, regression=False):
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    n = int(0.8 * len(X))
    X = X.astype(np.float32)
    if standardize:
        train = X[order[:n]]
        X = ((X - train.mean(0)) / train.std(0).clip(1e-8)).astype(np.float32)
    X, y = torch.tensor(X), torch.tensor(y, dtype=torch.float32 if regression else torch.long)
    return (X[order[:n]], y[order[:n]]), (X[order[n:]], y[order[n:]])


def mlp(inputs, width, outputs, depth=1, act=nn.ReLU):
    layers, w = [], inputs
    for _ in range(depth):
        layers += [nn.Linear(w, width), act()]
        w = width
    return nn.Sequential(*layers, nn.Linear(w, outputs))


def classes3():
    return datasets.make_classification(1200, 20, n_informative=10, n_classes=3, random_state=0)


def wine_raw():
    """Wine's proline feature is in the hundreds, most others near 1 (median feature RMS 2.6)."""
    train, val = split(*datasets.load_wine(return_X_y=True), standardize=False)
    model = mlp(13, 64, 3)
    return model, train, val, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.01, momentum=0.9), 16


def sigmoid_stack():
    """Ten plain sigmoid layers: arch.too_deep also holds, but the gradient vanishes through the sigmoids."""
    train, val = split(*classes3())
    model = mlp(20, 64, 3, depth=10, act=nn.Sigmoid)
    return model, train, val, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1), 64


def dead_by_bias():
    """Hidden biases at -5 kill the ReLUs: updates are tiny because no gradient flows, not because of the rate."""
    train, val = split(*classes3())
    model = mlp(20, 64, 3, depth=3)
    for layer in model:
        if isinstance(layer, nn.Linear) and layer.out_features == 64:
            nn.init.constant_(layer.bias, -5.0)
    return model, train, val, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.05), 64


def wide_net_60_rows():
    """60 training rows for a 512-wide net: it memorizes; the inputs do carry signal."""
    X, y = classes3()
    train, val = split(X[:300], y[:300])
    model = mlp(20, 512, 3, depth=2)
    return model, (train[0][:60], train[1][:60]), val, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), 1e-3), 20


def label_smoothing():
    """Label smoothing 0.1 keeps the loss above ~0.5 on 10 classes however well the net fits."""
    train, val = split(*datasets.load_digits(return_X_y=True))
    model = mlp(64, 128, 10, depth=2, act=nn.GELU)
    return (model, train, val, nn.CrossEntropyLoss(label_smoothing=0.1), torch.optim.RMSprop(model.parameters(), 1e-3), 64)


def rnn_first_step():
    """The label is the sign of the first of 60 inputs: a vanilla RNN forgets it. The data has
    signal (a linear model finds it); the recurrence cannot carry it."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1200, 60, 2, generator=g)
    y = (X[:, 0, 0] > 0).long()

    class RNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.RNN(2, 32, batch_first=True), nn.Linear(32, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = RNN()
    return (model, (X[:1000], y[:1000]), (X[1000:], y[1000:]), nn.CrossEntropyLoss(),
            torch.optim.Adam(model.parameters(), 1e-3), 32)


def noisy_small_batches():
    """SGD at 0.1 on batches of 4 (diabetes): batch losses spike 4x and recover, the head's
    first steps are large, yet it fits (val MSE 0.36-0.45 of the variance); only the late jitter is real."""
    X, y = datasets.load_diabetes(return_X_y=True)
    train, val = split(X, ((y - y.mean()) / y.std()).astype(np.float32), regression=True)
    model = nn.Sequential(mlp(10, 64, 1), nn.Flatten(0))
    return model, train, val, nn.MSELoss(), torch.optim.SGD(model.parameters(), 0.1), 4


def weighted_imbalance():
    """Breast cancer cut to 17:1, with the loss weighted by inverse class frequency: the imbalance
    is handled, and the weighted loss at init hangs on the batch's few minority rows."""
    X, y = datasets.load_breast_cancer(return_X_y=True)
    keep = (y == 1) | (np.arange(len(y)) % 12 == 0)
    train, val = split(X[keep], y[keep])
    counts = torch.bincount(train[1]).float()
    model = mlp(30, 32, 2)
    return (model, train, val, nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts)),
            torch.optim.Adam(model.parameters(), 1e-3), 32)


def one_hot_targets(scale):
    """Digits with float one-hot targets for CrossEntropyLoss (read as class probabilities); at
    `scale` 10 every row sums to 10 and the loss is ten times what it should be."""
    train, val = split(*datasets.load_digits(return_X_y=True))
    train, val = [(X, nn.functional.one_hot(y, 10).float() * scale) for X, y in (train, val)]
    model = mlp(64, 128, 10)
    return model, train, val, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), 1e-3), 32


def iris_long_small_batches():
    """1000 Adam steps on batches of 8 of iris: 30 validation rows make each validation a noisy
    draw (0.09 once, 0.11-0.15 around it); the lowest one is luck, not a level that was lost."""
    train, val = split(*datasets.load_iris(return_X_y=True))
    model = mlp(4, 16, 3)
    return model, train, val, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), 1e-2), 8


def relu_rnn(recurrent_scale):
    """A ReLU RNN over 30 steps whose label sits in the last 5 inputs; W_hh scaled by `recurrent_scale`
    (x3: spectral radius ~1.7, the hidden state explodes over the sequence)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1200, 30, 2, generator=g)
    y = (X[:, -5:, 0].sum(1) > 0).long()

    class RNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.RNN(2, 32, batch_first=True, nonlinearity="relu"), nn.Linear(32, 2)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(recurrent_scale)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = RNN()
    return (model, (X[:1000], y[:1000]), (X[1000:], y[1000:]), nn.CrossEntropyLoss(),
            torch.optim.Adam(model.parameters(), 1e-3), 32)


@pytest.mark.parametrize("build, root, absent", [
    (wine_raw, "data.not_normalized", ["lr.too_low"]),
    (sigmoid_stack, "grad.vanishing", ["arch.too_deep"]),
    (dead_by_bias, "units.dead", ["lr.too_low"]),
    (wide_net_60_rows, "fit.overfitting", ["data.no_signal"]),
    (label_smoothing, None, []),
    (rnn_first_step, "grad.vanishing", ["data.no_signal"]),
    (noisy_small_batches, "loss.fluctuation", ["lr.too_high"]),
    (weighted_imbalance, None, []),
    (lambda: one_hot_targets(1.0), None, []),
    (lambda: one_hot_targets(10.0), "data.labels_out_of_range", ["loss.init_mismatch"]),
    (iris_long_small_batches, None, []),
    (lambda: relu_rnn(1.0), None, []),
    (lambda: relu_rnn(3.0), "init.scale_mismatch", []),
], ids=["wine-raw", "sigmoid-10", "bias=-5", "60-rows", "label-smoothing", "rnn-60", "sgd-batch-4", "weighted-17:1",
        "one-hot", "one-hot*10", "iris-1000-steps", "relu-rnn", "relu-rnn-whh*3"])
def test_fresh_setup_gets_the_right_verdict(build, root, absent):
    torch.manual_seed(0)
    model, train, val, loss_fn, optimizer, batch = build()
    steps = {wide_net_60_rows: 600, noisy_small_batches: 800, iris_long_small_batches: 1000}.get(build)
    report = nndoctor.diagnose(model, train, loss_fn=loss_fn, optimizer=optimizer, val_data=val,
                               batch_size=batch, steps=steps)
    found = [f.code for f in report.findings if f.is_problem]
    if root is None:
        assert found == [], report
    else:
        assert found and found[0] == root, report
    assert not set(absent) & set(found), report
    assert len(found) == len(set(found)), "one finding per code"


def digits_loop(model, optimizer, epochs, lr_lambda=None, eval_each_epoch=True, train_each_epoch=True, clip=None):
    """A hand-written loop under `nndoctor.watch`: validation (in eval mode) after every epoch."""
    from torch.utils.data import DataLoader, TensorDataset
    train, val = split(*datasets.load_digits(return_X_y=True))
    loader = DataLoader(TensorDataset(*train), batch_size=32, shuffle=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
    loss_fn = nn.CrossEntropyLoss()
    with nndoctor.watch(model, optimizer) as doctor:
        model.train()
        for _ in range(epochs):
            if train_each_epoch:
                model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                if schedule:
                    schedule.step()
                doctor.log(loss=loss)
            if eval_each_epoch:
                model.eval()
                with torch.no_grad():
                    doctor.log(val_loss=loss_fn(model(val[0]), val[1]))
    return doctor.report()


@pytest.mark.parametrize("train_each_epoch, root", [(True, None), (False, "loop.eval_mode")],
                         ids=["train-each-epoch", "eval-after-epoch-1"])
def test_validation_in_eval_mode_without_model_train_after_it(train_each_epoch, root):
    """`model.eval()` for validation and no `model.train()` after it: epochs 2..8 (7/8 of the steps)
    run with dropout off and BatchNorm statistics frozen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))
    report = digits_loop(model, torch.optim.Adam(model.parameters(), 1e-3), 8, train_each_epoch=train_each_epoch)
    found = [f.code for f in report.findings if f.is_problem]
    assert found == ([root] if root else []), report


@pytest.mark.parametrize("peak_lr, root", [(1e-3, None), (0.5, "lr.too_high")], ids=["warmup-to-1e-3", "warmup-to-0.5"])
def test_learning_rate_too_high_only_after_warmup(peak_lr, root):
    """A linear warm-up over 100 steps: at 0.5 Adam's steps grow until the last hidden ReLUs all
    die (alive at the start, 100% dead at the end); the first steps look fine and the loss never
    grows 4x, it only falls back to chance."""
    torch.manual_seed(0)
    model = mlp(64, 128, 10, depth=2)
    report = digits_loop(model, torch.optim.Adam(model.parameters(), peak_lr), 8,
                         lr_lambda=lambda step: min(1.0, (step + 1) / 100))
    found = [f.code for f in report.findings if f.is_problem]
    if root is None:
        assert found == [], report
    else:
        assert found and found[0] == root, report
        assert report.get(root).evidence["dead_share_last"] >= 0.9


def test_clipping_every_step_under_adam_hides_no_rate():
    """Adam on digits with clip_grad_norm_(0.1): the norm is clipped on most steps, yet Adam divides
    by the gradient's running scale, so the step size is unchanged and the run is healthy."""
    torch.manual_seed(0)
    model = mlp(64, 128, 10, depth=2)
    report = digits_loop(model, torch.optim.Adam(model.parameters(), 1e-3), 8, clip=0.1)
    assert [f.code for f in report.findings if f.is_problem] == [], report
    assert report.get("grad.clipped_always").severity == "info"


def test_orthogonal_recurrent_init_is_not_a_scale_mismatch():
    """Spectral radius exactly 1 (orthogonal W_hh, the IRNN recipe's identity too) is the healthy edge."""
    rnn = nn.RNN(3, 16, batch_first=True)
    nn.init.orthogonal_(rnn.weight_hh_l0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    X = torch.randn(256, 20, 3, generator=torch.Generator().manual_seed(1))
    report = nndoctor.checkup(Net(), (X, (X[:, -1, 0] > 0).long()), loss_fn=nn.CrossEntropyLoss())
    assert not report.has("init.scale_mismatch"), report
