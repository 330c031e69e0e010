"""DDP under torchrun (2 processes, gloo, CPU): every rank watches, rank 0 reports for all."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

DDP_SCRIPT = """
    import contextlib
    import sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    modes, odd_rank = set(sys.argv[1].split(",")), int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if "doctor-fails" in modes and rank == odd_rank:  # nndoctor's own bug on one rank only
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
    # uneven: per-rank data of different length (rank 1 has 50 more batches)
    steps = 60 + 50 * rank if modes & {"uneven", "join"} else 150

    def train(doctor=None):
        with Join([model]) if "join" in modes else contextlib.nullcontext():
            for step in range(steps):
                if "raise" in modes and rank == odd_rank and step == 37:
                    raise RuntimeError("the user's own error on one rank")
                idx = torch.randint(0, 2048, (32,), generator=g)
                x = X[idx].clone()
                if "nan" in modes and rank == odd_rank and step == 70:
                    x[3, 2] = float("nan")   # one bad sample on one rank
                loss = nn.functional.cross_entropy(model(x), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if doctor is not None:
                    doctor.log(loss=loss)

    if "api" in modes:  # the user's own loop, watched on every rank
        from nndoctor.integrations.distributed import watch
        with watch(model, opt) as doctor:
            train(doctor)
        report = doctor.report()
        if rank == 0:
            report.save_json(sys.argv[3])
    else:
        train()
    print(f"rank {rank} finished", flush=True)
    dist.destroy_process_group()
"""

TIMEOUT = 240  # s: a deadlock fails the test instead of hanging CI


def torchrun(tmp_path: Path, *args: str, under_nndoctor_watch: bool = True, check: bool = True,
             script: str = DDP_SCRIPT):
    """Launch the script on 2 ranks (gloo, CPU); returns (the finished launcher, rank 0's report or None)."""
    return finish(launch(tmp_path, *args, under_nndoctor_watch=under_nndoctor_watch, script=script), check)


def launch(tmp_path: Path, *args: str, under_nndoctor_watch: bool = True, script: str = DDP_SCRIPT):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "train_ddp.py"
    path.write_text(textwrap.dedent(script))
    (tmp_path / "out").mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
    runner = ["-m", "nndoctor.cli", "watch", "--out", str(tmp_path / "out")] if under_nndoctor_watch else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *runner, str(path), *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path, start_new_session=True)
    return launcher, cmd, tmp_path, time.monotonic()


def finish(launched, check: bool = True):
    launcher, cmd, tmp_path, began = launched
    try:
        stdout, stderr = launcher.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # a deadlock: end the launcher and its workers, then fail
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail(f"torchrun job did not finish within {TIMEOUT} s (deadlock?)")
    if check:
        assert launcher.returncode == 0, stderr[-3000:]
    done = subprocess.CompletedProcess(cmd, launcher.returncode, stdout, stderr)
    done.seconds = time.monotonic() - began
    report = tmp_path / "out" / "report.json"
    return done, json.loads(report.read_text()) if report.exists() else None


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


# ---- never deadlock: ranks that disagree on step counts, or a rank that is gone ------------
PLAIN: dict[str, subprocess.CompletedProcess] = {}  # the job without nndoctor, once per mode


def watched_and_plain(tmp_path: Path, modes: str, *, api: bool = False):
    """The same job with and without nndoctor (launched together): ((watched, its report), plain)."""
    args = ["api," + modes, "1", str(tmp_path / "w" / "out" / "report.json")] if api else [modes, "1"]
    watched = launch(tmp_path / "w", *args, under_nndoctor_watch=not api)
    if modes not in PLAIN:
        PLAIN[modes] = finish(launch(tmp_path / "p", modes, "1", under_nndoctor_watch=False), check=False)[0]
    return finish(watched, check=False), PLAIN[modes]


@pytest.mark.parametrize("api", [False, True], ids=["nndoctor-watch", "distributed-api"])
def test_uneven_data_per_rank_ends_like_the_plain_job_and_rank_0_reports(tmp_path, api):
    # plain DDP: rank 0 ends after 60 steps, rank 1's next all-reduce fails (exit status 1)
    (done, report), plain = watched_and_plain(tmp_path, "uneven", api=api)
    assert done.returncode == plain.returncode == 1 and "rank 0 finished" in done.stdout
    assert report["meta"]["steps"] == 60 and report["meta"]["world_size"] == 2
    assert any("rank 1 sent no statistics after its share 1" in n for n in report["notes"])
    assert [f["code"] for f in report["findings"] if f["severity"] != "info"] == []


@pytest.mark.parametrize("api", [False, True], ids=["nndoctor-watch", "distributed-api"])
def test_join_with_uneven_data_finishes_and_merges_both_ranks(tmp_path, api):
    (done, report), plain = watched_and_plain(tmp_path, "join", api=api)
    assert plain.returncode == 0 and done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 finished" in done.stdout and "rank 1 finished" in done.stdout
    assert report["meta"]["steps_by_rank"] == {"0": 60, "1": 110}
    assert any("rank 0: 60, rank 1: 110" in n for n in report["notes"])
    assert [f["code"] for f in report["findings"] if f["severity"] != "info"] == []
    if api:  # rank 1's rows of its steps 60-109 were merged into the job's loss trace
        assert len(report["series"]["loss"]["value"]) == 110


@pytest.mark.parametrize("api", [False, True], ids=["nndoctor-watch", "distributed-api"])
def test_a_rank_that_raises_ends_the_job_like_the_plain_one(tmp_path, api):
    (done, report), plain = watched_and_plain(tmp_path, "raise", api=api)
    assert done.returncode == plain.returncode == 1
    assert done.seconds < plain.seconds + 30  # no wait for the rank that is gone
    # its traceback is printed, as without nndoctor
    assert "Traceback" in done.stderr and "RuntimeError: the user's own error on one rank" in done.stderr
    if report is not None:  # rank 0 wrote it before the launcher ended the job: rank 1's end is in it
        assert any("rank 1 stopped at step 37: RuntimeError: the user's own error" in n for n in report["notes"])


# ---- sharded models: FSDP2, FSDP1 (with and without use_orig_params), and DDP beside them ----
SHARDED_SCRIPT = """
    import copy
    import json
    import sys
    import torch
    import torch.distributed as dist
    from torch import nn

    torch.set_num_threads(1)
    kind, jobs = sys.argv[1], sys.argv[2].split(",")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    W = torch.randn(32, 10)

    def batch(step):  # the same batch of 64 on every rank; rank r trains on rows 32r..32r+31
        g = torch.Generator().manual_seed(step)
        x = torch.randn(64, 32, generator=g)
        return x, (x @ W).argmax(1)

    def shard(net):
        if kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP
            return DDP(net)
        if kind == "fsdp2":
            from torch.distributed.fsdp import fully_shard
            for layer in net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            return fully_shard(net)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        # one unit: the last layer's parameters all fall in rank 1's half of the flat parameter
        return FSDP(net, use_orig_params=kind == "fsdp1-orig", device_id=torch.device("cpu"))

    reference_norms = {}
    for job in jobs:
        lr = {"healthy": 0.01, "sick": 0.5}[job]
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        reference = copy.deepcopy(net)  # the unsharded model, trained on the whole batch
        model = shard(net)
        opt, ref_opt = torch.optim.Adam(model.parameters(), lr=lr), torch.optim.Adam(reference.parameters(), lr=lr)
        if "--api" in sys.argv:
            from nndoctor.integrations.distributed import watch
            doctor = watch(model, opt, sample_every=5)
            doctor.attach()
        norms = reference_norms[job] = []
        for step in range(60):
            x, y = batch(step)
            loss = nn.functional.cross_entropy(model(x[32 * rank:32 * rank + 32]), y[32 * rank:32 * rank + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if "--api" in sys.argv:
                doctor.log(loss=loss)
            ref_opt.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            norms.append(torch.stack([p.grad.norm() for p in reference.parameters()]).norm().item())
            ref_opt.step()
        if "--api" in sys.argv:
            doctor.detach()
            report = doctor.report()
            if rank == 0:
                report.save_json(f"out/{job}.json")
    if rank == 0:
        with open("out/reference.json", "w") as f:
            json.dump(reference_norms, f)
    dist.destroy_process_group()
"""


def problems(report: dict) -> list[str]:
    return [f["code"] for f in report["findings"] if f["severity"] != "info"]


@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1-orig", "fsdp1", "ddp"])
def test_sharded_job_is_judged_as_the_whole_model(tmp_path, kind):
    done, _ = torchrun(tmp_path, kind, "healthy,sick", "--api", under_nndoctor_watch=False, script=SHARDED_SCRIPT)
    reference = json.loads((tmp_path / "out" / "reference.json").read_text())
    healthy, sick = (json.loads((tmp_path / "out" / f"{job}.json").read_text()) for job in ("healthy", "sick"))
    for report in (healthy, sick):
        assert report["meta"]["world_size"] == 2 and not any("stopped" in n for n in report["notes"])
    assert problems(healthy) == []  # no false grad.none for the parameters held by rank 1 only
    # gradient norms of the whole model, not of one shard: the unsharded model's on the same data
    series = healthy["series"]["grad_norm/total"]
    assert len(series["step"]) == 12
    expected = [reference["healthy"][step] for step in series["step"]]
    assert series["value"] == pytest.approx(expected, rel=1e-4)
    assert sick["series"]["grad_norm/total"]["value"][0] == pytest.approx(reference["sick"][0], rel=1e-4)
    assert "lr.too_high" in problems(sick)
    if kind.startswith("fsdp1"):  # each original parameter is judged, also inside FSDP1's flat parameter
        assert "update_ratio/_fsdp_wrapped_module.4.weight" in sick["series"]


def test_fsdp2_under_nndoctor_watch_names_the_divergence(tmp_path):
    done, report = torchrun(tmp_path, "fsdp2", "sick", script=SHARDED_SCRIPT)
    assert done.stdout.count("Report written to") == 1 and report["meta"]["world_size"] == 2
    assert "lr.too_high" in problems(report) and not any("stopped" in n for n in report["notes"])
