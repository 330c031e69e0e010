"""The watcher's hooks: a watched model pickles, saves and copies as it would unwatched."""
import copy
import io
import pickle
import runpy
import sys
import textwrap
import zipfile

import torch
from torch import nn

import nndoctor
from nndoctor.integrations.script import run
from test_watch import hooks_left, make_data, make_model

CHECKPOINTING = """
    import copy, pickle, sys
    import torch
    from torch import nn
    torch.manual_seed(0)
    X = torch.randn(256, 8)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = copy.deepcopy(model)                      # the EMA / best-weights pattern
    best = None
    for epoch in range(4):
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 0.1)
        with torch.no_grad():
            val = nn.functional.cross_entropy(ema(X), y)
        torch.save(model, sys.argv[1] + f".epoch{epoch}.pt")   # the whole model, every epoch
        blob = pickle.dumps(model)
        best = copy.deepcopy(model)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "best": best.state_dict(),
                "reloaded": pickle.loads(blob).state_dict()}, sys.argv[1])
"""


def test_watched_model_pickles_saves_and_deep_copies():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    X, y = make_data()
    with nndoctor.watch(model, opt, sample_every=1) as doctor:  # sampling hooks attached too
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.log(loss=loss)
            blob = pickle.dumps(model)
            saved = io.BytesIO()
            torch.save(model, saved)
            twin = copy.deepcopy(model)
        unwatched = torch.optim.SGD(twin.parameters(), 0.1)
        assert hooks_left(model, opt) > 2 and hooks_left(twin, unwatched) == 0  # the copy carries no hook
    assert b"nndoctor" not in blob and b"nndoctor" not in saved.getvalue()  # loads without nndoctor
    reloaded = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))
    calls = len(doctor.sentinel._calls)
    for _ in range(50):
        twin(X[:32]).sum().backward()  # the copy runs on after the watch ended
    assert len(doctor.sentinel._calls) == calls and hooks_left(twin, unwatched) == 0


def test_hook_reached_another_way_copies_inert():
    model = make_model()
    with nndoctor.watch(model) as doctor:
        hooks = pickle.loads(pickle.dumps(model[0]._forward_hooks, protocol=2))
        copied = copy.deepcopy(model[0]._forward_hooks)
    for hook in [*hooks.values(), *copied.values()]:
        assert hook(model[0], (torch.zeros(1, 8),), torch.zeros(1, 32)) is None
    assert doctor.sentinel._calls == []


def test_checkpointing_script_under_nndoctor_watch_matches_the_plain_run(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(CHECKPOINTING))
    argv = sys.argv
    try:
        sys.argv = [str(path), str(tmp_path / "plain.pt")]
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    assert run(str(path), [str(tmp_path / "watched.pt")], out=tmp_path / "report") == 0
    plain, watched = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "watched.pt")
    for part in plain:
        assert all(torch.equal(plain[part][k], watched[part][k]) for k in plain[part])
    pickled = [zipfile.ZipFile(tmp_path / f"{name}.pt.epoch3.pt").read(f"{name}.pt.epoch3/data.pkl")
               for name in ("plain", "watched")]
    assert pickled[0] == pickled[1]  # torch.save(model) wrote exactly what it writes unwatched
