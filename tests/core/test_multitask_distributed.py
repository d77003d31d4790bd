"""Multi-task runs under torchrun: 2 CPU processes (gloo) train one shared model in DDP.

One run folder (rank 0's), finished, with metrics close to a one-process run; nothing left in
the temp folder; the processes' gradients and task-weighting state agree step by step."""

from __future__ import annotations

import os
import socket

import pytest

from tests.core.test_distributed import train_cli  # TLSTUDIO_HOME, OMP_NUM_THREADS=1, TMPDIR under tmp_path
from tests.core.test_multitask_run import make_two_task_set
from tlstudio.core.runs import folder as runs

COMMON = ["--tasks", "object,colour", "--backbone", "test_resnet", "--scratch", "--image-size", "48",
          "--freeze", "none", "--epochs", "3", "--batch-size", "8", "--lr", "0.02", "--augment", "none",
          "--precision", "fp32", "--workers", "0", "--warmup-epochs", "0", "--seed", "0", "--val-fraction", "0.3",
          "--weighting", "dwa"]


@pytest.mark.slow  # two `tlstudio train` processes (one of them torchrun's pair): ~45 s on the loaded 2-core box
def test_torchrun_multitask_two_processes_match_one(tmp_path):
    data = make_two_task_set(tmp_path / "d", n=64, size=48)
    one = train_cli(tmp_path, [str(data), *COMMON], "one", 1)
    two = train_cli(tmp_path, [str(data), *COMMON], "two", 2)
    # only rank 0 printed and wrote a run folder; the other process's scratch folder is gone
    assert two.stdout.count("Run ") == 1, two.stdout
    assert two.stdout.count("per task (best epoch)") == 1
    assert not list((tmp_path / "tmp").glob("tlstudio-rank-*"))
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())
    info_one, info_two = runs.read_run(tmp_path / "one"), runs.read_run(tmp_path / "two")
    assert info_two.status == "finished" and info_two.task == "multitask" and info_two.epochs_done == 3
    log = (tmp_path / "two" / runs.LOG_TXT).read_text()
    n_train = info_two.data["n_train"]
    assert f"Distributed: process 1 of 2, {n_train // 2} training images" in log  # each trained on half
    assert info_one.data["n_train"] == n_train  # the same split
    for info in (info_one, info_two):
        assert info.metrics["val_acc/colour"] >= 0.8
    assert info_two.metrics["val_score"] >= info_one.metrics["val_score"] - 0.15, (info_one.metrics, info_two.metrics)
    hist = runs.read_history(tmp_path / "two")
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]  # it learned


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = (("uncertainty", True), ("gradnorm", False), ("dwa", False))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Two processes, different data: after each step the shared model, the learned task
    weights and the weighting's state must be the same on both (one spawn for every case:
    starting a process costs seconds here)."""
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for weighting, pcgrad in CASES:
        torch.save(_train_a_little(rank, world, weighting, pcgrad), os.path.join(out_dir, f"{weighting}{rank}.pt"))
    tdist.barrier()  # no collective in flight when gloo's threads are torn down (a rare SIGABRT)
    tdist.destroy_process_group()


def _train_a_little(rank: int, world: int, weighting: str, pcgrad: bool) -> dict:
    import timm
    import torch

    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.runtime.parallel import DistContext, wrap_ddp
    from tlstudio.core.tasks.multitask import distributed
    from tlstudio.core.tasks.multitask.config import MultiTaskConfig
    from tlstudio.core.tasks.multitask.objective import MTContext, MultiTaskObjective

    schema = {"tasks": [{"name": "a", "type": "categorical", "classes": ["x", "y", "z"]},
                        {"name": "b", "type": "numeric", "classes": [], "mean": 0.0, "std": 1.0}]}
    cfg = MultiTaskConfig(data_dir=".", weighting=weighting, pcgrad=pcgrad, relatedness_every=1)
    obj = MultiTaskObjective(schema, cfg)
    torch.manual_seed(0)  # the same starting weights on both
    model = obj.build_model(lambda n: timm.create_model("test_resnet", num_classes=n))
    g = torch.Generator().manual_seed(100 + rank)  # different images and labels per process
    n = 6
    samples = [Sample(f"{i}.png", -1, {"a": int(torch.randint(0, 3, (1,), generator=g)),
                                       **({"b": float(torch.randn(1, generator=g))} if i % 2 or rank else {})})
               for i in range(n)]
    ddp = wrap_ddp(model, DistContext(rank=rank, world_size=world), torch.device("cpu"))
    obj.setup(MTContext(model=ddp, device=torch.device("cpu"), classes=["a", "b"], precision=None, config=cfg,
                        train_samples=samples))
    extra = [p for m in obj.extra_modules() for p in m.parameters()]
    opt = torch.optim.SGD(list(model.parameters()) + extra, lr=0.05)
    for epoch in range(3):
        obj.on_epoch_start(epoch)
        for _step in range(2):
            x = torch.randn(n, 3, 32, 32, generator=g)
            loss, _ = obj.loss(ddp, x, None, torch.arange(n))
            opt.zero_grad()
            loss.backward()
            distributed.average_grads(extra)
            opt.step()
        obj.sync_epoch_losses()
        obj.on_epoch_end(epoch)
    flat = torch.cat([p.detach().reshape(-1) for p in list(model.parameters()) + extra])
    return {"flat": flat, "weights": obj.weighting.weights(), "epoch_losses": obj.epoch_train_losses()}


def test_processes_stay_in_step(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for weighting, _ in CASES:
        r0, r1 = (torch.load(tmp_path / f"{weighting}{r}.pt", weights_only=True) for r in (0, 1))
        assert torch.allclose(r0["flat"], r1["flat"], atol=1e-6), weighting  # model and learned weights
        assert r0["weights"] == pytest.approx(r1["weights"], abs=1e-9), weighting
        assert r0["epoch_losses"] == pytest.approx(r1["epoch_losses"], abs=1e-9), weighting
        assert any(abs(w - 1.0) > 1e-4 for w in r0["weights"].values()), weighting  # the weights did move
