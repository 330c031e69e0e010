"""The per-parameter statistics of sampled steps (gradient and weight norms, update ratios,
dead rows) are computed in batches over all parameters; each value must equal the one the
plain per-parameter computation gives, on every kind of parameter the collectors meet."""
import numpy as np
import pytest
import torch
from torch import nn

import nndoctor
from nndoctor.collect import batched
from nndoctor.collect.gradients import ROW_WINDOW

SAMPLE_EVERY = 20
STEPS = 2 * ROW_WINDOW * SAMPLE_EVERY + 10  # two dead-row windows


class Mixed(nn.Module):
    """Small layers (enough to be batched) and large ones (> 8192 weights), some units dead
    (exactly-zero gradient rows), a layer used on every other sampled step only, a frozen
    layer and a sparse embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8, sparse=True)
        self.wide = nn.Linear(8, 1200)            # 9,600 weights: read at fixed positions
        self.hidden = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(16))
        self.narrow = nn.Linear(1200, 8)          # 9,600 weights, 8 rows; between the small ones in order
        self.sometimes = nn.Linear(8, 8)          # the same shape as `hidden`: batched with it when present
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            self.hidden.bias[:3] = -100.0         # three units that never activate
        self.use_sometimes = False

    def forward(self, tokens):
        x = self.embed(tokens).mean(1)
        x = self.narrow(torch.relu(self.wide(x)))
        x = torch.relu(self.hidden(x))
        for block in self.blocks:
            x = x + 0.5 * torch.tanh(block(x))
        if self.use_sometimes:
            x = x + self.sometimes(x)
        return self.head(self.frozen(x))


class Reference:
    """The statistics computed one parameter at a time, at the same steps as the doctor."""

    def __init__(self, doctor):
        self.doctor = doctor
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.alive: dict[str, torch.Tensor] = {}
        self.sampled = 0
        self._before = None

    def add(self, name, step, value):
        self.series.setdefault(name, []).append((step, float(value)))

    def before_step(self, optimizer, args, kwargs):
        step = self.doctor.step
        if step % SAMPLE_EVERY:
            return
        total, reads = 0.0, {}
        for i, (name, p) in enumerate(self.doctor.params):
            if p.grad is None:
                continue
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            norm = g.norm().item()
            total += norm ** 2
            self.add("grad_norm/" + name, step, norm)
            self.add("weight_norm/" + name, step, p.detach().norm().item())
            positions = self.doctor.updates.positions[i]
            flat = p.detach().reshape(-1)
            reads[i] = flat.clone() if positions is None else flat[positions]
            if p.dim() >= 2 and not p.grad.is_sparse:
                alive = p.grad.flatten(1).abs().sum(1) > 0
                self.alive[name] = alive | self.alive[name] if name in self.alive else alive
        self.add("grad_norm/total", step, total ** 0.5)
        self._before = (step, reads)
        self.sampled += 1
        if self.sampled % ROW_WINDOW == 0:
            for name, alive in sorted(self.alive.items()):
                self.add("dead_rows/" + name, step, (~alive).float().mean().item())
            self.alive = {}

    def after_step(self, optimizer, args, kwargs):
        if self._before is None:
            return
        step, reads = self._before
        self._before = None
        for i, before in reads.items():
            name, p = self.doctor.params[i]
            positions = self.doctor.updates.positions[i]
            flat = p.detach().reshape(-1)
            after = flat if positions is None else flat[positions]
            size = before.norm().item()
            ratio = (after - before).norm().item() / size if size > self.doctor.updates.floors[i] else float("nan")
            self.add("update_ratio/" + name, step, ratio)


@pytest.mark.parametrize("sometimes_every, small_batches", [
    (2 * SAMPLE_EVERY, False),  # the batches change from one sampled step to the next
    (None, False),              # one layer never gets a gradient
    (2 * SAMPLE_EVERY, True),   # batches of three matrices at most
])
def test_batched_statistics_equal_the_per_parameter_ones(sometimes_every, small_batches, monkeypatch):
    if small_batches:
        monkeypatch.setattr(batched, "CONCAT_LIMIT", 3 * 64)
        monkeypatch.setattr(batched, "FEW", 2)
    torch.manual_seed(0)
    model = Mixed()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.05, momentum=0.9)
    tokens = torch.randint(0, 50, (STEPS, 16, 4))
    labels = torch.randint(0, 3, (STEPS, 16))
    with nndoctor.watch(model, opt, sample_every=SAMPLE_EVERY, examine=False, live=False) as doctor:
        reference = Reference(doctor)
        opt.register_step_pre_hook(reference.before_step)   # after the doctor's own: the same gradients
        opt.register_step_post_hook(reference.after_step)
        for step in range(STEPS):
            model.use_sometimes = sometimes_every is not None and step % sometimes_every == 0
            loss = nn.functional.cross_entropy(model(tokens[step]), labels[step])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    assert doctor.active, doctor.failure
    layouts = [*doctor.grads._layouts._known.values(), *doctor.updates._layouts._known.values()]
    assert all(layout.groups and layout.alone for layout in layouts)  # both ways of reading were taken
    prefixes = ("grad_norm/", "weight_norm/", "update_ratio/", "dead_rows/")
    recorded = {n: s for n, s in doctor.history.series.items() if n.startswith(prefixes)}
    assert sorted(recorded) == sorted(reference.series)
    assert "grad_norm/embed.weight" in recorded and "grad_norm/frozen.weight" not in recorded
    if sometimes_every:
        assert len(recorded["grad_norm/sometimes.weight"]) == (len(recorded["grad_norm/hidden.weight"]) + 1) // 2
    else:
        assert "grad_norm/sometimes.weight" not in recorded and doctor.grads.none_counts["sometimes.weight"] > 0
    assert reference.series["dead_rows/hidden.weight"][0][1] >= 3 / 8
    for name, points in reference.series.items():
        steps, values = recorded[name].trace()
        assert steps.tolist() == [s for s, _ in points], name
        np.testing.assert_allclose(values, [v for _, v in points], rtol=1e-5, atol=1e-12, err_msg=name)
