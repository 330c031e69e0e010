"""Deep analysis: each measurement against a closed form or a case where it must fire and a
healthy one where it must not; and the analyses leave the model exactly as they found it."""
import functools

import pytest
import torch
from torch import nn

import nndoctor
from nndoctor import zoo
from nndoctor.analysis import examine, initial_weights, measure
from nndoctor.analysis.hessian import curvature
from nndoctor.analysis.probe import LossProbe


@functools.lru_cache(maxsize=None)
def deep_report(name: str, full_batch: bool = False):
    setup = zoo.get(name).build(0)
    batch = len(setup.train_data[0]) if full_batch else setup.batch_size
    return nndoctor.diagnose(setup.model, setup.train_data, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                             val_data=setup.val_data, steps=setup.steps, batch_size=batch, deep=True)


def quadratic(scales):
    """Least squares on features with the given scales: the Hessian is 2·XᵀX/n exactly."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, len(scales), generator=g) * torch.tensor(scales)
    y = X @ torch.randn(len(scales), generator=g) + 0.1 * torch.randn(256, generator=g)
    model = nn.Linear(len(scales), 1, bias=False)
    loss_fn = lambda out, target: ((out.squeeze(-1) - target) ** 2).mean()  # noqa: E731
    return model, X, y, loss_fn, 2 * X.T @ X / len(X)


def test_top_eigenvalue_and_trace_match_a_closed_form_quadratic():
    model, X, y, loss_fn, hessian = quadratic([1.0, 2.0, 3.0, 0.5, 5.0, 1.5])
    result, notes = curvature(LossProbe(model, X, y, loss_fn))
    exact = torch.linalg.eigvalsh(hessian.double())
    assert notes == []
    assert result["top_eigenvalue"] == pytest.approx(float(exact.max()), rel=1e-3)
    assert abs(result["trace"] - float(exact.sum())) <= max(4 * result["trace_stderr"], 0.05 * float(exact.sum()))


def test_ravine_is_named_on_a_badly_scaled_quadratic_and_not_on_a_round_one():
    for scales, expected in (([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], False), ([1.0, 1.0, 1.0, 1.0, 1.0, 30.0], True)):
        model, X, y, loss_fn, _ = quadratic(scales)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        report = nndoctor.diagnose(model, (X, y), loss_fn=loss_fn, optimizer=opt, steps=40, batch_size=32,
                                   deep=True)
        assert report.has("curvature.ill_conditioned") is expected, report.meta["analysis"]["curvature"]


def test_ravine_from_raw_features_on_a_real_network():
    sick, healthy = deep_report("mlp-diabetes/raw-features"), deep_report("mlp-diabetes")
    assert sick.has("curvature.ill_conditioned")
    assert sick.get("curvature.ill_conditioned").cause == "data.not_normalized"  # folded under its root
    assert not healthy.has("curvature.ill_conditioned")
    assert healthy.meta["analysis"]["curvature"]["top_eigenvalue"] > 0


def test_full_batch_is_too_large_for_the_noise_scale_and_batch_32_is_not():
    full, minibatch = deep_report("mlp-digits", True), deep_report("mlp-digits")
    found = full.get("batch.too_large")
    assert found is not None and found.evidence["batch_size"] >= 10 * found.evidence["b_simple"]
    assert minibatch.get("batch.too_large") is None
    assert minibatch.healthy  # deep analysis adds no alarm to a healthy run
    assert minibatch.meta["analysis"]["line"]["monotone"]


def test_lr_too_high_carries_the_curvature_against_two_over_lr():
    report = deep_report("mlp-digits/adam-lr=0.05-deep")
    evidence = report.get("lr.too_high").evidence
    assert evidence["two_over_lr"] == pytest.approx(2 / 0.05)
    assert evidence["hessian_top_eigenvalue"] > 0


class Prototypes(nn.Module):
    """Distances to learned centres (an RBF layer): torch.cdist has no double backward."""

    def __init__(self):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(6, 8))

    def forward(self, x):
        return -torch.cdist(x, self.centres, compute_mode="donot_use_mm_for_euclid_dist")


def model_with_everything():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)


def test_analyses_leave_weights_buffers_modes_grads_and_rng_untouched():
    model = model_with_everything()
    start = initial_weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = data()
    for _ in range(5):  # a few real steps so initial and final weights differ
        opt.zero_grad(); nn.functional.cross_entropy(model(X[:64]), y[:64]).backward(); opt.step()
    model.eval(); model[3].train()  # a mixed mode, to be restored module by module
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    results, notes = measure(model, (X, y), nn.CrossEntropyLoss(), opt, initial=start)
    assert set(results) >= {"line", "plane", "curvature", "noise_scale"}, notes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # incl. BatchNorm running stats
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(rng, torch.get_rng_state())


def test_unsupported_double_backward_is_skipped_and_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    model.add_module("prototypes", Prototypes())
    model.add_module("head", nn.Linear(6, 3))
    X, y = data()
    report = nndoctor.Report(meta={"batch_size": 32})
    out = examine(report, model, (X, y), nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1))
    c = out.meta["analysis"]["curvature"]
    assert "prototypes" in c["skipped"] and "head" not in c["skipped"]
    assert any("prototypes" in n and "double backward" in n for n in out.notes)
    assert c["parameters"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert "line" not in out.meta["analysis"] and {"plane", "noise_scale"} <= set(out.meta["analysis"])


def test_nonfinite_weights_skip_the_analyses_with_a_note():
    model = model_with_everything()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    out = examine(nndoctor.Report(), model, data(), nn.CrossEntropyLoss())
    assert "analysis" not in out.meta or not out.meta["analysis"]
    assert any("no longer finite" in n for n in out.notes), out.notes


def test_examine_after_the_users_own_loop():
    report = zoo.run("mlp-digits/cosine", deep=True)  # the scenario trains in its own loop under watch()
    assert report.healthy
    analysis = report.meta["analysis"]
    assert analysis["line"]["monotone"] and analysis["curvature"]["converged"]
    assert analysis["noise_scale"]["at"] == "initial"
