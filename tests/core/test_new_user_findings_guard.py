"""Issue 17 items 5, 6, 9: the run-folder guards (claim + lock, patience, resumable, weights vs run.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlstudio.core.runs.guard import (
    LOCK_FILE,
    RunFolderError,
    RunLockedError,
    check_resumable,
    check_weights_match,
    claim_out_dir,
    early_stop_message,
    early_stop_patience,
)


# ---- item 6 -----------------------------------------------------------------------------------
def test_claim_refuses_a_file_and_a_folder_of_other_things(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    with pytest.raises(RunFolderError, match="is a file"):
        claim_out_dir(f)
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own settings"}')  # the user's, not a TL Studio config
    with pytest.raises(RunFolderError, match="not empty"):
        claim_out_dir(mine)
    assert (mine / "config.json").read_text() == '{"my": "own settings"}'
    assert not (mine / LOCK_FILE).exists()


def test_claim_new_and_empty_folders_and_lock_release(tmp_path):
    with claim_out_dir(tmp_path / "new" / "run") as lock:
        assert (tmp_path / "new" / "run" / LOCK_FILE).is_file() and not lock.restarted
    assert not (tmp_path / "new" / "run" / LOCK_FILE).exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    claim_out_dir(tmp_path / "empty").release()


def test_second_job_on_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    run = tmp_path / "run"
    first = claim_out_dir(run)
    (run / "config.json").write_text(json.dumps({"schema_version": 1, "data_dir": "x"}))
    with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        claim_out_dir(run)
    with pytest.raises(RunLockedError):
        claim_out_dir(run, resume=True) if (run / "run.json").exists() else claim_out_dir(run)
    first.release()


def test_lock_of_a_dead_process_is_stale_and_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "started": 0}))
    (run / "config.json").write_text(json.dumps({"schema_version": 1, "data_dir": "x"}))
    lock = claim_out_dir(run)  # a start killed before its first epoch: restartable
    assert lock.restarted
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_run_with_saved_epochs_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema_version": 1, "epochs_done": 3}))
    (run / "last.pt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="already holds a run: resume it"):
        claim_out_dir(run)
    claim_out_dir(run, resume=True).release()
    with pytest.raises(RunFolderError, match="no run to resume"):
        claim_out_dir(tmp_path / "nothing", resume=True)


# ---- item 5 -----------------------------------------------------------------------------------
def test_patience_grows_on_small_sets_and_respects_the_user():
    assert early_stop_patience(30, 5) >= 10
    assert early_stop_patience(30, 5) > early_stop_patience(1000, 5) > early_stop_patience(50_000, 5) == 5
    assert early_stop_patience(30, 20) == 20  # never lower than configured
    assert early_stop_patience(30, 3, explicit=True) == 3  # the user's own number
    assert early_stop_patience(30, None) is None


def test_early_stop_message_says_why():
    msg = early_stop_message(12, 12, 0, "val_acc", 0.833, 30)
    assert "epoch 13" in msg and "12 epochs" in msg and "epoch 1" in msg and "83.3%" in msg and "30 training" in msg


# ---- item 9 -----------------------------------------------------------------------------------
def _split(paths):
    from tlstudio.core.data.dataset import Sample, Split

    return Split([Sample(str(p), 0) for p in paths], [], [], 0, 0.2)


def test_resume_refused_when_the_images_moved(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "last.pt").write_bytes(b"x")
    imgs = [tmp_path / "data" / f"{i}.png" for i in range(3)]
    with pytest.raises(RunFolderError, match="none of its 3 training images"):
        check_resumable(run, _split(imgs))
    imgs[0].parent.mkdir()
    imgs[0].write_bytes(b"x")
    check_resumable(run, _split(imgs))  # some found: the engine skips the rest with a warning


def test_resume_before_the_first_save_says_how_to_restart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(RunFolderError, match="before its first epoch was saved") as err:
        check_resumable(run, _split([tmp_path / "x.png"]))
    assert "--out" in str(err.value)


def _fake_run(tmp_path, classes, head_rows, saved_classes=None):
    import torch

    from tlstudio.core.atomic import atomic_save_safetensors
    from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_run

    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    spec = ModelSpec(backbone="resnet18", num_classes=len(classes), classes=classes, image_size=32)
    write_run(run, RunInfo(config={}, model=spec))
    meta = {"tlstudio_model": spec.model_copy(update={"classes": saved_classes or classes,
                                                       "num_classes": head_rows}).model_dump_json()}
    atomic_save_safetensors(run / "model.safetensors", {"fc.weight": torch.zeros(head_rows, 4),
                                                        "fc.bias": torch.zeros(head_rows)}, metadata=meta)
    return run


def test_weights_and_run_json_disagree(tmp_path):
    from tlstudio.core.runs.folder import RunError

    run = _fake_run(tmp_path, ["a", "b", "c"], 3)
    check_weights_match(run)
    run = _fake_run(tmp_path, ["a", "b", "c"], 2, saved_classes=["a", "b"])
    with pytest.raises(RunError, match="different runs") as err:
        check_weights_match(run)
    assert "\n" not in str(err.value)


def test_weights_with_another_head_size_are_named(tmp_path):
    from tlstudio.core.runs.folder import RunError

    run = _fake_run(tmp_path, ["a", "b", "c"], 5)
    with pytest.raises(RunError, match="has 5 outputs \\(fc.weight\\)"):
        check_weights_match(run)
