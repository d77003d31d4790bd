"""What keeps the processes of a multi-task torchrun run in step (no-ops in one process).

DDP averages the gradients of the shared model (or of the heads, head-only). The rest of a
multi-task step is per-process state that must not drift apart, or the processes would train
different models and could stop at different epochs (and then wait for each other forever):
  - the task weightings' observations (per-task losses, GradNorm's gradient norms) and the
    epoch's per-task training losses (DWA): averaged over the processes before use;
  - the learned task weights (uncertainty): their gradients averaged like DDP's;
  - validation: rank 0 validates, the others take its metrics (same best epoch, same early stop);
  - a non-finite loss or a Stop on any process ends the step on every process.
Every function is a collective: every process calls it at the same point of the run.
"""

from __future__ import annotations

from typing import Any


def active() -> bool:
    try:
        import torch.distributed as tdist
    except ImportError:  # a torch built without distributed support
        return False
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def mean_over_ranks(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Each key's mean over the processes that have it (a key absent on a process does not
    count there; absent everywhere: left out)."""
    if not active():
        return dict(values)
    import torch
    import torch.distributed as tdist

    t = torch.zeros(2, len(keys), dtype=torch.float64)
    for i, k in enumerate(keys):
        if k in values:
            t[0, i], t[1, i] = float(values[k]), 1.0
    tdist.all_reduce(t)
    return {k: float(t[0, i] / t[1, i]) for i, k in enumerate(keys) if t[1, i] > 0}


def sum_over_ranks(values: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Each key's sum over the processes (0 where a process lacks it)."""
    if not active():
        return {k: float(values.get(k, 0.0)) for k in keys}
    import torch
    import torch.distributed as tdist

    t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64)
    tdist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any of them."""
    if not active():
        return bool(flag)
    import torch
    import torch.distributed as tdist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def average_grads(params: list[Any]) -> None:
    """Average the gradients of parameters DDP does not hold (a missing gradient counts as 0)."""
    if not params or not active():
        return
    import torch
    import torch.distributed as tdist

    world = tdist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        tdist.all_reduce(p.grad)
        p.grad /= world


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (picklable values)."""
    if not active():
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
