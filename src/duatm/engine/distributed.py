"""Several processes under torchrun: the process group, each rank's device, and the few
collectives the engine needs (see docs/design.md#distributed).

Why a module of its own: training, sharded evaluation and the command line must agree on who
is rank 0, which device a rank uses and how a failure ends the job. One process (no torchrun,
``WORLD_SIZE`` unset or 1) initialises nothing here, and every helper is then the identity, so a
plain run computes exactly what it did before distributed support existed.

The backend follows the device: NCCL for CUDA, gloo for the CPU. Every collective waits at most
``distributed.timeout_s``; a rank that fails closes its connections when it exits (the process
group is destroyed on the way out), so the others stop at once with `PeerFailure` instead of
hanging, and a rank that hangs makes the others stop after the timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from duatm.config import ConfigError
from duatm.engine.builders import resolve_device

__all__ = [
    "SINGLE",
    "DistContext",
    "PeerFailure",
    "all_gather_cat",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "current",
    "is_peer_failure",
    "launch_context",
    "mean_over_ranks",
    "process_group",
    "rank_device",
]


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and prints."""
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This rank's contiguous share of ``count`` items (shares differ by at most one item
        and, concatenated in rank order, give the items in their order)."""
        return range(
            count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size
        )

    def describe(self) -> str:
        """``"rank 1 of 4"``, for messages."""
        return f"rank {self.rank} of {self.world_size}"


#: The context of a plain one-process run.
SINGLE = DistContext()


class PeerFailure(RuntimeError):
    """Another process of the job failed, was killed or stopped answering."""


def launch_context() -> DistContext:
    """The rank, world size and local rank that torchrun gave this process (its environment
    variables), or `SINGLE` when it was not started by torchrun."""
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} must be an integer") from None
    world = values.get("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    rank = values.get("RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"environment: RANK={rank} must be in [0, WORLD_SIZE={world})")
    return DistContext(rank, world, values.get("LOCAL_RANK", rank))


def current() -> DistContext:
    """The context of the initialised process group, or `SINGLE` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def rank_device(name: str, ctx: DistContext) -> torch.device:
    """The device of ``ctx``'s rank for the config's ``device``: with several processes on
    CUDA, each rank uses ``cuda:LOCAL_RANK`` (so ``device`` must be ``auto`` or ``cuda``)."""
    device = resolve_device(name)
    if not ctx.enabled or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device={name!r}: several processes run on cuda or cpu only")
    if name not in ("auto", "cuda"):
        raise ConfigError(
            f"device={name!r}: with torchrun each process uses cuda:LOCAL_RANK; "
            'set device to "cuda" or "auto"'
        )
    if ctx.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={ctx.local_rank} but this node has {torch.cuda.device_count()} CUDA "
            "device(s): start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", ctx.local_rank)


@contextlib.contextmanager
def process_group(device_name: str, timeout_s: float) -> Iterator[DistContext]:
    """Join the job torchrun started (NCCL on CUDA, gloo on the CPU, collectives that wait at
    most ``timeout_s``) and leave it on the way out, also after an error: leaving closes this
    rank's connections, which tells the others to stop. Without torchrun: `SINGLE`, nothing
    initialised."""
    ctx = launch_context()
    if not ctx.enabled or dist.is_initialized():
        yield current() if dist.is_initialized() else ctx
        return
    device = rank_device(device_name, ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` says that a collective failed because of another process (closed
    connection, timeout), as opposed to an error of this process's own."""
    if isinstance(err, (PeerFailure, dist.DistError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("gloo" in text or "NCCL" in text)


def _collective_device() -> torch.device:
    """Where tensors must be for the backend: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (sizes may differ), on
    ``tensor``'s device. The identity in one process."""
    if not ctx.enabled:
        return tensor
    device = _collective_device()
    local = tensor.to(device).contiguous()
    sizes = torch.zeros(ctx.world_size, dtype=torch.int64, device=device)
    sizes[ctx.rank] = local.shape[0]
    dist.all_reduce(sizes)
    largest = int(sizes.max())
    padded = local.new_zeros((largest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    gathered = torch.cat([part[: int(n)] for part, n in zip(parts, sizes, strict=True)])
    return gathered.to(tensor.device)


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """The element-wise sum of every rank's ``tensor`` (same shape everywhere)."""
    if not ctx.enabled:
        return tensor
    summed = tensor.to(_collective_device()).contiguous()
    dist.all_reduce(summed)
    return summed.to(tensor.device)


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written the run folder)."""
    if ctx.enabled:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP sends them at the
    start of each forward, so after the last one each rank holds its own; evaluation and the
    checkpoint must all see the ones rank 0 saves."""
    if not ctx.enabled:
        return
    device = _collective_device()
    for buffer in module.buffers():
        synced = buffer.detach().to(device)
        dist.broadcast(synced, src=0)
        buffer.copy_(synced)


def mean_over_ranks(
    values: Mapping[str, float], ctx: DistContext
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The mean of each named float over the ranks, and every rank's own values. Every rank
    gets the same numbers (summed in rank order, in float64)."""
    if not ctx.enabled:
        return dict(values), [dict(values)]
    names: Sequence[str] = list(values)
    mine = torch.tensor([[values[name] for name in names]], dtype=torch.float64)
    every = all_gather_cat(mine, ctx)
    per_rank = [dict(zip(names, row.tolist(), strict=True)) for row in every]
    means = {name: sum(row[name] for row in per_rank) / ctx.world_size for name in names}
    return means, per_rank
