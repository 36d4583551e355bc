"""Small helpers over ``torch.distributed`` shared by the estimators.

Everything here is a no-op (or returns the local value) when no process group is initialised or
the world has a single rank. Every collective is an ``all_gather`` of small headers first (so a
rank can take part without data, and every rank sees every rank's sizes and status), then of the
payloads padded to a common size; combining is then done identically, in rank order, on every
rank, so the results are bitwise identical across ranks.

Failure protocol: a rank that fails before a collective can still join it with ``failed=True``
(see :func:`gather_header`); the other ranks then raise :class:`DistributedError` instead of
waiting for the process group's timeout. A rank that dies or hangs without joining leaves the others
blocked until the process group's ``timeout``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError

__all__ = [
    "DistributedError",
    "world_size",
    "is_distributed",
    "comm_device",
    "gather_header",
    "all_gather_padded",
    "single_value",
]


class DistributedError(CaptumElfaError):
    """Raised on every rank when the ranks' data cannot be combined (another rank failed, or the
    ranks disagree on the layer's shape)."""


def world_size(group: Any = None) -> int:
    """Number of ranks of ``group`` (the default group if None), 1 without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised with more than one rank."""
    return world_size(group) > 1


def comm_device(group: Any = None) -> torch.device:
    """Device the tensors of a collective must live on: the current CUDA device for NCCL, the CPU
    for gloo, MPI and others (a mixed ``"cpu:gloo,cuda:nccl"`` backend uses the CPU)."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_header(values: Sequence[int], failed: bool = False, group: Any = None) -> List[List[int]]:
    """All ranks' ``[failed, *values]`` integer headers, in rank order (one ``all_gather``).

    Every rank must pass the same number of ``values``. If any rank reports ``failed``, every rank
    that did not fail raises :class:`DistributedError`; the failing rank gets the headers back and
    is expected to raise its own error.
    """
    import torch.distributed as dist

    device = comm_device(group)
    local = torch.tensor([int(bool(failed))] + [int(v) for v in values], dtype=torch.int64, device=device)
    out = [torch.empty_like(local) for _ in range(world_size(group))]
    dist.all_gather(out, local, group=group)
    headers = [t.cpu().tolist() for t in out]
    bad = [r for r, h in enumerate(headers) if h[0]]
    if bad and not failed:
        raise DistributedError(
            f"rank(s) {bad} failed before the ranks' data could be combined (see the error raised "
            "on those ranks); nothing was computed on any rank"
        )
    return [h[1:] for h in headers]


def all_gather_padded(t: Tensor, sizes: Sequence[int], dim: int = 0, group: Any = None) -> List[Tensor]:
    """All ranks' tensors ``t`` whose length along ``dim`` is ``sizes[rank]`` (all other dimensions
    equal), each returned trimmed to its size, on ``t``'s device, in rank order.

    The tensors are padded with zeros to ``max(sizes)`` for the ``all_gather``, which runs on
    :func:`comm_device`.
    """
    import torch.distributed as dist

    device = comm_device(group)
    top = max(sizes)
    shape = list(t.shape)
    shape[dim] = top
    padded = torch.zeros(shape, dtype=t.dtype, device=device)
    if t.shape[dim] > 0:
        padded.narrow(dim, 0, t.shape[dim]).copy_(t)
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded, group=group)
    return [o.narrow(dim, 0, s).to(t.device) for o, s in zip(out, sizes)]


def single_value(name: str, values: Sequence[Optional[Any]]) -> Optional[Any]:
    """The one value the ranks that have one agree on (None if none has one), else
    :class:`DistributedError` naming the disagreeing ranks."""
    seen = {r: v for r, v in enumerate(values) if v is not None}
    distinct = sorted(set(seen.values()), key=str)
    if len(distinct) > 1:
        raise DistributedError(
            f"the ranks disagree on the {name}: "
            + ", ".join(f"rank {r}: {v}" for r, v in seen.items())
            + "; every rank must run the same model and layer"
        )
    return distinct[0] if distinct else None
