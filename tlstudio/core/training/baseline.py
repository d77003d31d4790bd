"""The from-scratch baseline: the same run from random initialisation. Does transfer help here?"""

from __future__ import annotations

from collections.abc import Generator

from tlstudio.core.events import Event, Log, Warn
from tlstudio.core.runs import folder as runs


def scratch_baseline(config, run_dir, info, stop, pause, logger) -> Generator[Event, None, runs.RunInfo]:
    """Train ``config`` from scratch into run_dir/baseline (continuing an interrupted one) and
    record the gain of transfer (negative transfer when the pretrained start did worse)."""
    from tlstudio.core.training.engine import fit

    base_cfg = config.model_copy(update={
        "init": "scratch", "weights_file": None, "init_run": None, "baseline": False,
        "freeze": "none", "frozen_groups": None, "out_dir": str(run_dir / runs.BASELINE_DIR),
    })
    yield Log("Training the same model from scratch (baseline) to measure the gain of transfer")
    base_dir = run_dir / runs.BASELINE_DIR
    if runs.is_run_dir(base_dir):  # an interrupted baseline: continue it
        base_gen = fit(base_cfg, stop, pause, phase="baseline", _resume_from=base_dir) \
            if (base_dir / runs.LAST_CKPT).is_file() else None
    else:
        base_gen = fit(base_cfg, stop, pause, phase="baseline")
    base = runs.read_run(base_dir) if base_gen is None else (yield from base_gen)
    if base.status not in ("finished", "early_stopped") or base.best_val_acc is None:
        yield Warn("The from-scratch baseline did not finish; the gain of transfer is unknown")
        return info
    gain = (info.best_val_acc or 0.0) - base.best_val_acc
    info.baseline = {
        "run_dir": str(base_dir),
        "transfer_val_acc": info.best_val_acc,
        "scratch_val_acc": base.best_val_acc,
        "gain": gain,
        "negative_transfer": gain < 0,
    }
    runs.write_run(run_dir, info)
    msg = (f"Transfer {info.best_val_acc:.1%} vs from scratch {base.best_val_acc:.1%}: "
           f"gain {gain * 100:+.1f} points")
    if gain < 0:
        ev: Event = Warn(f"Negative transfer: {msg}. The pretrained weights hurt on this data; "
                         "try unfreezing more layers or another backbone.")
    else:
        ev = Log(msg)
    logger(ev)
    yield ev
    return info
