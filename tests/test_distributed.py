"""DDP under torchrun (2 processes, gloo, CPU): every rank watches, rank 0 reports for all."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

DDP_SCRIPT = """
    import sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    mode, odd_rank = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if mode == "doctor-fails" and rank == odd_rank:  # nndoctor's own bug on one rank only
        import nndoctor.collect.gradients as gradients
        def broken(self, step):
            raise RuntimeError("simulated internal error")
        gradients.GradientCollector.on_step = broken
    torch.manual_seed(0)
    X = torch.randn(2048, 16)
    y = (X[:, :4].sum(1) > 0).long()
    model = DDP(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)

    def train(doctor=None):
        for step in range(150):
            idx = torch.randint(0, 2048, (32,), generator=g)
            x = X[idx].clone()
            if mode == "nan" and rank == odd_rank and step == 70:
                x[3, 2] = float("nan")   # one bad sample on one rank
            loss = nn.functional.cross_entropy(model(x), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if doctor is not None:
                doctor.log(loss=loss)

    if mode == "api":  # the user's own loop, watched on every rank
        from nndoctor.integrations.distributed import watch
        with watch(model, opt) as doctor:
            train(doctor)
        report = doctor.report()
        if rank == 0:
            report.save_json(sys.argv[3])
    else:
        train()
    dist.destroy_process_group()
"""


def torchrun(tmp_path: Path, *args: str, under_nndoctor_watch: bool = True):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    (tmp_path / "out").mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
    runner = ["-m", "nndoctor.cli", "watch", "--out", str(tmp_path / "out")] if under_nndoctor_watch else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *runner, str(script), *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a deadlock: end the launcher and its workers, then fail
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail("torchrun job did not finish within 240 s (deadlock?)")
    assert launcher.returncode == 0, stderr[-3000:]
    done = subprocess.CompletedProcess(cmd, launcher.returncode, stdout, stderr)
    return done, json.loads((tmp_path / "out" / "report.json").read_text())


def test_nan_on_one_rank_is_named_with_its_rank(tmp_path):
    done, report = torchrun(tmp_path, "nan", "1")
    assert report["meta"]["world_size"] == 2 and report["meta"]["steps"] == 150
    assert done.stdout.count("Report written to") == 1  # rank 0 alone reports
    first = report["findings"][0]
    assert first["code"] == "loss.nonfinite"
    assert first["evidence"]["ranks"] == [1] and "rank 1 of 2" in first["message"]
    assert first["evidence"]["origin"]["module"] == "<input>" and first["evidence"]["origin"]["rank"] == 1


def test_healthy_job_stays_silent_even_when_one_rank_stops_watching(tmp_path):
    done, report = torchrun(tmp_path, "doctor-fails", "1")  # no deadlock: rank 1 keeps joining exchanges
    assert "simulated internal error" in done.stderr  # rank 1 warned once and trained on
    assert report["meta"]["steps"] == 150 and report["meta"]["losses_logged"] == 150
    assert [f["code"] for f in report["findings"] if f["severity"] != "info"] == []


def test_own_loop_with_the_distributed_watch(tmp_path):
    _, report = torchrun(tmp_path, "api", "0", str(tmp_path / "out" / "report.json"), under_nndoctor_watch=False)
    assert report["meta"]["world_size"] == 2 and report["meta"]["steps"] == 150
    assert len(report["series"]["loss"]["value"]) == 150  # merged: one mean loss per step
    assert [f["code"] for f in report["findings"] if f["severity"] != "info"] == []
