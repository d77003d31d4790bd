"""The adaptation and semi-supervised jobs under torchrun (several processes, one run).

Rank 0 (the "main" process) owns the run: it alone scans the unlabelled images, writes the run
folder, prints, extracts features, re-estimates BatchNorm statistics, scores the models on the
check set and builds the review queue. Every process trains the gradient phases together (the
baseline, MCC, DANN, FixMatch and the fine-tuning rounds of self-training run in the engine,
which shards the data and wraps the model in DDP). What the other processes need from rank 0
(the run folder, the target images, the pseudo-labels of a round) they receive with `share`.
Jobs without gradient training (AdaBN, heads on cached features) run on rank 0 only: the other
processes leave after the last phase they train in.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from tlstudio.core.errors import UserError
from tlstudio.core.events import Event


class Stopped(Exception):
    """The user stopped the run: finished phases are kept, `tlstudio resume RUN` continues."""


def context():
    """This process's DistContext, with the process group started under torchrun."""
    from tlstudio.core.runtime.parallel import init_distributed

    return init_distributed()


def is_follower() -> bool:
    """A torchrun process other than rank 0 (it trains, but writes and prints nothing)."""
    from tlstudio.core.runtime.parallel import distributed_context

    return not distributed_context().is_main


def share(value: Any = None) -> Any:
    """Rank 0's ``value`` on every process (``value`` itself without torchrun)."""
    from tlstudio.core.runtime.parallel import distributed_context

    if not distributed_context().enabled:
        return value
    import torch.distributed as tdist

    box = [value if distributed_context().is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(make: Callable[[], Generator[Event, None, Any]]) -> Generator[Event, None, Any]:
    """Run the generator ``make()`` on rank 0 and give its result to every process; a stop or an
    error on rank 0 is raised on the others too, so no process waits for a result that never comes."""
    from tlstudio.core.runtime.parallel import distributed_context

    if not distributed_context().enabled:
        return (yield from make())
    if distributed_context().is_main:
        try:
            value = yield from make()
        except Stopped:
            share(("stopped", None))
            raise
        except Exception as exc:
            share(("error", str(exc)))
            raise
        share(("ok", value))
        return value
    outcome, value = share()
    if outcome == "stopped":
        raise Stopped()
    if outcome == "error":
        raise UserError(f"the main process failed: {value}")
    return value


def silent(gen: Generator[Event, None, Any]) -> Generator[Event, None, Any]:
    """Drive ``gen`` without passing its events on (a follower prints nothing)."""
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value
    yield  # never reached: makes this a generator


def shard(items: Sequence[Any]) -> list[Any]:
    """This process's equal share of ``items`` (all of them without torchrun)."""
    from tlstudio.core.runtime.parallel import distributed_context

    dist = distributed_context()
    if not dist.enabled:
        return list(items)
    per_rank = max(1, len(items) // dist.world_size)
    return list(items[dist.rank::dist.world_size])[:per_rank]
