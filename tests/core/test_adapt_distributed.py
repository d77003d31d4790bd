"""Domain adaptation (MCC) and semi-supervised pseudo-labels under torchrun: 2 CPU processes (gloo)
give one run folder, as one process does, with close metrics and no files left by rank 1."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image, ImageOps

from tests.core.test_distributed import train_cli  # TLSTUDIO_HOME, OMP_NUM_THREADS=1, TMPDIR under tmp_path
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.core.runs import folder as runs

COMMON = ["--backbone", "test_resnet", "--scratch", "--image-size", "48", "--freeze", "none", "--epochs", "3",
          "--batch-size", "8", "--lr", "0.01", "--augment", "none", "--precision", "fp32", "--workers", "0",
          "--warmup-epochs", "0", "--seed", "0"]


def _flat(src: Path, dst: Path, invert: bool) -> Path:
    """The images of a class-folder tree in one folder without labels (inverted: another 'camera')."""
    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*.png")):
        img = Image.open(p).convert("RGB")
        (ImageOps.invert(img) if invert else img).save(dst / f"{p.parent.name}_{p.name}")
    return dst


def _one_and_two(tmp_path: Path, args: list[str], task: str):
    """The same run in one process and under torchrun with two: (RunInfo of one, RunInfo of two)."""
    one = train_cli(tmp_path, [*args, *COMMON], "one", 1, timeout=900)
    two = train_cli(tmp_path, [*args, *COMMON], "two", 2, timeout=900)
    _one_folder_no_leftovers(tmp_path, one, two)
    i1, i2 = runs.read_run(tmp_path / "one"), runs.read_run(tmp_path / "two")
    assert i2.status == "finished" and i2.task == task
    assert "Distributed: process 1 of 2" in two.stdout and "Distributed" not in one.stdout
    return i1, i2


def _one_folder_no_leftovers(tmp_path: Path, one, two) -> None:
    # rank 0 alone printed: the same run headers and phases as one process
    assert two.stdout.count("Run ") == one.stdout.count("Run "), two.stdout
    assert two.stdout.count("Phase 1 of 2") == 1 and two.stdout.count("Phase 2 of 2") == 1, two.stdout
    # rank 1 wrote nothing into the run folder and left nothing in TMPDIR
    assert not list((tmp_path / "tmp").glob("tlstudio-rank-*"))
    folders = {p.parent.relative_to(tmp_path).parts[0] for p in tmp_path.rglob(runs.RUN_JSON)}
    assert folders == {"one", "two"}, folders


@pytest.fixture
def source(tmp_path):
    return make_synthetic_folder(tmp_path / "source", per_class=16, size=48, seed=0, easy=True)


@pytest.mark.slow
def test_mcc_adaptation_under_torchrun_matches_one_process(tmp_path, source):
    raw = make_synthetic_folder(tmp_path / "t_raw", per_class=8, size=48, seed=1, easy=True)
    target = _flat(raw, tmp_path / "target", invert=True)
    args = [str(source), "--target", str(target), "--adapt", "mcc"]
    i1, i2 = _one_and_two(tmp_path, args, "adaptation")
    r1, r2 = i1.extra["adaptation"], i2.extra["adaptation"]
    assert r2["method"] == "mcc" and r2["target_images"] == 24
    # both sub-runs trained with DDP (rank 0's half of the source images per step) and finished
    for sub in ("source_only", "adapted"):
        info = runs.read_run(tmp_path / "two" / sub)
        assert info.status == "finished" and info.epochs_done == 3
    # metrics close to one process (each process sees half the source and half the target per epoch)
    assert r1["unadapted"]["source_val_acc"] > 0.8
    assert r2["unadapted"]["source_val_acc"] >= r1["unadapted"]["source_val_acc"] - 0.15, (r1, r2)
    assert r2["adapted"]["source_val_acc"] >= r1["adapted"]["source_val_acc"] - 0.2, (r1, r2)
    assert runs.read_history(tmp_path / "two" / "adapted")[-1]["epoch"] == 3
    split = runs.read_split(tmp_path / "two")
    assert len([s for s in split.train if s.domain == "target"]) == 24


@pytest.mark.slow
def test_pseudo_label_semi_supervised_under_torchrun_matches_one_process(tmp_path, source):
    unl = _flat(make_synthetic_folder(tmp_path / "u_raw", per_class=8, size=48, seed=3, easy=True),
                tmp_path / "unl", invert=False)
    args = [str(source), "--unlabeled", str(unl), "--semi-method", "pseudolabel", "--pseudo-threshold", "0.0",
            "--rounds", "2"]
    i1, i2 = _one_and_two(tmp_path, args, "semisupervised")
    r1, r2 = i1.extra["semisupervised"], i2.extra["semisupervised"]
    assert r2["method"] == "pseudolabel" and len(r2["pseudo_labels"]) == 2
    # rank 0's pseudo-labels are what every process trained on: the last round's sub-run lists them
    last = runs.read_run(tmp_path / "two" / "semi")
    assert last.status == "finished" and last.data["n_unlabelled"] == r2["pseudo_labels"][-1]["selected"] > 0
    assert (tmp_path / "two" / "review.json").is_file()
    assert r1["labelled_only"]["val_acc"] > 0.8
    assert r2["labelled_only"]["val_acc"] >= r1["labelled_only"]["val_acc"] - 0.15, (r1, r2)
    assert r2["semi"]["val_acc"] >= r1["semi"]["val_acc"] - 0.2, (r1, r2)


def test_shards_are_equal_disjoint_and_cover_the_images(monkeypatch):
    from tlstudio.core.tasks.adaptation.ranks import shard

    items = list(range(11))
    parts = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        parts.append(shard(items))
    assert len(parts[0]) == len(parts[1]) == 5  # equal: the same number of target batches per step
    assert not set(parts[0]) & set(parts[1]) and len(set(parts[0]) | set(parts[1])) == 10
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert shard(items) == items


def _dann_inputs(rank: int):
    """Rank ``rank``'s source batch, labels and target batch (each process its own images)."""
    import torch

    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3, 32, 32, generator=g)


def _dann_setup(rank: int):
    """The same tiny model and discriminator on every process, and a DANN objective whose target
    batches are a local stand-in (the unit under test is the loss, not the target loader)."""
    import torch

    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.tasks.adaptation.dann import DANNObjective, make_discriminator

    torch.manual_seed(0)
    model = create_model("test_resnet", 3, init="scratch")
    obj = DANNObjective([], hidden=16)
    obj.discriminator = make_discriminator(int(model.num_features), 16)
    obj.step, obj.max_steps = 5, 10  # the reversal passes a gradient
    x, y, xt = _dann_inputs(rank)
    obj.target = SimpleNamespace(next=lambda: xt)
    return model, obj, x, y


def _grads(model, obj) -> dict:
    return {**{f"body.{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
            **{f"disc.{k}": p.grad.clone() for k, p in obj.discriminator.named_parameters()}}


def _dann_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as tdist

    from tlstudio.core.runtime.parallel import distributed_context, wrap_ddp

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, obj, x, y = _dann_setup(rank)
    ddp = wrap_ddp(model, distributed_context(), torch.device("cpu"))  # as the engine wraps the model
    ddp.train()
    loss, _ = obj.loss(ddp, x, y, None)
    loss.backward()
    torch.save(_grads(model, obj), Path(out_dir) / f"rank{rank}.pt")
    tdist.barrier()  # no collective in flight when gloo's threads are torn down (a rare SIGABRT)
    tdist.destroy_process_group()


def test_dann_averages_body_and_discriminator_gradients_over_processes(tmp_path):
    """Under DDP the discriminator's gradients are averaged too (it is wrapped with the model),
    and the body's gradients include the domain loss through the reversal layer."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_dann_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    local = []
    for rank in (0, 1):  # the same step in one process on each rank's images, without DDP
        model, obj, x, y = _dann_setup(rank)
        model.train()
        obj.loss(model, x, y, None)[0].backward()
        local.append(_grads(model, obj))
    assert set(g0) == set(local[0]) and any(k.startswith("disc.") for k in g0)
    assert not torch.allclose(local[0]["disc.0.weight"], local[1]["disc.0.weight"])  # different images
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-6), k  # every process took the same step
        assert torch.allclose(g0[k], (local[0][k] + local[1][k]) / 2, atol=1e-5, rtol=1e-4), k
