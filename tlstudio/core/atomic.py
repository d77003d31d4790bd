"""Atomic file writes: a temp file in the same folder, fsync, then rename.

A crash, SIGKILL or full disk while writing leaves the previous file intact. A write that fails
because the disk is full, the folder is read-only or not ours raises `WriteError`: a UserError
(one line naming the file, no traceback) that is also an OSError with the matching errno, so
callers that handle OSError (ENOSPC) keep working. Writers that do not raise OSError on a full
disk are recognised too: safetensors' SafetensorError ("No space left on device") and
torch.save's RuntimeError ("file write failed").
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_DENIED = {errno.EROFS, errno.EACCES, errno.EPERM}
_LOW_SPACE = 1 << 20  # under this many free bytes right after a failed write, the disk was full


class WriteError(UserError, OSError):
    """A file could not be written: the disk is full, the folder is read-only or not writable.
    ``errno`` says which (ENOSPC, EROFS, EACCES...), ``filename`` names the file."""

    def __init__(self, code: int, message: str, filename: str):
        OSError.__init__(self, code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _why(code: int) -> str:
    if code in _FULL:
        return "the disk is full (no space left on the device)"
    if code == errno.EROFS:
        return "the folder is on a read-only disk"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (the folder is not writable)"
    return os.strerror(code)


def write_error(path: str | Path, code: int, previous_kept: bool = True) -> WriteError:
    """The WriteError for `path` and an errno (also for callers that check space themselves)."""
    kept = f"; the previous {Path(path).name} is unchanged" if previous_kept and Path(path).exists() else ""
    hint = "Free some space, then try again." if code in _FULL else "Choose a folder you can write to."
    return WriteError(code, f"Cannot write {path}: {_why(code)}{kept}. {hint}", str(path))


def _error_code(exc: BaseException, folder: Path) -> int | None:
    """The errno a failed write stands for, if it is one a user can fix (space, permissions)."""
    if isinstance(exc, WriteError):
        return None  # already explained
    if isinstance(exc, OSError) and exc.errno in _FULL | _DENIED:
        return exc.errno
    text = str(exc)
    if "No space left" in text or "StorageFull" in text or "os error 28" in text or "code: 28" in text:
        return errno.ENOSPC
    if "Read-only file system" in text or "os error 30" in text:
        return errno.EROFS
    if isinstance(exc, (RuntimeError, OSError)) or type(exc).__name__ == "SafetensorError":
        try:  # torch.save says only "file write failed": look at the disk (temp file still there)
            if shutil.disk_usage(folder).free < _LOW_SPACE:
                return errno.ENOSPC
        except OSError:
            pass
    return None


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move tmp_path onto ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
        return
    except BaseException as exc:
        code = _error_code(exc, path.parent) if isinstance(exc, Exception) else None
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if code is None:
            raise
        err = write_error(path, code)
    # raised outside the except block, with no link to the writer's frames: they may hold the
    # failed writer's buffers or an open handle of the deleted temp file (keeping the disk full)
    raise err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, _w)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and prove a file can be written in it; WriteError otherwise
    (checked before long work starts, so a read-only destination fails at once, in one line)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tlstudio-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise WriteError(errno.ENOTDIR, f"Cannot write into {folder}: it is a file, not a folder.", str(folder)) from None
    except NotADirectoryError:
        raise WriteError(errno.ENOTDIR, f"Cannot write into {folder}: part of that path is a file, not a folder.",
                         str(folder)) from None
    except OSError as exc:
        code = exc.errno if exc.errno in _FULL | _DENIED else None
        if code is None:
            raise
        hint = "Free some space, then try again." if code in _FULL else "Choose a folder you can write to."
        raise WriteError(code, f"Cannot write into {folder}: {_why(code)}. {hint}", str(folder)) from None
    return folder
