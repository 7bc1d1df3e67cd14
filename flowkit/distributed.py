r"""Data-parallel training under ``torchrun``: the process group, ranks, minibatch shards and reductions.

Nothing here does anything in a plain process: :func:`setup` starts a process group only when the
process was launched by ``torchrun`` (``WORLD_SIZE`` and ``RANK`` in the environment), and every
other function answers as a single process does (rank 0 of 1) until a group exists. The group is
the user's when they initialised it themselves; otherwise :func:`setup` starts one with the NCCL
backend for a CUDA device and Gloo for anything else, and ends it when the process exits.

Every rank draws the same global order of the training rows from the same seeded generator; a
global minibatch of :math:`B` rows is cut into ``world_size`` contiguous pieces whose sizes differ
by at most one (:meth:`torch.Tensor.tensor_split`), and rank :math:`r` takes piece :math:`r`
(:class:`MinibatchSampler`). Rank :math:`r` then minimises
:math:`-\frac{W}{B}\sum_{n \in \text{piece}_r} \log p(x_n)`; DistributedDataParallel averages the
gradients over the :math:`W` ranks, so that every step takes the gradient of the global minibatch's
mean, :math:`-\frac1B \sum_{n} \nabla \log p(x_n)`, whatever the sizes of the pieces.

Example:
    >>> rank(), world_size(), is_main(), active()
    (0, 1, True, False)
    >>> [b.tolist() for b in MinibatchSampler(5, 2, torch.Generator().manual_seed(0))]  # one process
    [[4, 0], [1, 3, 2]]
    >>> [[b.tolist() for b in MinibatchSampler(5, 2, torch.Generator().manual_seed(0), rank=r, world=2)]
    ...  for r in (0, 1)]  # the same global minibatches, cut between two ranks
    [[[4], [1, 3]], [[0], [2]]]
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

__all__ = ["launched", "setup", "active", "rank", "world_size", "is_main", "local_device", "minibatches",
           "MinibatchSampler", "all_sum", "agree", "from_main", "sync_buffers", "barrier"]

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of a ``torchrun`` launch (or a process group already exists)."""
    return _initialized() or ("WORLD_SIZE" in os.environ and "RANK" in os.environ)


def setup(device: torch.device | str = "cpu") -> bool:
    """Starts the process group of a ``torchrun`` launch, once; returns whether training is
    distributed (a group of two processes or more).

    Without ``torchrun``'s environment and without a group, nothing happens. The backend is NCCL
    for a CUDA ``device`` and Gloo otherwise; the rendezvous is ``torchrun``'s (``env://``).
    """
    if not dist.is_available():
        return False
    if not dist.is_initialized():
        if not launched():
            return False
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_end)
    return active()


def _end() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """Whether a process group of two processes or more exists (training is data-parallel)."""
    return _initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group, 0 without one."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the group, 1 without one."""
    return dist.get_world_size() if _initialized() else 1


_rank = rank


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device | str) -> torch.device:
    """``device``, with ``"cuda"`` (no index) under ``torchrun`` meaning ``cuda:LOCAL_RANK``: one GPU
    per process on each machine."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def minibatches(order: Tensor, batch_size: int) -> tuple[Tensor, ...]:
    """``order`` cut into minibatches of ``batch_size``; a last one of a single row joins the one
    before it (batch norm cannot normalise one row).

    Example:
        >>> [len(b) for b in minibatches(torch.arange(7), 3)], [len(b) for b in minibatches(torch.arange(8), 3)]
        ([3, 4], [3, 3, 2])
    """
    batches = order.split(batch_size)
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches = (*batches[:-2], torch.cat(batches[-2:]))
    return batches


class MinibatchSampler(Sampler[Tensor]):
    """The minibatches of one epoch that one rank trains on, as index tensors.

    Each pass (one epoch) draws a new order of ``range(size)`` from ``generator``, cuts it into
    global minibatches of ``batch_size`` (:func:`minibatches`) and yields piece ``rank`` of each,
    cut into ``world`` contiguous pieces of sizes that differ by at most one. Every rank, given a
    generator in the same state, yields the same number of minibatches (a piece may be empty when
    a global minibatch has fewer rows than there are ranks) and together they cover each global
    minibatch once. With ``world=1`` it is the shuffled minibatches of a single process. It can
    serve as the ``batch_sampler`` of a :class:`torch.utils.data.DataLoader`.

    Arguments:
        size: the number of rows :math:`N`.
        batch_size: the global minibatch size :math:`B`, over all ranks.
        generator: the source of every epoch's order; seeded the same on every rank.
        rank, world: this rank and the number of ranks (default: those of the process group).

    Example:
        >>> sampler = MinibatchSampler(6, 4, torch.Generator().manual_seed(0), rank=0, world=2)
        >>> len(sampler), [len(b) for b in sampler]
        (2, [2, 1])
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator, *, rank: int | None = None,
                 world: int | None = None):
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.world = world_size() if world is None else world
        self.rank = _rank() if rank is None else rank

    def __len__(self) -> int:
        return len(self._stops())

    def __iter__(self) -> Iterator[Tensor]:
        for piece, _ in self.with_sizes():
            yield piece

    def _stops(self) -> list[int]:
        """Where each global minibatch ends, as :func:`minibatches` cuts (a last single row joins the one before)."""
        stops = [*range(self.batch_size, self.size, self.batch_size), self.size] if self.size else []
        if len(stops) > 1 and stops[-1] - stops[-2] == 1:
            del stops[-2]
        return stops

    def with_sizes(self) -> Iterator[tuple[Tensor, int]]:
        """The pieces of one epoch, each with the number of rows of its global minibatch. The order is
        drawn as int32 below 2**31 rows (the same permutation as int64, half the memory) and sliced
        one minibatch at a time."""
        dtype = torch.int32 if self.size < 2**31 else torch.int64
        order = torch.randperm(self.size, generator=self.generator, dtype=dtype)
        start = 0
        for stop in self._stops():
            batch = order[start:stop]
            start = stop
            yield (batch if self.world == 1 else batch.tensor_split(self.world)[self.rank]), len(batch)


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """The sums over all ranks of ``values`` (in float64), the same numbers on every rank.

    After the reduction rank 0's result is broadcast, so that decisions taken from the sums (early
    stopping, the best epoch) are taken alike everywhere even on a backend whose reductions could
    round differently on different ranks.
    """
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    dist.broadcast(tensor, 0)
    return tensor.tolist()


def agree(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's ``flag`` on every rank (for decisions taken from the clock, such as a time limit)."""
    if not active():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def from_main(read: Callable[[], T], device: torch.device | str = "cpu") -> T:
    """``read()`` called on rank 0 and its result (or the flowkit error it raised) sent to every rank:
    files only rank 0 writes (the checkpoint) need not be on every machine.

    The result must pickle; tensors in it arrive on the CPU of every rank, as rank 0 had them.
    """
    if not active():
        return read()
    from flowkit.errors import FlowkitError

    payload: list[Any] = [None]
    if is_main():
        try:
            payload = [(read(), None)]
        except FlowkitError as error:
            payload = [(None, error)]
    dist.broadcast_object_list(payload, 0, device=torch.device(device) if torch.device(device).type == "cuda"
                               else None)
    result, error = payload[0]
    if error is not None:
        raise error
    return result


def sync_buffers(module: nn.Module) -> None:
    """Copies rank 0's floating-point buffers (batch norm's running averages) to every rank.

    Integer and boolean buffers (masks, orderings, the mask index) are not sent: every rank changes
    them in the same way at the same step.
    """
    if active():
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.broadcast(buffer, 0)


def barrier() -> None:
    """Waits until every rank gets here (nothing without a group)."""
    if active():
        dist.barrier()
