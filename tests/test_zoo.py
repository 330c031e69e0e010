"""The zoo's own promises, checked in plain PyTorch (no nndoctor): every scenario builds,
builds the same way twice, keeps its data to itself, and the sick ones really fail while
the healthy ones really learn."""
import math

import pytest
import torch
from torch import nn

from nndoctor import zoo
from nndoctor.findings import REGISTRY
from nndoctor.zoo.loops import fit

FAMILIES = {"mlp", "cnn", "rnn", "transformer"}


def accuracy(setup) -> float:
    X, y = setup.val_data
    setup.model.eval()
    with torch.no_grad():
        return (setup.model(X).argmax(1) == y).float().mean().item()


def test_catalogue_is_well_formed():
    names = [s.name for s in zoo.SCENARIOS]
    assert len(names) == len(set(names))
    for s in zoo.SCENARIOS:
        assert all(code in REGISTRY for code in s.expected), s.name
        assert len(set(s.expected)) == len(s.expected), s.name
        assert s.tags & {"healthy", "sick"} == {"healthy" if s.healthy else "sick"}, s.name
        assert len(s.tags & FAMILIES) == 1, s.name
    assert len(zoo.select("healthy")) >= 10 and len(zoo.select("sick")) >= 40
    demo = zoo.select("demo")
    assert sum(s.healthy for s in demo) >= 3 and sum(not s.healthy for s in demo) >= 8
    assert set(zoo.select("healthy")) <= set(zoo.select("quick"))


def test_get_and_select():
    assert zoo.get("mlp-digits/lr=8").expected == ("lr.too_high",)
    with pytest.raises(KeyError, match="did you mean"):
        zoo.get("mlp-digits/lr=9")
    assert all("cnn" in s.tags for s in zoo.select("cnn"))


@pytest.mark.parametrize("name", ["mlp-digits", "cnn-digits/detached-features", "lstm-sequence",
                                  "transformer-pointer", "mlp-digits/sorted-by-label",
                                  "mlp-digits/no-zero-grad", "mlp-digits/backbone-lr=1e-6"])
def test_builds_a_complete_setup(name):
    setup = zoo.get(name).build(0)
    assert isinstance(setup.model, nn.Module)
    owned = {id(p) for p in setup.model.parameters()}
    assert all(id(p) in owned for g in setup.optimizer.param_groups for p in g["params"])
    X_val, y_val = setup.val_data
    assert len(X_val) == len(y_val) > 0
    with torch.no_grad():
        assert setup.loss_fn(setup.model(X_val[:8]), y_val[:8]).dim() == 0


def test_same_seed_same_setup_other_seed_other_init():
    a, b, c = (zoo.get("mlp-digits").build(seed) for seed in (0, 0, 1))
    for pa, pb, pc in zip(a.model.parameters(), b.model.parameters(), c.model.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert torch.equal(a.train_data[0], c.train_data[0])  # data do not depend on the seed


def test_mutations_do_not_leak_into_other_scenarios():
    clean = zoo.get("mlp-digits").build(0).train_data[0].clone()
    zoo.get("mlp-digits/nan-rows").build(0)
    zoo.get("mlp-digits/tanh-inputs-x100").build(0)
    healthy = zoo.get("mlp-digits").build(0)
    assert torch.equal(healthy.train_data[0], clean)
    healthy.train_data[0].mul_(0)  # an in-place edit of a built setup stays there
    assert torch.equal(zoo.get("mlp-digits").build(0).train_data[0], clean)


def test_healthy_mlp_learns():
    setup = zoo.get("mlp-digits").build(0)
    loss = fit(setup)["loss"]
    assert sum(loss[-20:]) / 20 < 0.3 * sum(loss[:5]) / 5
    assert accuracy(setup) > 0.9


def test_lr8_diverges():
    loss = fit(zoo.get("mlp-digits/lr=8").build(0))["loss"]
    assert max(loss[:20]) > 1e6 and not math.isfinite(loss[-1])


def test_round_gives_exactly_zero_gradient_and_unused_layer_none():
    setup = zoo.get("mlp-digits/round-hidden").build(0)
    X, y = setup.train_data
    setup.loss_fn(setup.model(X[:64]), y[:64]).backward()
    first, *rest = [p for p in setup.model.parameters()]
    assert torch.count_nonzero(first.grad) == 0 and any(torch.count_nonzero(p.grad) for p in rest)

    setup = zoo.get("mlp-digits/unused-layer").build(0)
    fit(setup)
    assert setup.model.fc2.weight.grad is None and setup.model.fc1.weight.grad is not None


def test_labels_out_of_range_crash_plain_pytorch():
    with pytest.raises(IndexError):
        fit(zoo.get("mlp-digits/labels-1-10").build(0))


def test_own_loop_faults():
    loss = fit(zoo.get("mlp-digits/no-zero-grad").build(0))["loss"]
    assert loss[-1] > 1e6
    setup = zoo.get("mlp-digits/eval-mode-deep-bn").build(0)
    logs = fit(setup)
    assert not setup.model.training and logs["val_loss"]
    assert all(bn.num_batches_tracked == 0 for bn in setup.model.modules() if isinstance(bn, nn.BatchNorm1d))
    assert abs(logs["loss"][-1] - math.log(10)) < 0.05


def test_vanilla_rnn_gradient_vanishes_through_time_where_the_lstm_keeps_it():
    def ratio(name):
        setup = zoo.get(name).build(0)
        X, y = setup.train_data
        X = X[:128].clone().requires_grad_(True)
        setup.loss_fn(setup.model(X), y[:128]).backward()
        per_step = X.grad.norm(dim=(0, 2))
        return (per_step[0] / per_step[-1]).item()

    assert ratio("lstm-sequence/vanilla-rnn") < 1e-5 < 0.1 < ratio("lstm-sequence")
