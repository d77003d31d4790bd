"""`tlstudio train` under torchrun: 2 CPU processes (gloo) finish as well as one process."""

from __future__ import annotations

import os
import subprocess
import sys

from tlstudio.core.runs import folder as runs
from tlstudio.core.data.synthetic import make_synthetic_folder

COMMON = ["--backbone", "test_resnet", "--scratch", "--image-size", "48", "--freeze", "none", "--epochs", "4",
          "--batch-size", "8", "--lr", "0.01", "--augment", "none", "--precision", "fp32", "--workers", "0",
          "--warmup-epochs", "0", "--seed", "0"]


def _env(tmp_path):
    env = dict(os.environ)
    env["TLSTUDIO_HOME"] = str(tmp_path / "home")
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = str(tmp_path / "tmp")  # where a non-main rank's scratch files would go
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def train_cli(tmp_path, args: list[str], out: str, processes: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """`tlstudio train ARGS --out tmp_path/OUT` in one process or under torchrun with two; it must succeed."""
    cmd = (TORCHRUN if processes == 2 else [sys.executable]) + ["-m", "tlstudio", "train", *args,
                                                                 "--out", str(tmp_path / out)]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_two_processes_match_one(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=24, size=48, easy=True)
    one = train_cli(tmp_path, [str(data), *COMMON], "one", 1)
    two = train_cli(tmp_path, [str(data), *COMMON], "two", 2)
    # only rank 0 printed the run header and wrote the run folder
    assert two.stdout.count("Run ") == 1, two.stdout
    info_one, info_two = runs.read_run(tmp_path / "one"), runs.read_run(tmp_path / "two")
    assert info_two.status == "finished"
    assert info_one.best_val_acc > 0.8
    assert info_two.best_val_acc >= info_one.best_val_acc - 0.1, (info_one.best_val_acc, info_two.best_val_acc)
    # the second process left no checkpoints behind (its scratch folder is removed at the end)
    assert not list((tmp_path / "tmp").glob("tlstudio-rank-*"))
