"""Streaming count, mean and co-moment matrix of a layer's channels, in float64.

A batch of activations ``(N, C, H, W)`` contributes ``N*H*W`` samples of ``C`` variables. Each
batch's mean and centred co-moment matrix are computed on the activation's device and merged
with Chan et al.'s pairwise update, so the result does not depend on how the data were split into
batches and memory stays O(C^2) whatever the number of images.

With a ``torch.distributed`` process group, :func:`all_reduce_moments` (and
:meth:`RunningMoments.all_reduce`) combine the moments of every rank with the same merge, in rank
order, so every rank ends with bitwise identical moments, equal (to rounding) to those of one
process streaming all ranks' batches in rank order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from captum_elfa import _distributed as _dist

__all__ = ["Moments", "RunningMoments", "all_reduce_moments"]


@dataclass
class Moments:
    """Sample count ``n``, mean ``[C]`` and co-moment matrix ``M = sum (x - mean)(x - mean)^T``."""

    n: int
    mean: Tensor
    comoment: Tensor

    @property
    def covariance(self) -> Tensor:
        """Population covariance (``M / n``)."""
        return self.comoment / self.n

    @property
    def variance(self) -> Tensor:
        return torch.diagonal(self.comoment) / self.n

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s parallel merge of two sets of moments."""
        if self.n == 0:
            return other
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        comoment = self.comoment + other.comoment + torch.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, comoment)


def batch_moments(x: Tensor) -> Moments:
    """Moments of one batch; ``x`` is ``(N, C, H, W)`` or already ``(n, C)``."""
    if x.dim() == 4:
        # (N, C, HW) in float64 without a transposed copy; centred in place, then one small GEMM
        # per image (bmm) summed: the same co-moment as the (C, N*HW) product
        n_img, c = x.shape[0], x.shape[1]
        x64 = x.detach().reshape(n_img, c, -1).to(torch.float64, copy=True)
        n = x64.shape[0] * x64.shape[2]
        mean = x64.mean(dim=(0, 2))
        x64 -= mean[None, :, None]
        comoment = torch.bmm(x64, x64.transpose(1, 2)).sum(0)
        return Moments(n, mean, comoment)
    elif x.dim() == 2:
        flat = x.detach().t().to(torch.float64)
    else:
        raise ValueError(f"expected a (N, C, H, W) or (n, C) tensor, got shape {tuple(x.shape)}")
    n = flat.shape[1]
    mean = flat.mean(dim=1)
    centred = flat - mean[:, None]
    comoment = centred @ centred.t()
    return Moments(n, mean, comoment)


class RunningMoments:
    """Accumulates :class:`Moments` batch by batch, on the device of the first batch.

    Non-finite values do not force a host synchronisation per batch: the index of the first
    batch holding NaN or Inf is recorded on the device and read once by :meth:`first_nonfinite`.
    """

    def __init__(self) -> None:
        self.moments: Optional[Moments] = None
        self._first_bad: Optional[Tensor] = None
        self.spatial: Optional[tuple] = None
        self.batches = 0
        #: number of images (the first dimension of every batch), summed over ranks by all_reduce
        self.images = 0
        #: after :meth:`all_reduce`, the rank whose batch :meth:`first_nonfinite` refers to
        self.nonfinite_rank: Optional[int] = None

    def update(self, x: Tensor, batch_index: int) -> None:
        bm = batch_moments(x)
        finite = torch.isfinite(bm.mean).all() & torch.isfinite(torch.diagonal(bm.comoment)).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=bm.mean.device)
        # filled on the device: no host-to-device copy, no synchronisation per batch
        idx = torch.full_like(self._first_bad, batch_index)
        self._first_bad = torch.where((self._first_bad < 0) & ~finite, idx, self._first_bad)
        self.moments = bm if self.moments is None else self.moments.merge(bm)
        if self.spatial is None:
            self.spatial = tuple(x.shape[1:])
        self.batches += 1
        self.images += int(x.shape[0])

    def first_nonfinite(self) -> int:
        """Index of the first batch with NaN/Inf activations, or -1."""
        return -1 if self._first_bad is None else int(self._first_bad.item())

    def all_reduce(self, group: Any = None, failed: bool = False) -> None:
        """Combine this accumulator with those of every rank of a ``torch.distributed`` group.

        A collective: every rank of ``group`` must call it (the same number of times). Afterwards
        every rank holds the same state: :attr:`moments` of all ranks' batches merged in rank
        order (None only if no rank saw a batch), :attr:`batches` the total number of batches,
        :attr:`images` the total number of images,
        :attr:`spatial` the shape of the first batch of the first rank that saw one, and
        :meth:`first_nonfinite` the first non-finite batch of the lowest rank that saw one (that
        rank in :attr:`nonfinite_rank`). Without a process group (or with one rank) it does
        nothing.

        Args:
            group (ProcessGroup, optional): the group; default: the default group.
            failed (bool): pass True from a rank that could not finish its batches (in an
                        ``except`` block, before re-raising): the other ranks then raise
                        :class:`~captum_elfa._distributed.DistributedError` instead of waiting for
                        the group's timeout, and this call returns without combining anything.

        Raises:
            DistributedError: on every rank that did not fail, if a rank failed or the ranks'
                        activations have different numbers of channels.
        """
        if not _dist.is_distributed(group):
            return
        spatial = list(self.spatial) if self.spatial is not None else []
        extra = [self.first_nonfinite(), self.batches, len(spatial)] + (spatial + [-1, -1, -1])[:3] + [self.images]
        merged, headers = _all_reduce(None if failed else self.moments, None, extra, group, failed)
        if failed:
            return
        self.moments = merged
        self.batches = sum(h[3] for h in headers)
        self.images = sum(h[8] for h in headers)
        shapes = [tuple(h[5 : 5 + h[4]]) for h in headers if h[3] > 0 and h[4] > 0]
        self.spatial = shapes[0] if shapes else None
        bad = [(r, h[2]) for r, h in enumerate(headers) if h[2] >= 0]
        self.nonfinite_rank = bad[0][0] if bad else None
        device = merged.mean.device if merged is not None else torch.device("cpu")
        self._first_bad = torch.tensor(bad[0][1] if bad else -1, dtype=torch.long, device=device)


def all_reduce_moments(
    m: Optional[Moments], channels_hint: Optional[int] = None, group: Any = None
) -> Optional[Moments]:
    r"""Moments of the samples of every rank of a ``torch.distributed`` process group.

    Each rank's ``(n, mean, comoment)`` is gathered (float64; on the CPU for gloo, on the
    current CUDA device for NCCL) and merged with :meth:`Moments.merge` in rank order on every
    rank, so the result is bitwise identical across ranks and equal, up to rounding, to the
    moments of one process streaming all ranks' samples in rank order. A rank without samples
    passes ``None`` (or moments with ``n = 0``). Without an initialised process group, or with
    a single rank, ``m`` is returned unchanged.

    This is a collective: every rank of ``group`` must call it.

    Args:
        m (Moments or None): this rank's moments.
        channels_hint (int, optional): this rank's number of channels when ``m`` is None, only
                    used to check the ranks agree; the channel count is otherwise taken from the
                    ranks that have samples.
        group (ProcessGroup, optional): the group; default: the default group.

    Returns:
        Moments or None: the combined moments, on ``m``'s device (on the communication device
        for a rank without samples); None if no rank has a sample.

    Raises:
        DistributedError: on every rank, if the ranks' moments have different numbers of channels.

    Examples::

        >>> acc = RunningMoments()
        >>> for x in my_shard: acc.update(x, i)
        >>> total = all_reduce_moments(acc.moments)   # identical on every rank
    """
    if not _dist.is_distributed(group):
        return m
    merged, _ = _all_reduce(m, channels_hint, [], group, False)
    return merged


def _all_reduce(
    m: Optional[Moments], channels_hint: Optional[int], extra: List[int], group: Any, failed: bool
) -> Tuple[Optional[Moments], List[List[int]]]:
    """Gather ``[n, C, *extra]`` from every rank, then the moments; merge in rank order."""
    if m is not None and m.n == 0:
        m = None
    c_local = int(m.mean.numel()) if m is not None else (-1 if channels_hint is None else int(channels_hint))
    headers = _dist.gather_header([0 if m is None else m.n, c_local] + list(extra), failed, group)
    if failed:
        return None, headers
    c = _dist.single_value("number of channels", [h[1] if h[1] >= 0 else None for h in headers])
    if c is None or all(h[0] == 0 for h in headers):
        return None, headers
    device = _dist.comm_device(group)
    if m is not None:
        payload = torch.cat([m.mean.reshape(-1), m.comoment.reshape(-1)]).to(device=device, dtype=torch.float64)
    else:
        payload = torch.zeros(c + c * c, dtype=torch.float64, device=device)
    parts = _dist.all_gather_padded(payload, [c + c * c] * len(headers), 0, group)
    merged: Optional[Moments] = None
    for h, part in zip(headers, parts):
        if h[0] == 0:
            continue
        mr = Moments(int(h[0]), part[:c], part[c:].reshape(c, c))
        merged = mr if merged is None else merged.merge(mr)
    assert merged is not None
    if m is not None and merged.mean.device != m.mean.device:
        merged = Moments(merged.n, merged.mean.to(m.mean.device), merged.comoment.to(m.mean.device))
    return merged, headers
