"""Guards around a run folder, so that a run never destroys work nor ends on a traceback.

- `claim_out_dir(path)`: the folder a new run writes to must be new, empty, or the remains of a
  start that never saved an epoch; never a file, never someone's folder of other things, never a
  folder another job is writing (a lock file holds the owner's pid; a dead owner's lock is stale
  and taken over). `claim_out_dir(path, resume=True)` locks an existing run for resuming.
- `early_stop_patience(n_train, configured)`: tiny data sets give noisy validation scores, so
  they wait longer before stopping; `early_stop_message(...)` is the log line that says why.
- `check_resumable(run_dir, split)`: one clear line when a run cannot continue (its images moved,
  nothing saved yet).
- `check_weights_match(run_dir)`: model.safetensors and run.json agree on the classes, before
  predict/export load them.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlstudio.core.atomic import ensure_writable_folder
from tlstudio.core.errors import UserError
from tlstudio.core.runs.folder import BEST_WEIGHTS, CONFIG_JSON, LAST_CKPT, LOG_TXT, RUN_JSON, RunError

LOCK_FILE = ".tlstudio.lock"
# files a start that never finished an epoch leaves behind (a restart may overwrite them)
_START_FILES = {RUN_JSON, CONFIG_JSON, "split.json", LOG_TXT, "history.csv", LOCK_FILE}
_START_DIRS = {"tensorboard", "tb"}
_IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


class RunFolderError(UserError):
    """The run folder cannot be used as asked (message names it and says what to do)."""


class RunLockedError(RunFolderError):
    """Another job is writing this run folder."""


# ---- the lock -------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class RunLock:
    """Held while a job writes a run folder; `release()` (or leaving a `with` block) frees it.
    `stale` describes a dead owner's lock that was taken over (None when there was none);
    `restarted` is True when the folder held a start that never saved an epoch."""

    run_dir: Path
    path: Path
    stale: str | None = None
    restarted: bool = False
    _held: bool = field(default=True, repr=False)

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                if _read_lock(self.path).get("pid") == os.getpid():
                    self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _take_lock(run_dir: Path) -> RunLock:
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    stale = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            pid, host = int(owner.get("pid") or 0), owner.get("host")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner.get("started") or 0))
            if host not in (None, me["host"]):
                raise RunLockedError(
                    f"{run_dir} is being written by a TL Studio job on {host} (process {pid}, since {when}). "
                    f"Wait for it, choose another folder, or delete {path} if that job is gone.") from None
            if _pid_alive(pid) and owner:
                raise RunLockedError(
                    f"{run_dir} is being written by another TL Studio job (process {pid}, since {when}). "
                    "Wait for it to finish, or choose another output folder.") from None
            stale = f"process {pid} (since {when}) ended without releasing it"
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return RunLock(run_dir, path, stale)
    raise RunLockedError(f"{run_dir}: could not take the lock {path} (another job keeps taking it).")


# ---- claiming the output folder ---------------------------------------------------------------
def _visible(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name.lower() not in _IGNORED]


def _unfinished_start(run_dir: Path, entries: list[Path]) -> bool:
    """The remains of a run that never saved an epoch: only our start files, no weights, and a
    run.json (if any) that says 0 epochs; a config.json must be ours (a TrainConfig)."""
    names = {p.name for p in entries}
    if not names <= _START_FILES | _START_DIRS or not (names & {RUN_JSON, CONFIG_JSON}):
        return False
    if (run_dir / LAST_CKPT).exists() or (run_dir / BEST_WEIGHTS).exists():
        return False
    for name in (RUN_JSON, CONFIG_JSON):
        p = run_dir / name
        if p.exists():
            try:
                d = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            if not isinstance(d, dict) or "schema_version" not in d:
                return False
            if name == RUN_JSON and int(d.get("epochs_done") or 0) > 0:
                return False
            if name == CONFIG_JSON and "data_dir" not in d:
                return False
    return True


def claim_out_dir(path: str | Path, *, resume: bool = False) -> RunLock:
    """Make `path` this run's folder and lock it; RunFolderError / RunLockedError / WriteError
    (one line each) when it cannot be. New runs: the folder may not exist yet, be empty, or hold
    a start that never saved an epoch (`restarted`); never a file or a folder of other things.
    `resume=True`: the folder must hold a run."""
    run_dir = Path(path).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file: give a folder for the run (it is created if it does not exist).")
    restarted = False
    if resume:
        if not (run_dir / RUN_JSON).is_file():
            raise RunFolderError(f"{run_dir} holds no run to resume ({RUN_JSON} missing).")
    elif run_dir.is_dir():
        try:
            entries = _visible(run_dir)
        except OSError as exc:
            raise RunFolderError(f"{run_dir}: cannot list the folder ({exc.strerror or exc}).") from None
        if entries:
            if (run_dir / LOCK_FILE).exists():
                _take_lock(run_dir).release()  # a live owner raises RunLockedError here
            if (run_dir / RUN_JSON).is_file() and not _unfinished_start(run_dir, entries):
                raise RunFolderError(f"{run_dir} already holds a run: resume it (tlstudio resume {run_dir}), "
                                     "or choose another output folder.")
            if not _unfinished_start(run_dir, entries):
                shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise RunFolderError(f"{run_dir} is not empty ({shown}): choose an empty or new folder for the run, "
                                     "so nothing in it is overwritten.")
            restarted = True
    ensure_writable_folder(run_dir)
    lock = _take_lock(run_dir)
    lock.restarted = restarted
    return lock


# ---- early stopping ---------------------------------------------------------------------------
def early_stop_patience(n_train_images: int, configured: int | None, explicit: bool = False) -> int | None:
    """Epochs without improvement before stopping. Validation scores of small sets move in big
    noisy steps (6 validation images: accuracy in steps of 17 points), so small sets wait longer;
    a patience the user set (`explicit`) is kept as is; None keeps early stopping off."""
    if configured is None or explicit:
        return configured
    n = max(0, int(n_train_images))
    floor = 12 if n < 100 else 8 if n < 500 else 6 if n < 2000 else 0
    return max(configured, floor)


def early_stop_message(epoch: int, patience: int, best_epoch: int, metric: str, best_value: float | None,
                       n_train_images: int) -> str:
    """The log line when a run stops early (epochs 0-based, shown 1-based)."""
    value = "" if best_value is None else (f" ({best_value:.1%})" if "acc" in metric or "f1" in metric
                                           else f" ({best_value:.4g})")
    return (f"Stopped early after epoch {epoch + 1}: {metric} has not improved for {patience} epochs since "
            f"epoch {best_epoch + 1}{value}, whose weights are kept. Patience {patience} epochs for "
            f"{n_train_images} training images (--early-stop-patience changes it; 0 or none turns it off).")


# ---- resuming ---------------------------------------------------------------------------------
def check_resumable(run_dir: str | Path, split: Any) -> None:
    """RunFolderError (one line) when the run cannot continue: nothing saved yet, or none of its
    training images where they were (moved, renamed, disk not mounted)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file():
        raise RunFolderError(f"{run_dir} holds no run to resume ({RUN_JSON} missing).")
    if not (run_dir / LAST_CKPT).is_file():
        raise RunFolderError(
            f"{run_dir} cannot be resumed: it stopped before its first epoch was saved ({LAST_CKPT} missing). "
            f"Start it again into the same folder: tlstudio train --config {run_dir / CONFIG_JSON} --out {run_dir}")
    train = list(getattr(split, "train", []) or [])
    if not train:
        raise RunFolderError(f"{run_dir}: its split lists no training images, so there is nothing to train on.")
    found = sum(1 for s in train if os.path.isfile(s.path))
    if found == 0:
        where = os.path.dirname(os.path.commonpath([s.path for s in train])) if len(train) > 1 else train[0].path
        raise RunFolderError(
            f"{run_dir} cannot be resumed: none of its {len(train)} training images are where they were "
            f"(e.g. {train[0].path}; under {where}). Put the images back, or train a new run on their new folder.")


# ---- weights vs run.json ------------------------------------------------------------------
def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise RunError(f"{path}: not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise RunError(f"{path}: not a safetensors file (header size {n:,}).")
        try:
            return json.loads(f.read(n))
        except ValueError:
            raise RunError(f"{path}: not a safetensors file (unreadable header).") from None


def check_weights_match(run_dir: str | Path, weights: str | Path | None = None) -> None:
    """RunError (one line) unless the weights file and run.json agree on the number of classes
    (and on the class names the weights were saved with). Reads only the file's header."""
    from tlstudio.core.runs.folder import read_run

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    spec = info.model
    if len(spec.classes) != spec.num_classes:
        raise RunError(f"{run_dir / RUN_JSON}: lists {len(spec.classes)} class names but num_classes is "
                       f"{spec.num_classes}; the file was edited or damaged.")
    path = Path(weights) if weights else run_dir / BEST_WEIGHTS
    if not path.is_file():
        return  # load_run_model says the weights are missing
    try:
        header = _safetensors_header(path)
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    saved = (header.get("__metadata__") or {}).get("tlstudio_model")
    if saved:
        try:
            saved_classes = json.loads(saved).get("classes")
        except ValueError:
            saved_classes = None
        if saved_classes is not None and list(saved_classes) != list(spec.classes):
            raise RunError(f"{path} was trained on {len(saved_classes)} classes ({', '.join(saved_classes[:5])}) "
                           f"but {run_dir / RUN_JSON} lists {len(spec.classes)} ({', '.join(spec.classes[:5])}): "
                           "they come from different runs.")
    head = _classifier_rows(spec.backbone, header)
    if head is not None and head[1] != spec.num_classes:
        raise RunError(f"{path} has {head[1]} outputs ({head[0]}) but {run_dir / RUN_JSON} lists "
                       f"{spec.num_classes} classes: the weights and run.json come from different runs.")


def _classifier_rows(backbone: str, header: dict[str, Any]) -> tuple[str, int] | None:
    """(tensor name, number of outputs) of the classifier in a safetensors header, if known: the
    usual timm names first, then the model's own `pretrained_cfg["classifier"]` (imports timm)."""

    def rows(names: list[str]) -> tuple[str, int] | None:
        for n in names:
            t = header.get(n)
            if isinstance(t, dict) and t.get("shape"):
                return n, int(t["shape"][0])
        return None

    found = rows(["fc.weight", "head.fc.weight", "classifier.weight", "head.weight", "last_linear.weight"])
    if found is not None:
        return found
    try:
        from timm.models import get_pretrained_cfg_value

        cls = get_pretrained_cfg_value(backbone, "classifier")
    except Exception:  # noqa: BLE001 - unknown name or timm without the helper
        return None
    return rows([f"{c}.weight" for c in ([cls] if isinstance(cls, str) else list(cls or []))])
