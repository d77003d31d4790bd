"""Multi-process (DDP) context: `torchrun --nproc_per_node=N tlstudio train ...`.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; the engine then shards the data, wraps the model in
DistributedDataParallel (gloo on CPU, nccl on CUDA), and only rank 0 writes files and prints.
Never started from a GUI thread: the GUI launches the CLI as a separate process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistContext:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return DistContext()
    return DistContext(rank=rank, world_size=max(1, world), local_rank=local)


def init_distributed() -> DistContext:
    """The process group for this torchrun process (once); a plain DistContext without torchrun."""
    dist = distributed_context()
    if dist.enabled:
        import torch
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            import atexit

            # torn down while the interpreter is alive: gloo's worker threads outliving it abort the
            # process at exit ("terminate called without an active exception", pytorch#190489)
            atexit.register(lambda: tdist.destroy_process_group() if tdist.is_initialized() else None)
    return dist


def unwrap(module):
    """The model inside a DistributedDataParallel wrapper (itself otherwise)."""
    return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module


def wrap_ddp(module, dist: DistContext, device):
    """DDP around ``module`` when several processes train (re-wrapping the inner module)."""
    if not dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    inner = unwrap(module)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(inner, device_ids=ids)
