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
