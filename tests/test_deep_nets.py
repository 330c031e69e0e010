"""Deep nets: a sampled step measures a bounded group of modules of each kind and rotates
through the rest (collect/activations.py), so a dead layer deep in a net of hundreds of
modules is still named, and a healthy one stays silent."""
import copy
import io

import torch
from torch import nn

import nndoctor
from nndoctor.collect.activations import DEAD_WINDOW, MODULES_PER_KIND
from test_hooks import Block

BLOCKS = 80  # 4 + 4 * 80 = 324 modules: 80 ReLUs, 82 Linears, three groups of each
GROUPS = -(-BLOCKS // MODULES_PER_KIND)  # the rotation's groups of ReLUs


def residual_mlp(dead_block: int | None = None, width: int = 32, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, width), *[Block(width) for _ in range(BLOCKS)],
                          nn.LayerNorm(width), nn.Linear(width, 4))
    if dead_block is not None:  # normalised inputs, weights ~1/sqrt(width): no input lifts this ReLU above 0
        with torch.no_grad():
            model[1 + dead_block].linear.bias.fill_(-50.0)
    return model


def train(model, steps: int, doctor=None, lr: float = 0.01):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2048, 16, generator=g)
    y = (X[:, :4] @ torch.randn(4, 4, generator=g)).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    lf = nn.CrossEntropyLoss()
    with nndoctor.watch(model, opt, live=False) as doctor:
        for step in range(steps):
            i = step * 32 % 2048
            loss = lf(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return doctor


def last_group_block() -> int:
    """A block whose ReLU is in the last group of the rotation: measured last."""
    return max(i for i in range(BLOCKS) if i % GROUPS == GROUPS - 1)


def test_a_dead_relu_deep_in_a_large_net_is_named():
    block = last_group_block()
    steps = (GROUPS * DEAD_WINDOW + 2) * 20  # every group's window, with the default sampling every 20 steps
    doctor = train(residual_mlp(dead_block=block), steps)
    report = doctor.report()
    dead = report.get("units.dead")
    assert dead is not None, report
    assert dead.where == [f"{1 + block}.act"]
    # every ReLU got its verdict, from groups of at most MODULES_PER_KIND per sampled step
    measured = [n for n in doctor.history.names("dead/")]
    assert len(measured) == BLOCKS


def test_a_healthy_large_net_stays_silent():
    report = train(residual_mlp(), (GROUPS * DEAD_WINDOW + 2) * 20).report()
    assert not [f for f in report.findings if f.severity in ("warning", "error")], report


def test_a_sampled_step_hooks_a_bounded_group():
    model = residual_mlp()
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    hooked = []
    with nndoctor.watch(model, opt, live=False, sample_every=1) as doctor:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            hooked.append(sum(1 for m in model.modules() if m._forward_hooks))
            # a copy and a checkpoint taken while the hooks are on carry none of them
            assert not any(m._forward_hooks for m in copy.deepcopy(model).modules())
            buffer = io.BytesIO()
            torch.save(model, buffer)
            buffer.seek(0)
            assert not any(m._forward_hooks for m in torch.load(buffer, weights_only=False).modules())
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    # the first sampled step also hooks every leaf once, for the execution order
    assert max(hooked[1:]) <= 2 * MODULES_PER_KIND + 8 + 1 < len(list(model.modules())) // 3
