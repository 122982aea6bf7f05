"""Training on several processes with ``torchrun`` and DistributedDataParallel (DDP).

``torchrun --nproc-per-node N -m h2gnet train-patch ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Each joins one
process group (gloo on CPU, NCCL when CUDA is available), wraps its model in DDP (gradients averaged
over ranks at every step), and draws its own part of the sampling stream: rank ``r`` uses a seed
derived from the run seed and ``r`` (rank 0 the run seed itself, so a one-process run is today's run).
The global batch of a step is ``batch_size × world_size``. Only rank 0 writes the run folder (config,
log, checkpoints, ``model.onnx``, metrics); every rank reads the checkpoint to resume.

Without those variables (a plain ``h2gnet train-patch``) everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from h2gnet.errors import H2GNetError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True on a run of more than one process."""
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """The device of this rank: its local GPU under NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise H2GNetError(None, f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed() -> DistContext:
    """Join the process group torchrun describes in the environment; a single-process context without it.

    The backend is NCCL when CUDA is available (each rank on GPU ``LOCAL_RANK``), else gloo.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not torch.distributed.is_available():
        raise H2GNetError(None, "this PyTorch build has no torch.distributed; run without torchrun")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed_run() -> Iterator[DistContext]:
    """``init_distributed`` ... ``shutdown``, also when the training raises."""
    ctx = init_distributed()
    try:
        yield ctx
    finally:
        shutdown(ctx)


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of ``rank``: the run seed itself on rank 0 (a one-process run is unchanged),
    a different seed derived from (run seed, rank) on the others, so ranks never draw the same stream."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), 0x6464705F, int(rank)]).generate_state(1)[0])


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` in DistributedDataParallel on a multi-process run (parameters broadcast from rank 0);
    the model itself otherwise."""
    if not ctx.distributed:
        return model
    model = model.to(ctx.device)
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.backend == "nccl" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (what checkpoints and the ONNX export hold)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64); ``values`` itself on one process."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx.distributed:
        torch.distributed.barrier()


def split_steps(steps: int, ctx: DistContext) -> int:
    """This rank's share of ``steps`` batches (validation: the ranks together do ``steps``)."""
    return steps // ctx.world_size + (ctx.rank < steps % ctx.world_size)


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only (it writes the run folder); its result, or its :class:`H2GNetError`, on every
    rank (sent with ``broadcast_object_list``, so the ranks also wait for rank 0 here)."""
    if not ctx.distributed:
        return fn()
    box: list = [None, None]
    if ctx.is_main:
        try:
            box[0] = fn()
        except BaseException as exc:  # the other ranks must not wait for rank 0 forever
            box[1] = ((exc.path, exc.problem) if isinstance(exc, H2GNetError)
                      else (None, f"rank 0 failed: {type(exc).__name__}: {exc}"))
            torch.distributed.broadcast_object_list(box, src=0)
            raise
    torch.distributed.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise H2GNetError(*box[1])
    return box[0]
