r"""Screening a layer's channels before factor analysis: dead, collinear, and too few images.

A factor model needs a positive definite correlation matrix. Two kinds of channel break it:

* **dead** channels, constant over every pixel of every image (a dead ReLU), have no
  correlation at all;
* **collinear** channels, an exact linear combination of other channels (a duplicated
  channel, ``a = b + c``), make ``R`` singular: KMO then depends on how the singular inverse
  rounds (0.0, 0.42, 0.44 were measured on the same data) and Bartlett's ``ln det R`` is
  ``-inf``.

:func:`screen_channels` finds both from the streamed moments alone, with tolerances derived
from the float64 rounding of those moments, so the result does not depend on the units of the
activations (multiplying them all by ``1e-20`` or ``1e20``, or one channel by any factor,
changes nothing). :func:`min_images` says how many images a layer needs: the pixels of one
image are strongly dependent, so the sample size that matters is the number of images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError

__all__ = [
    "ChannelScreen",
    "screen_channels",
    "dead_tolerance",
    "collinear_tolerance",
    "min_images",
    "MIN_IMAGES_PER_CHANNEL",
    "COLLINEAR_RTOL",
]

_EPS = torch.finfo(torch.float64).eps  # 2.22e-16
_TINY = torch.finfo(torch.float64).tiny

#: Smallest fraction of a channel's variance that the other kept channels may leave
#: unexplained. See :func:`collinear_tolerance`.
COLLINEAR_RTOL = 1e-10

#: Images per live channel below which a factor model is not reproducible; see :func:`min_images`.
MIN_IMAGES_PER_CHANNEL = 2.0


@dataclass(frozen=True)
class ChannelScreen:
    """Which channels of a layer enter the factor model.

    ``live``, ``dead`` and ``collinear`` partition ``range(C)``; each is sorted.

    Attributes:
        live (LongTensor): channels kept for the factor model.
        dead (LongTensor): channels whose variance is zero up to the rounding of the streamed
                    float64 moments (see :func:`dead_tolerance`).
        collinear (LongTensor): channels left out because the kept channels explain all of
                    their variance up to :func:`collinear_tolerance` (an exact duplicate,
                    ``a = b + c`` computed in float32, ...).
        collinear_with (dict): for each collinear channel, the kept channels that explain it,
                    the largest standardised regression weight first (weights below 1e-3 of
                    the largest are not listed).
        residual (Tensor): for each collinear channel (in the order of ``collinear``), the
                    fraction of its variance the kept channels leave unexplained.
        scale (Tensor): float64 [C], each channel's root mean square ``sqrt(var + mean^2)``:
                    the scale its variance is judged against (rounding of a streamed
                    co-moment is relative to it).
        layer_scale (float): the largest of ``scale``, the layer's scale (for messages).
        dead_rtol (float): the relative tolerance used for dead channels.
        collinear_rtol (float): the tolerance used for collinear channels.
        correlation (Tensor): float64 [len(live), len(live)], correlation matrix of the kept
                    channels (symmetric, unit diagonal), positive definite.
    """

    live: Tensor
    dead: Tensor
    collinear: Tensor
    collinear_with: Dict[int, List[int]]
    residual: Tensor
    scale: Tensor
    layer_scale: float
    dead_rtol: float
    collinear_rtol: float
    correlation: Tensor = field(repr=False)

    def message(self) -> str:
        """One line per left-out group, e.g. ``"channel 7 = combination of channels [2, 3]"``."""
        lines = []
        if self.dead.numel():
            lines.append(f"{self.dead.numel()} dead channels (constant): {self.dead.tolist()}")
        for j, res in zip(self.collinear.tolist(), self.residual.tolist()):
            lines.append(
                f"channel {j} is a linear combination of channels {self.collinear_with[j]} "
                f"(unexplained variance fraction {res:.2g} <= {self.collinear_rtol:.2g}); left out"
            )
        return "\n".join(lines)

    def describe_collinear(self) -> str:
        """The collinear channels and what explains them, e.g. ``"16 ~ [3]; 17 ~ [1, 2]"``."""
        return "; ".join(f"{j} ~ {self.collinear_with[j]}" for j in self.collinear.tolist())

    def to_dict(self) -> dict:
        return {
            "live": self.live.tolist(),
            "dead": self.dead.tolist(),
            "collinear": self.collinear.tolist(),
            "collinear_with": {str(k): v for k, v in self.collinear_with.items()},
            "residual": self.residual.tolist(),
            "layer_scale": self.layer_scale,
            "dead_rtol": self.dead_rtol,
            "collinear_rtol": self.collinear_rtol,
        }


def dead_tolerance(n: int) -> float:
    r"""Relative variance below which a channel of ``n`` streamed samples is constant.

    A constant channel ``x = a`` yields a nonzero variance only through the rounding of its
    float64 mean: each batch's mean is off by at most ``gamma_n |a|`` with
    ``gamma_n = n * eps`` (Higham's bound for a sum of ``n`` terms, ``eps = 2.2e-16``), and the
    centred squares and Chan's merge of batch means give at most ``var <= (2 gamma_n a)^2``.
    So a channel is dead when ``var <= tau^2 (var + mean^2)`` with ``tau = 2 n eps``, capped at
    ``1e-6`` (the former fixed rule ``var <= 1e-12 mean^2``, reached at ``n = 2.3e9``). The
    test is relative to the channel's own second moment, so it does not change when the
    activations are multiplied by any factor. Float32 activations cannot genuinely vary that
    little: their values are ``1.2e-7`` relative apart.

    Args:
        n (int): number of samples (images x pixels).

    Returns:
        float: ``tau^2``, the bound on ``var / (var + mean^2)``.
    """
    tau = min(2.0 * max(int(n), 1) * _EPS, 1e-6)
    return tau * tau


def collinear_tolerance(n: int, second_moment_ratio: Tensor, rtol: float = COLLINEAR_RTOL) -> Tensor:
    r"""Unexplained-variance fraction at or below which a channel counts as collinear.

    A channel is collinear when the other kept channels explain all of its variance but a
    fraction ``1 / (R^-1)_jj <= tol_j``. Two things make an exact combination look inexact:

    * float32 activations: ``a = b + c`` computed in float32 is off by up to half an ulp,
      ``6e-8 |a|``, relative to the value, not to the spread: it leaves an unexplained fraction
      up to ``(6e-8)^2 rho_a`` with ``rho = E[x^2] / var(x) = 1 + mean^2 / var`` (large for a
      channel with a large offset);
    * rounding of the float64 co-moments. :class:`~captum_elfa.stats.moments.RunningMoments`
      accumulates centred products (each batch centred on its own mean, batches merged with
      Chan's update), so an entry of ``R`` is off by about ``sqrt(n) eps`` (random-walk rounding
      of ``n`` terms, ``eps = 2.2e-16``), whatever the channels' offsets, and the unexplained
      fraction inherits that error linearly. (Raw, uncentred sums would multiply it by ``rho``.)

    Hence ``tol_j = max(rtol, 64 sqrt(n) eps + (6e-8)^2 rho_j)``: 64 is a safety factor (the
    fractions left by float32 copies and sums stay below 1e-13 in ``tests/test_screening.py``'s
    scan), and the term is 1.4e-11 at ``n = 10^9`` pixels. The floor ``rtol = 1e-10`` is far above
    rounding of ordinary channels and far below genuine near-collinearity: a real channel
    correlated 0.999999 with another leaves 2e-6 and is kept. A kept set with every fraction above
    1e-10 has a smallest eigenvalue of at least ``1e-10 / C``: float64 inverts it with a relative
    error ``<= C eps / 1e-10 ~ 1e-3`` for ``C = 512``, so KMO's partial correlations, Bartlett's
    ``ln det R`` and the ML fit remain meaningful. Half-precision activations (bfloat16, float16)
    round 1e4 times coarser: their exact combinations leave ~1e-6 and are kept (the ML fit then
    reports them as near-Heywood channels); pass a larger ``rtol`` to drop them.

    Args:
        n (int): number of samples.
        second_moment_ratio (Tensor): ``rho_j = (var_j + mean_j^2) / var_j`` per channel.
        rtol (float): the floor, default :data:`COLLINEAR_RTOL`.

    Returns:
        Tensor: float64, ``tol_j`` per channel.
    """
    rho = second_moment_ratio.to(torch.float64)
    rounding = 64.0 * math.sqrt(max(int(n), 1)) * _EPS + (6e-8) ** 2 * rho
    return torch.clamp(rounding, min=float(rtol))


def screen_channels(mean: Tensor, cov: Tensor, n: int, *, rtol: Optional[float] = None) -> ChannelScreen:
    r"""Dead and collinear channels of a layer, from its streamed moments.

    Dead: ``var_j <= dead_tolerance(n) * (var_j + mean_j^2)`` (or a variance that is zero,
    negative, subnormal or not finite). Collinear: among the channels that are not dead, a
    Cholesky factorisation of their correlation matrix in channel order skips every channel
    that the channels kept before it explain but for a fraction ``tol_j``
    (:func:`collinear_tolerance`) of its variance, so of a dependent set (a channel and its
    copy; ``b``, ``c`` and ``a = b + c``) the highest index is left out. A backward pass then
    re-checks every kept channel against all the other kept ones (``1 / (R_K^-1)_jj``, the
    exact leave-one-out unexplained fraction) and removes the worst one at a time (the higher
    index on ties) until every kept channel exceeds its tolerance, so the kept correlation
    matrix has smallest eigenvalue at least ``min_j tol_j / C``.

    Everything is computed from ``var / (var + mean^2)`` and the correlation matrix, so the
    result is invariant to multiplying all activations (or one channel) by a nonzero factor, and
    to adding a constant to a channel as long as its float64 moments still resolve its variance.

    Note that with ``n - 1`` samples or fewer for the non-dead channels the sample correlation
    matrix is singular for want of samples; check ``n`` before screening.

    Args:
        mean (Tensor): [C] channel means.
        cov (Tensor): [C, C] (population) covariance, e.g. ``comoment / n``.
        n (int): number of samples (images x pixels) the moments were streamed from.
        rtol (float, optional): floor of the collinearity tolerance; default
                    :data:`COLLINEAR_RTOL` (1e-10).

    Returns:
        ChannelScreen: the partition, the reasons, and the kept channels' correlation matrix.

    Raises:
        CaptumElfaError: if the shapes do not match, ``n < 2`` or ``rtol`` is not in [0, 1).

    Examples::

        >>> m = moments  # a captum_elfa.stats.moments.Moments
        >>> s = screen_channels(m.mean, m.covariance, m.n)
        >>> s.live, s.dead, s.collinear, s.collinear_with
        >>> print(s.message())
    """
    mean = mean.detach().to(torch.float64).cpu().reshape(-1)
    cov = cov.detach().to(torch.float64).cpu()
    c = mean.numel()
    if cov.shape != (c, c):
        raise CaptumElfaError(f"cov has shape {tuple(cov.shape)}; expected ({c}, {c}) for {c} channel means")
    if int(n) < 2:
        raise CaptumElfaError(f"n={n} samples: screening needs at least 2 samples")
    rtol_f = COLLINEAR_RTOL if rtol is None else float(rtol)
    if not 0.0 <= rtol_f < 1.0 or math.isnan(rtol_f):
        raise CaptumElfaError(f"rtol={rtol!r} is not valid; use a float in [0, 1) (default {COLLINEAR_RTOL})")

    var = torch.diagonal(cov).clone()
    second = var + mean**2
    finite = torch.isfinite(var) & torch.isfinite(mean)
    dead_rtol = dead_tolerance(n)
    safe_second = torch.where(finite & (second > 0), second, torch.ones_like(second))
    dead_mask = ~finite | ~(var > _TINY) | (var <= dead_rtol * safe_second)
    scale = torch.sqrt(torch.where(finite, second, torch.zeros_like(second)))
    cand = torch.nonzero(~dead_mask).flatten()

    empty = torch.zeros(0, dtype=torch.long)
    if cand.numel() == 0:
        return ChannelScreen(
            empty, torch.arange(c), empty, {}, torch.zeros(0, dtype=torch.float64), scale,
            float(scale.max()) if c else 0.0, dead_rtol, rtol_f, torch.zeros(0, 0, dtype=torch.float64),
        )  # fmt: skip

    sd = torch.sqrt(var[cand])
    r = cov[cand][:, cand] / torch.outer(sd, sd)
    r = 0.5 * (r + r.T)
    r.fill_diagonal_(1.0)
    rho = second[cand] / var[cand]
    tol = collinear_tolerance(n, rho, rtol_f)

    keep = _sequential_cholesky_keep(r, tol)
    keep = _backward_eliminate(r, keep, tol)
    keep_sorted = sorted(keep)
    drop = [i for i in range(cand.numel()) if i not in set(keep_sorted)]

    kept_idx = torch.tensor(keep_sorted, dtype=torch.long)
    rk = r[kept_idx][:, kept_idx]
    collinear_with: Dict[int, List[int]] = {}
    residual = torch.zeros(len(drop), dtype=torch.float64)
    if drop:
        rinv_k = torch.linalg.inv(rk)
        for t, j in enumerate(drop):
            rkj = r[kept_idx, j]
            beta = rinv_k @ rkj
            residual[t] = max(float(1.0 - rkj @ beta), 0.0)
            mag = beta.abs()
            order = torch.argsort(mag, descending=True)
            big = order[mag[order] >= 1e-3 * float(mag.max())] if float(mag.max()) > 0 else order[:0]
            collinear_with[int(cand[j])] = [int(cand[kept_idx[i]]) for i in big.tolist()]
    live = cand[kept_idx]
    collinear = cand[torch.tensor(drop, dtype=torch.long)] if drop else empty
    return ChannelScreen(
        live=live,
        dead=torch.nonzero(dead_mask).flatten(),
        collinear=collinear,
        collinear_with=collinear_with,
        residual=residual,
        scale=scale,
        layer_scale=float(scale.max()),
        dead_rtol=dead_rtol,
        collinear_rtol=rtol_f,
        correlation=rk,
    )


def _sequential_cholesky_keep(r: Tensor, tol: Tensor) -> List[int]:
    """Cholesky in channel order, skipping the channels the earlier kept ones already explain.

    ``resid[j]`` is channel ``j``'s unexplained fraction given the channels kept so far; a channel
    whose fraction is at most ``tol[j]`` when its turn comes is left out, so of a dependent set
    the highest index is the one left out.
    """
    m = r.shape[0]
    resid = torch.diagonal(r).clone()
    lmat = torch.zeros(m, m, dtype=r.dtype)  # columns of the Cholesky factor of the kept channels
    keep: List[int] = []
    res_l, tol_l = resid.tolist(), tol.tolist()
    for p in range(m):
        if res_l[p] <= tol_l[p]:
            continue
        q = len(keep)
        col = r[:, p] - lmat[:, :q] @ lmat[p, :q]
        col = col / math.sqrt(res_l[p])
        col[: p + 1] = 0.0  # earlier channels are decided; p itself is fully explained from now on
        lmat[:, q] = col
        keep.append(p)
        resid = resid - col**2
        res_l = resid.tolist()
    return keep


def _backward_eliminate(r: Tensor, keep: List[int], tol: Tensor) -> List[int]:
    """Remove, one at a time, the kept channel best explained by all the others."""
    keep = sorted(keep)
    while len(keep) > 1:
        idx = torch.tensor(keep, dtype=torch.long)
        try:
            inv = torch.linalg.inv(r[idx][:, idx])
        except RuntimeError:
            inv = None
        if inv is None or not bool(torch.isfinite(inv).all()):
            # numerically singular despite the pivots: drop the channel with the largest diag of pinv
            inv = torch.linalg.pinv(r[idx][:, idx], hermitian=True)
        d = torch.diagonal(inv)
        unexplained = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        margin = unexplained / tol[idx]
        # the worst one; on (near) ties the higher index, as in the forward pass
        worst = int(len(keep) - 1 - torch.argmin(margin.flip(0)))
        if float(margin[worst]) > 1.0:
            break
        del keep[worst]
    return keep


def min_images(n_channels: int, n_factors: Optional[int] = None) -> int:
    r"""Fewest images for which a factor model of ``n_channels`` live channels is reproducible: ``2 C``.

    The pixels of an image are strongly dependent, so the sample size that matters is the number
    of images ``N``, not ``N x pixels``. Measured by ``python benchmarks/bench_min_images.py``
    (random-init ResNet-18, 64x64 images: crops of scikit-learn's sample photos, upsampled digits,
    low-pass noise; two disjoint sets of ``N`` images each, ML fit with the pool's Kaiser ``k``,
    2 repetitions; mean congruence over factors, worst repetition, "varimax / space")::

        N / C      layer1 C=64 k=13   layer1 C=64 k=26   layer2 C=128 k=23
        2 images   0.40 / 0.58        0.50 / 0.73        (128 pixels: no fit)
        0.25       0.63 / 0.86        0.61 / 0.85        0.68 / 0.86
        0.5        0.74 / 0.91        0.65 / 0.90        0.72 / 0.90
        1          0.78 / 0.91        0.80 / 0.92        0.78 / 0.95
        2          0.88 / 0.91        0.78 / 0.95        0.81 / 0.96
        4          0.80 / 0.95        0.81 / 0.99        0.77 / 0.99
        8          0.88 / 0.97        0.90 / 0.99        --

    "varimax": matched Tucker congruence of the rotated loadings of the two sets (what
    split-half stability reports); "space": congruence of the common-factor spaces after an
    orthogonal Procrustes rotation. From ``N = 2C`` on, the factor space replicates (>= 0.91) and
    the rotated factors come near "fair similarity" (0.85, Lorenzo-Seva & ten Berge 2006; 0.78 -
    0.88); at ``N <= C/2`` the rotated factors do not replicate (<= 0.74); on 2 images they are
    noise (0.4 - 0.5). "Equal" rotated factors (0.95) were not reached even at ``8C`` on these
    random-init layers, whose factors have little simple structure for varimax to find.
    Doubling ``k`` at the same ``N`` did not lower either congruence, so the count depends on
    ``C``, not on ``k``. KMO (off the pool's by up to 0.12 on 2 images, <= 0.02 from ``C/4``
    on) and the Kaiser count (+-4 on 2 images, +-2 from ``C/4`` on) move much less: the loadings
    are what too few images spoil. The images were 64 pixels
    (layer1 16x16, layer2 8x8 samples per image); larger images carry more pixels each, so the
    rule errs on the safe side for them.

    Args:
        n_channels (int): live channels ``C``.
        n_factors (int, optional): number of factors; validated, does not change the count
                    (see above).

    Returns:
        int: ``ceil(2 C)``.

    Examples::

        >>> min_images(256)
        512
    """
    if n_channels < 1:
        raise CaptumElfaError(f"n_channels={n_channels} is not valid; use a positive int")
    if n_factors is not None and n_factors < 1:
        raise CaptumElfaError(f"n_factors={n_factors} is not valid; use a positive int or None")
    return int(math.ceil(MIN_IMAGES_PER_CHANNEL * n_channels))
