"""Streaming count, mean and co-moment matrix of a layer's channels, in float64.

A batch of activations ``(N, C, H, W)`` contributes ``N*H*W`` samples of ``C`` variables. Each
batch's mean and centred co-moment matrix are computed on the activation's device and merged
with Chan et al.'s pairwise update, so the result does not depend on how the data were split into
batches and memory stays O(C^2) whatever the number of images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Moments", "RunningMoments"]


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

    def merge(self, other: "Moments") -> "Moments":
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
        c = x.shape[1]
        flat = x.detach().transpose(0, 1).reshape(c, -1).to(torch.float64)  # (C, n)
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

    def update(self, x: Tensor, batch_index: int) -> None:
        bm = batch_moments(x)
        finite = torch.isfinite(bm.mean).all() & torch.isfinite(torch.diagonal(bm.comoment)).all()
        idx = torch.tensor(batch_index, device=bm.mean.device)
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=bm.mean.device)
        self._first_bad = torch.where((self._first_bad < 0) & ~finite, idx, self._first_bad)
        self.moments = bm if self.moments is None else self.moments.merge(bm)
        self.batches += 1

    def first_nonfinite(self) -> int:
        """Index of the first batch with NaN/Inf activations, or -1."""
        return -1 if self._first_bad is None else int(self._first_bad.item())
