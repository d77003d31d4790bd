"""Issue 17 item 7: a full disk and read-only destinations on REAL file systems (a 2 MB tmpfs, a
read-only remount), with the writers' real errors (safetensors' SafetensorError, torch.save's
RuntimeError): one UserError line naming the file, the previous file intact, no temp files."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tlstudio.core.errors import UserError


def _mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 2 MB file system (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    if os.geteuid() != 0 or not _mount(mnt, "2M"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_full_disk_while_saving_safetensors_names_the_file(tiny_fs):
    import torch

    from tlstudio.core.atomic import WriteError, atomic_save_safetensors

    target = tiny_fs / "model.safetensors"
    atomic_save_safetensors(target, {"w": torch.zeros(1000)})
    before = target.read_bytes()
    with pytest.raises(WriteError) as err:
        atomic_save_safetensors(target, {"w": torch.zeros(1_000_000)})  # 4 MB on a 2 MB disk
    assert isinstance(err.value, UserError) and err.value.errno == errno.ENOSPC
    msg = str(err.value)
    assert str(target) in msg and "disk is full" in msg and "unchanged" in msg and "\n" not in msg
    assert target.read_bytes() == before and _leftovers(tiny_fs) == []


def test_full_disk_while_torch_save_names_the_file(tiny_fs):
    import torch

    from tlstudio.core.atomic import WriteError, atomic_torch_save

    target = tiny_fs / "last.pt"
    with pytest.raises(WriteError, match="disk is full") as err:
        atomic_torch_save(target, {"model": torch.zeros(1_000_000)})
    assert str(target) in str(err.value) and not target.exists() and _leftovers(tiny_fs) == []


def test_real_bugs_are_not_disguised_as_a_full_disk(tmp_path):
    from tlstudio.core.atomic import atomic_write

    def broken(tmp: str) -> None:
        raise RuntimeError("unexpected position")

    with pytest.raises(RuntimeError, match="unexpected position"):
        atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


def test_read_only_destination_is_one_line(tiny_fs):
    from tlstudio.core.atomic import WriteError, atomic_write_json, ensure_writable_folder

    (tiny_fs / "run").mkdir()
    _read_only(tiny_fs)
    with pytest.raises(WriteError, match="read-only") as err:
        atomic_write_json(tiny_fs / "run" / "eval.json", {"a": 1})
    assert str(tiny_fs / "run" / "eval.json") in str(err.value) and err.value.errno == errno.EROFS
    with pytest.raises(WriteError, match="read-only"):
        ensure_writable_folder(tiny_fs / "run" / "new")
    with pytest.raises(WriteError, match="is a file"):
        ensure_writable_folder(Path(__file__))


def test_engine_sees_the_full_disk_as_oserror_enospc(tiny_fs):
    """training/engine._save catches OSError with errno ENOSPC: the safetensors error reaches it so."""
    import torch

    from tlstudio.core.atomic import atomic_save_safetensors

    with pytest.raises(OSError) as err:
        atomic_save_safetensors(tiny_fs / "m.safetensors", {"w": torch.zeros(1_000_000)})
    assert err.value.errno == errno.ENOSPC


def test_training_onto_a_full_disk_ends_in_one_line_and_a_failed_run(tmp_path, capsys):
    """The whole path: `tlstudio train --out` on a 3 MB disk; config, split and log fit, the
    weights (20 MB) do not: one line naming the file, run.json says failed, not running."""
    from tlstudio.cli.main import main
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.runs.folder import read_run

    mnt = tmp_path / "small"
    if os.geteuid() != 0 or not _mount(mnt, "3M"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        data = make_synthetic_folder(tmp_path / "data", per_class=6, size=32, easy=True)
        rc = main(["train", str(data), "--backbone", "resnet10t", "--scratch", "--epochs", "1", "--image-size", "32",
                   "--batch-size", "8", "--out", str(mnt / "run")])
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.startswith("tlstudio: error:")]
        assert len(lines) == 1 and str(mnt / "run") in lines[0] and "disk" in lines[0].lower(), err
        assert read_run(mnt / "run").status == "failed"
        assert not [p for p in (mnt / "run").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
