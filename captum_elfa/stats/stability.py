"""Split-half replicability of factors: streamed half moments, Tucker's congruence, matching.

While the images stream, their channel moments go into two accumulators, half A and half B
(:class:`SplitHalfMoments`); the moments of all images are the merge of the two, so memory stays
O(C^2). The same model (same ``k``, same rotation) is then fitted on all images and on each half,
each half's factors are matched to the full model's by the Hungarian algorithm on the absolute
Tucker congruence, their signs fixed, and the congruence of the two halves' matched factors is
reported per factor (:func:`split_half_stability`). Lorenzo-Seva & ten Berge (2006): a congruence
of at least 0.95 means the factors are equal, 0.85 to 0.95 a fair similarity, below 0.85 the
factor is not replicable.

The half of an image depends only on the seed and the image's position in the stream (images are
counted across batches): consecutive images ``2p`` and ``2p + 1`` form pair ``p``, and a seeded
hash of ``p`` says which of the two goes to half A. So the halves do not depend on the batch size
and differ in size by at most one image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from captum_elfa import _distributed as _dist
from captum_elfa._validation import CaptumElfaError, is_int
from captum_elfa.stats.moments import Moments, all_reduce_moments, batch_moments

__all__ = [
    "SplitHalfMoments",
    "split_half_assignment",
    "tucker_congruence",
    "match_factors",
    "congruence_label",
    "Stability",
    "split_half_stability",
    "EQUAL",
    "FAIR",
]

#: Lorenzo-Seva & ten Berge (2006): congruence >= EQUAL: "equal"; >= FAIR: "fair similarity"
EQUAL = 0.95
FAIR = 0.85

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**27: products of 32-bit values stay below 2**59, no int64 overflow


def _seed_words(random_state: int) -> Tuple[int, int]:
    s = int(random_state)
    return (s * 0x9E3779B1 + 0x7F4A7C15) & _M32, ((s >> 32) * 0x85EBCA6B + 0xC2B2AE35) & _M32


def _pair_bits(p: Any, random_state: int) -> Any:
    """Seeded hash bit (0 or 1) of pair indices ``p``; the same integer operations on a Python
    int, a numpy array or a torch integer tensor (on any device), so host and device agree."""
    s1, s2 = _seed_words(random_state)
    h = (p & _M32) ^ s1
    h = (((h >> 16) ^ h) * _MUL) & _M32
    h = h ^ s2
    h = (((h >> 16) ^ h) * _MUL) & _M32
    h = (h >> 16) ^ h
    return (h >> 5) & 1


def _half_indices(start: int, n: int, random_state: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Positions, within a batch of ``n`` images whose first image is image ``start`` of the
    stream, of the images of half A and of half B (int64 tensors on ``device``).

    Pair ``p`` = images ``2p, 2p + 1``; its half-A member is ``2p + bit(p)``. Only the first and
    the last pair can straddle the batch's ends; whether their member falls outside is decided on
    the host (two hash values), so the device work needs no synchronisation.
    """
    if n == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    end = start + n
    p0, p1 = start // 2, (end - 1) // 2
    pairs = torch.arange(p0, p1 + 1, dtype=torch.long, device=device)
    bits = _pair_bits(pairs, random_state)
    b0, b1 = int(_pair_bits(p0, random_state)), int(_pair_bits(p1, random_state))
    out = []
    for which in (0, 1):  # 0: half A (member 2p + bit), 1: half B (member 2p + 1 - bit)
        member = 2 * pairs + (bits ^ which) - start
        first = 2 * p0 + (b0 ^ which)
        last = 2 * p1 + (b1 ^ which)
        lo = 1 if first < start else 0
        hi = member.numel() - (1 if last >= end else 0)
        out.append(member[lo:hi])
    return out[0], out[1]


def split_half_assignment(n_images: int, random_state: int = 0, start: int = 0) -> Tensor:
    """Which half each of images ``start, ..., start + n_images - 1`` of a stream belongs to.

    Args:
        n_images (int): number of images.
        random_state (int): the seed of :class:`SplitHalfMoments`. Default: 0.
        start (int): index of the first image in the stream. Default: 0.

    Returns:
        Tensor: bool [n_images], True for half A, False for half B (what
        :meth:`SplitHalfMoments.update` does with the same images, whatever the batch sizes).

    Examples::

        >>> in_a = split_half_assignment(len(images), random_state=0)
        >>> images_a, images_b = images[in_a], images[~in_a]
    """
    if n_images < 0 or start < 0:
        raise CaptumElfaError(f"n_images={n_images} and start={start} must both be >= 0")
    idx_a, _ = _half_indices(int(start), int(n_images), random_state, torch.device("cpu"))
    mask = torch.zeros(int(n_images), dtype=torch.bool)
    mask[idx_a] = True
    return mask


class SplitHalfMoments:
    r"""Streamed :class:`~captum_elfa.stats.moments.Moments` of two seeded halves of the images.

    A drop-in replacement for :class:`~captum_elfa.stats.moments.RunningMoments` (same
    :meth:`update`, :attr:`moments`, :attr:`batches`, :attr:`images`, :attr:`spatial`,
    :meth:`first_nonfinite`, :meth:`all_reduce`, :attr:`nonfinite_rank`) that also keeps the
    moments of half A and half B (float64, on the device of the batches, via
    :func:`~captum_elfa.stats.moments.batch_moments` of each half's images). :attr:`moments` is the
    merge of the two halves, equal to the moments of all images up to rounding.

    Image ``i`` of the stream (counted across batches, from 0) is in pair ``i // 2``; a hash of
    the pair index seeded with ``random_state`` sends one image of each pair to A and the other to
    B (:func:`split_half_assignment`). The halves therefore do not depend on the batch sizes, and
    ``|n_images_a - n_images_b| <= 1``. No host synchronisation per batch beyond what
    ``batch_moments`` does (the half indices are computed on the batch's device).

    With ``torch.distributed``, every rank splits its own images (counted from 0 on each rank);
    :meth:`all_reduce` merges each half over the ranks in rank order, so halves stay disjoint and
    differ by at most the number of ranks.

    Args:
        random_state (int): seed of the split. Default: 0.

    Examples::

        >>> acc = SplitHalfMoments(random_state=0)
        >>> for i, x in enumerate(activations): acc.update(x, i)
        >>> full, (half_a, half_b) = acc.full(), acc.halves()
    """

    def __init__(self, random_state: int = 0) -> None:
        if not is_int(random_state):
            raise CaptumElfaError(f"random_state={random_state!r} is not valid; use an int")
        self.random_state = int(random_state)
        self.moments_a: Optional[Moments] = None
        self.moments_b: Optional[Moments] = None
        self.n_images_a = 0
        self.n_images_b = 0
        self.spatial: Optional[tuple] = None
        self.batches = 0
        #: after :meth:`all_reduce`, the rank whose batch :meth:`first_nonfinite` refers to
        self.nonfinite_rank: Optional[int] = None
        self._next_image = 0
        self._first_bad: Optional[Tensor] = None

    @property
    def images(self) -> int:
        """Number of images seen (both halves)."""
        return self.n_images_a + self.n_images_b

    @property
    def moments(self) -> Optional[Moments]:
        """Moments of all images (:meth:`full`); None before the first image."""
        return self.full()

    def full(self) -> Optional[Moments]:
        """Merge of the two halves' moments (all images); None before the first image."""
        a, b = self.moments_a, self.moments_b
        if a is None:
            return b
        if b is None:
            return a
        return a.merge(b)

    def halves(self) -> Tuple[Optional[Moments], Optional[Moments]]:
        """Moments of half A and of half B (None for a half without images yet)."""
        return self.moments_a, self.moments_b

    def update(self, x: Tensor, batch_index: int) -> None:
        """Add a batch of layer outputs ``x``: (N, C, H, W) or (N, C), N images.

        Args:
            x (Tensor): the batch, on any device.
            batch_index (int): the batch's index, reported by :meth:`first_nonfinite`.
        """
        if x.dim() not in (2, 4):
            raise CaptumElfaError(f"expected a (N, C, H, W) or (N, C) tensor, got shape {tuple(x.shape)}")
        n = int(x.shape[0])
        idx_a, idx_b = _half_indices(self._next_image, n, self.random_state, x.device)
        self._next_image += n
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
        finite: Optional[Tensor] = None
        for half, idx in (("a", idx_a), ("b", idx_b)):
            count = int(idx.numel())  # a host-side size: no synchronisation
            if count == 0:
                continue
            bm = batch_moments(x.index_select(0, idx))
            ok = torch.isfinite(bm.mean).all() & torch.isfinite(torch.diagonal(bm.comoment)).all()
            finite = ok if finite is None else finite & ok
            if half == "a":
                self.moments_a = bm if self.moments_a is None else self.moments_a.merge(bm)
                self.n_images_a += count
            else:
                self.moments_b = bm if self.moments_b is None else self.moments_b.merge(bm)
                self.n_images_b += count
        if finite is not None:
            idx_t = torch.full_like(self._first_bad, batch_index)
            self._first_bad = torch.where((self._first_bad < 0) & ~finite, idx_t, self._first_bad)
        if self.spatial is None:
            self.spatial = tuple(x.shape[1:])
        self.batches += 1

    def first_nonfinite(self) -> int:
        """Index of the first batch with NaN/Inf activations, or -1."""
        return -1 if self._first_bad is None else int(self._first_bad.item())

    def all_reduce(self, group: Any = None, failed: bool = False) -> None:
        """Combine this accumulator with those of every rank of a ``torch.distributed`` group.

        A collective (every rank must call it), with the semantics of
        :meth:`RunningMoments.all_reduce <captum_elfa.stats.moments.RunningMoments.all_reduce>`:
        afterwards every rank holds each half's moments merged over the ranks in rank order, the
        total :attr:`batches`, :attr:`n_images_a`, :attr:`n_images_b`, the first rank's
        :attr:`spatial` and the first non-finite batch of the lowest rank that saw one. Without a
        process group (or with one rank) it does nothing.

        Args:
            group (ProcessGroup, optional): the group; default: the default group.
            failed (bool): pass True from a rank that could not finish its batches: the other
                        ranks then raise :class:`~captum_elfa._distributed.DistributedError`.

        Raises:
            DistributedError: on every rank that did not fail, if a rank failed or the ranks'
                        activations have different numbers of channels.
        """
        if not _dist.is_distributed(group):
            return
        spatial = list(self.spatial) if self.spatial is not None else []
        values = [self.first_nonfinite(), self.batches, self.n_images_a, self.n_images_b, len(spatial)]
        values += (spatial + [-1, -1, -1])[:3]
        headers = _dist.gather_header(values, failed, group)
        if failed:
            return
        hint = None if self.spatial is None else int(self.spatial[0])
        self.moments_a = all_reduce_moments(self.moments_a, hint, group)
        self.moments_b = all_reduce_moments(self.moments_b, hint, group)
        self.batches = sum(h[1] for h in headers)
        self.n_images_a = sum(h[2] for h in headers)
        self.n_images_b = sum(h[3] for h in headers)
        shapes = [tuple(h[5 : 5 + h[4]]) for h in headers if h[1] > 0 and h[4] > 0]
        self.spatial = shapes[0] if shapes else None
        bad = [(r, h[0]) for r, h in enumerate(headers) if h[0] >= 0]
        self.nonfinite_rank = bad[0][0] if bad else None
        ref = self.moments_a if self.moments_a is not None else self.moments_b
        device = ref.mean.device if ref is not None else torch.device("cpu")
        self._first_bad = torch.tensor(bad[0][1] if bad else -1, dtype=torch.long, device=device)


def _as_loadings(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(np.asarray(t))
    if t.dim() != 2:
        raise CaptumElfaError(f"{name} must be a 2-D [channels, factors] matrix, got shape {tuple(t.shape)}")
    t = t.detach().to(torch.float64).cpu()
    if not torch.isfinite(t).all():
        raise CaptumElfaError(f"{name} has NaN or Inf entries; loadings must be finite")
    return t


def tucker_congruence(a: Tensor, b: Tensor) -> Tensor:
    r"""Tucker's congruence coefficients between the columns of ``a`` and of ``b``.

    ``phi(x, y) = x^T y / sqrt(x^T x * y^T y)``: the cosine of the angle between two loading
    vectors, without centring (so it is not a correlation).

    Args:
        a (Tensor): loadings [C, k1].
        b (Tensor): loadings [C, k2] on the same C channels.

    Returns:
        Tensor: float64 [k1, k2], entry (i, j) the congruence of ``a[:, i]`` and ``b[:, j]``.

    Raises:
        CaptumElfaError: if the shapes do not agree, or a column is zero or non-finite.

    Examples::

        >>> phi = tucker_congruence(model_a.loadings, model_b.loadings)
    """
    a = _as_loadings("a", a)
    b = _as_loadings("b", b)
    if a.shape[0] != b.shape[0]:
        raise CaptumElfaError(
            f"a has {a.shape[0]} rows (channels) and b has {b.shape[0]}; both must be loadings on the same channels"
        )
    na = torch.sqrt((a * a).sum(0))
    nb = torch.sqrt((b * b).sum(0))
    for name, norms in (("a", na), ("b", nb)):
        zero = torch.nonzero(norms == 0).flatten()
        if zero.numel() > 0:
            raise CaptumElfaError(
                f"columns {zero.tolist()} of {name} are all zero; Tucker's congruence needs non-zero loading vectors"
            )
    return (a.T @ b) / torch.outer(na, nb)


def match_factors(reference: Tensor, other: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Match the factors of ``other`` to those of ``reference`` (Hungarian algorithm on
    ``|congruence|``) and fix their signs.

    Args:
        reference (Tensor): loadings [C, k].
        other (Tensor): loadings [C, k] of a model with the same number of factors.

    Returns:
        (Tensor, Tensor, Tensor):
        - perm (LongTensor [k]): ``other[:, perm[j]]`` is the factor matched to reference factor j;
        - sign (Tensor [k], float64, +1 or -1): so that ``other[:, perm] * sign`` is aligned;
        - congruence (Tensor [k], float64, >= 0): Tucker's congruence of reference factor j with
          its aligned match.

    Raises:
        CaptumElfaError: if the shapes differ.

    Examples::

        >>> perm, sign, phi = match_factors(full.loadings, half.loadings)
        >>> aligned = half.loadings[:, perm] * sign
    """
    reference = _as_loadings("reference", reference)
    other = _as_loadings("other", other)
    if reference.shape != other.shape:
        raise CaptumElfaError(
            f"reference has shape {tuple(reference.shape)} and other {tuple(other.shape)}; "
            "both must be [channels, factors] loadings of the same channels and number of factors"
        )
    phi = tucker_congruence(reference, other)
    rows, cols = scipy.optimize.linear_sum_assignment(-np.abs(phi.numpy()))
    perm = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
    matched = phi[torch.arange(phi.shape[0]), perm]
    sign = torch.where(matched < 0, -1.0, 1.0).to(torch.float64)
    return perm, sign, matched * sign


def congruence_label(phi: float) -> str:
    """Lorenzo-Seva & ten Berge's reading of a congruence: "equal" (>= 0.95), "fair similarity"
    (>= 0.85) or "not replicable" (below 0.85)."""
    if phi >= EQUAL:
        return "equal"
    if phi >= FAIR:
        return "fair similarity"
    return "not replicable"


@dataclass
class Stability:
    r"""Split-half replicability of the factors of a model.

    Factor ``j`` is the full model's factor ``j``; each half's factors are matched to the full
    model's (Hungarian algorithm on ``|congruence|``, signs fixed). For oblique rotations the
    congruences are those of the pattern loadings.

    Attributes:
        congruence (Tensor): [k] Tucker's congruence between half A's and half B's factors matched
                    to full factor j: the replicability of factor j.
        congruence_a (Tensor): [k] congruence of half A's matched factor with full factor j.
        congruence_b (Tensor): [k] the same for half B.
        labels (list of str): per factor, "equal" (congruence >= 0.95), "fair similarity"
                    (>= 0.85) or "not replicable" (below 0.85), from :attr:`congruence`.
        replicable (Tensor): bool [k], ``congruence >= threshold``.
        n_images_a (int): images in half A.
        n_images_b (int): images in half B.
        threshold (float): the threshold of :attr:`replicable`.
        perm_a (Tensor): long [k], half A's factor matched to full factor j (``perm_b`` for B).
        sign_a (Tensor): [k] +1/-1, so ``loadings_a[:, perm_a] * sign_a`` is aligned (``sign_b``).
    """

    congruence: Tensor
    congruence_a: Tensor
    congruence_b: Tensor
    labels: List[str]
    replicable: Tensor
    n_images_a: int
    n_images_b: int
    threshold: float
    perm_a: Tensor
    perm_b: Tensor
    sign_a: Tensor
    sign_b: Tensor

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dict of every attribute (tensors as lists)."""
        return {
            "congruence": [float(v) for v in self.congruence],
            "congruence_a": [float(v) for v in self.congruence_a],
            "congruence_b": [float(v) for v in self.congruence_b],
            "labels": list(self.labels),
            "replicable": [bool(v) for v in self.replicable],
            "n_images_a": int(self.n_images_a),
            "n_images_b": int(self.n_images_b),
            "threshold": float(self.threshold),
            "perm_a": [int(v) for v in self.perm_a],
            "perm_b": [int(v) for v in self.perm_b],
            "sign_a": [float(v) for v in self.sign_a],
            "sign_b": [float(v) for v in self.sign_b],
        }

    def summary(self) -> str:
        """One line: how many factors replicate, and each factor's congruence and label."""
        k = int(self.congruence.numel())
        per = "; ".join(f"F{j}: {float(p):.3f} {lab}" for j, (p, lab) in enumerate(zip(self.congruence, self.labels)))
        return (
            f"split-half replicability ({self.n_images_a} vs {self.n_images_b} images, Tucker's congruence): "
            f"{int(self.replicable.sum())}/{k} factors >= {self.threshold:g}; {per}"
        )


def split_half_stability(
    full_loadings: Tensor,
    loadings_a: Tensor,
    loadings_b: Tensor,
    n_images_a: int,
    n_images_b: int,
    threshold: float = FAIR,
) -> Stability:
    r"""Split-half replicability of the factors of ``full_loadings``.

    Each half's factors are matched to the full model's (:func:`match_factors`); the replicability
    of full factor j is Tucker's congruence between half A's and half B's factors matched to it.
    Pass the same kind of loadings for all three models (fitted with the same number of factors
    and the same rotation, on the same channels); for oblique rotations pass pattern loadings.

    Args:
        full_loadings (Tensor): [C, k] loadings of the model fitted on all images.
        loadings_a (Tensor): [C, k] loadings of the model fitted on half A.
        loadings_b (Tensor): [C, k] loadings of the model fitted on half B.
        n_images_a (int): images in half A.
        n_images_b (int): images in half B.
        threshold (float): a factor is :attr:`~Stability.replicable` when its congruence is at
                    least this (in [0, 1]). Default: 0.85.

    Returns:
        Stability: per-factor congruences, labels and flags.

    Raises:
        CaptumElfaError: if the shapes differ, an image count is negative or the threshold is
        outside [0, 1].

    Examples::

        >>> st = split_half_stability(full.loadings, model_a.loadings, model_b.loadings, acc.n_images_a, acc.n_images_b)
        >>> st.summary()
    """
    full = _as_loadings("full_loadings", full_loadings)
    a = _as_loadings("loadings_a", loadings_a)
    b = _as_loadings("loadings_b", loadings_b)
    for name, t in (("loadings_a", a), ("loadings_b", b)):
        if t.shape != full.shape:
            raise CaptumElfaError(
                f"{name} has shape {tuple(t.shape)} but full_loadings {tuple(full.shape)}; fit the halves "
                "with the same channels and number of factors as the full model"
            )
    for name, n in (("n_images_a", n_images_a), ("n_images_b", n_images_b)):
        if not is_int(n) or n < 0:
            raise CaptumElfaError(f"{name}={n!r} is not valid; use an int >= 0")
    if not 0.0 <= float(threshold) <= 1.0:
        raise CaptumElfaError(f"threshold={threshold!r} is not valid; use a number in [0, 1]")
    perm_a, sign_a, phi_a = match_factors(full, a)
    perm_b, sign_b, phi_b = match_factors(full, b)
    aligned_a = a[:, perm_a] * sign_a
    aligned_b = b[:, perm_b] * sign_b
    phi = torch.diagonal(tucker_congruence(aligned_a, aligned_b)).clone()
    labels = [congruence_label(float(p)) for p in phi]
    return Stability(
        congruence=phi,
        congruence_a=phi_a,
        congruence_b=phi_b,
        labels=labels,
        replicable=phi >= float(threshold),
        n_images_a=int(n_images_a),
        n_images_b=int(n_images_b),
        threshold=float(threshold),
        perm_a=perm_a,
        perm_b=perm_b,
        sign_a=sign_a,
        sign_b=sign_b,
    )
