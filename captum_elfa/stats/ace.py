"""Batched super smoother and ACE (alternating conditional expectations), in float64.

A vectorised re-implementation of the ``ace`` package 0.4.2 (a port of Friedman's ``supsmu.f``
and ``mace.f``): every function works on a batch of independent problems at once, one per row
(a channel of a layer, in PCACE), with the samples along the last dimension.

* :func:`fixed_span_smooth` is the running-line smoother with a symmetric window of
  ``2 * max(int(span * n / 2 + 0.5), 2) + 1`` samples (clipped at the ends), cross-validated
  absolute residuals, the ``1e-3`` inter-quartile variance floor under which the local slope is
  zero, and the smooth averaged over tied ``x``. Window sums come from cumulative sums rather
  than the package's one-sample-at-a-time updates.
* :func:`super_smoother` is Friedman's variable-span smoother: the three primary spans
  (tweeter 0.05, midrange 0.2, woofer 0.5), their cross-validated residuals smoothed with the
  midrange span, the best span at each point, optional bass enhancement, the best spans smoothed
  with the midrange span, interpolation between the primary smooths and a final tweeter smooth.
* :func:`ace` is Breiman and Friedman's ACE with ``mace.f``'s iteration control as the package
  implements it: theta starts as standardised ``y``, each phi as its centred ``x`` scaled by a
  conjugate-gradient least-squares fit; inner iterations update the phi (a new phi is kept only
  if it raises R^2) until R^2 gains at most ``delrsq`` (a single pass for one predictor); outer
  iterations stop once R^2 has changed by at most ``delrsq`` over the last ``nterm`` of them (at
  least ``nterm`` iterations) or after ``maxit``.

:func:`standardized_components` is the PCACE preprocessing: per channel, standardise every pixel
position over the images (as scikit-learn's ``StandardScaler``) and project on the leading
principal axes (as scikit-learn's ``PCA``, with its sign convention).

Deliberate differences from the package, all where it computes with rounding noise:

* a cross-validation leverage within ``LEVERAGE_TOL`` of 1 (a window of tied values plus the
  point itself) counts as 1, so the previous residual is reused as the package intends; the
  package divides a rounding residue by a rounding residue there (an arbitrary O(1) number);
* a window whose ``x`` are all tied has variance exactly 0;
* a phi whose every value is 0 is not rescaled in the initial least-squares fit (the package
  divides 0 by 0), and a theta update whose smooth is constant keeps the previous theta (the
  package divides by a zero standard deviation); both only arise for degenerate predictors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from captum_elfa.stats import _numba
from captum_elfa.stats._pca import standardized_components, standardized_spectrum
from captum_elfa.stats._smoother import (
    BASS_SPAN,
    DEFAULT_SPANS,
    MID_SPAN,
    TWEETER_SPAN,
    SortedAbscissa,
    fixed_span_smooth,
    super_smoother,
)

__all__ = [
    "TWEETER_SPAN",
    "MID_SPAN",
    "BASS_SPAN",
    "DEFAULT_SPANS",
    "SortedAbscissa",
    "fixed_span_smooth",
    "super_smoother",
    "ACEResult",
    "ace",
    "canonical_orders",
    "standardized_components",
    "standardized_spectrum",
    "correlation",
]

DEFAULT_DELRSQ = 0.01
DEFAULT_MAXIT = 20
DEFAULT_NTERM = 3


# ---------------------------------------------------------------------------------------------
# ACE
# ---------------------------------------------------------------------------------------------
@dataclass
class ACEResult:
    """Transforms found by :func:`ace` for a batch of ``B`` problems.

    Attributes:
        x_transforms (Tensor): ``[B, m, n]`` phi_i(x_i), each centred, in the input order.
        y_transform (Tensor): ``[B, n]`` theta(y), mean 0 and variance 1.
        rsq (Tensor): ``[B]`` final ``1 - mean((theta - sum phi)^2)``.
        outer_iterations (Tensor): ``[B]`` number of outer iterations run.
    """

    x_transforms: Tensor
    y_transform: Tensor
    rsq: Tensor
    outer_iterations: Tensor

    @property
    def correlation(self) -> Tensor:
        """``[B]`` ``|corr(theta(y), sum_i phi_i(x_i))|`` in [0, 1] (0 where either is constant)."""
        return correlation(self.x_transforms.sum(1), self.y_transform).abs().clamp(0.0, 1.0)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the rows of ``a`` and ``b`` (``[..., n]``); 0 where either is constant."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    denom = (a * a).sum(-1).sqrt() * (b * b).sum(-1).sqrt()
    num = (a * b).sum(-1)
    ok = denom > 0
    return torch.where(ok, num / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(num))


def _scale_x_transforms(phis: Tensor, theta: Tensor, delrsq: float) -> Tensor:
    """Initial phi: centred x scaled by the least-squares fit of theta (``scale`` in mace.f).

    The package's conjugate-gradient passes, batched: ``m`` passes of ``m`` steps at most, a pass
    stopping early where the squared gradient is 0 and the passes stopping where no coefficient
    moved by ``delrsq`` or more. A step along a direction in which every phi is 0 is skipped (the
    package would divide by zero).
    """
    b, m, n = phis.shape
    coeffs = phis.new_zeros(b, m)
    last_direction = phis.new_zeros(b, m)
    last_gradient_sq = phis.new_ones(b)
    passes_running = torch.ones(b, dtype=torch.bool, device=phis.device)
    for _ in range(m):
        previous = coeffs.clone()
        running = passes_running.clone()
        for step in range(m):
            residual = theta - torch.einsum("bmn,bm->bn", phis, coeffs)
            gradient = -2.0 * torch.einsum("bn,bmn->bm", residual, phis) / n
            gradient_sq = (gradient * gradient).sum(-1)
            running = running & (gradient_sq > 0)
            if step == 0:
                direction = -gradient
            else:
                direction = -gradient + (gradient_sq / last_gradient_sq).unsqueeze(-1) * last_direction
            last_gradient_sq = torch.where(running, gradient_sq, last_gradient_sq)
            projected = torch.einsum("bmn,bm->bn", phis, direction)
            pp = (projected * projected).sum(-1)
            move = running & (pp > 0)
            alpha = (projected * residual).sum(-1) / torch.where(move, pp, torch.ones_like(pp))
            coeffs = torch.where(move.unsqueeze(-1), coeffs + alpha.unsqueeze(-1) * direction, coeffs)
            last_direction = torch.where(running.unsqueeze(-1), direction, last_direction)
            if not bool(running.any()):
                break
        passes_running = passes_running & ~((coeffs - previous).abs().amax(-1) < delrsq)
        if not bool(passes_running.any()):
            break
    return phis * coeffs.unsqueeze(-1)


def _lexsort(keys: list[Tensor]) -> Tensor:
    """Indices sorting the rows lexicographically by ``keys`` ``[B, n]`` (the first key decides
    first); ties in every key keep their input order."""
    order = torch.sort(keys[-1], dim=-1, stable=True).indices
    for key in reversed(keys[:-1]):
        order = order.gather(-1, torch.sort(key.gather(-1, order), dim=-1, stable=True).indices)
    return order


def _has_ties(values: Tensor, order: Tensor) -> bool:
    ordered = values.gather(-1, order)
    return bool((ordered[..., 1:] == ordered[..., :-1]).any())


def canonical_orders(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The orders in which :func:`ace` smooths against each predictor and against the response.

    Ties are broken canonically by the other variables of the sample, so that the smoothers see
    the same sequence whatever the order of the samples: predictor ``k`` is sorted by ``x_k``,
    then ``x_1, ..., x_m`` without ``x_k``, then ``y``; the response by ``y``, then
    ``x_1, ..., x_m``. Samples tied in every variable are interchangeable. This is the order the
    package's stable sorts give when the samples arrive sorted lexicographically by
    ``(x_1, ..., x_m, y)``.

    Args:
        x (Tensor): ``[B, m, n]`` predictors.
        y (Tensor): ``[n]`` or ``[B, n]`` response.

    Returns:
        (x_order, y_order): ``[B, m, n]`` and ``[n]`` (a shared response without ties) or
        ``[B, n]`` indices.
    """
    batch, m, n = x.shape
    x_order = torch.sort(x, dim=-1, stable=True).indices
    yb = y.expand(batch, n)
    # one predictor and a shared response already in ascending order (PCACE's canonical image
    # order): the stable sort by x already breaks ties by y, then by position, as the lexsort would
    presorted = m == 1 and y.dim() == 1 and bool((y[1:] >= y[:-1]).all())
    if not presorted and _has_ties(x, x_order):
        for k in range(m):
            if _has_ties(x[:, k], x_order[:, k]):
                keys = [x[:, k]] + [x[:, j] for j in range(m) if j != k] + [yb]
                x_order[:, k] = _lexsort(keys)
    y_order = torch.sort(y, dim=-1, stable=True).indices
    if _has_ties(y, y_order):
        y_order = _lexsort([yb] + [x[:, j] for j in range(m)])
    return x_order, y_order


def _sort_rows(values: Tensor, order: Tensor) -> Tensor:
    return values.gather(-1, order.expand(*values.shape[:-1], order.shape[-1]))


def _unsort_rows(values: Tensor, order: Tensor) -> Tensor:
    return torch.empty_like(values).scatter_(-1, order.expand_as(values), values)


def ace(
    x: Tensor,
    y: Tensor,
    delrsq: float = DEFAULT_DELRSQ,
    maxit: int = DEFAULT_MAXIT,
    nterm: int = DEFAULT_NTERM,
    bass_enhancement: float = 0.0,
) -> ACEResult:
    """Breiman and Friedman's ACE for a batch of problems (the package's ``ACESolver``).

    Finds theta(y) (mean 0, variance 1) and phi_i(x_i) maximising the correlation between theta
    and ``sum_i phi_i``, alternating super-smoother estimates of ``E[theta - sum_{j!=i} phi_j | x_i]``
    and ``E[sum phi | y]``. Converged problems leave the batch, the others go on.

    Tied values are ordered canonically (:func:`canonical_orders`): the result is a function of
    the set of samples ``(x_1..x_m, y)``, not of their order, and equals the package's result on
    the samples sorted lexicographically by ``(x_1, ..., x_m, y)`` (without ties, on any order).

    Args:
        x (Tensor): predictors, ``[B, n]`` (one predictor) or ``[B, m, n]``.
        y (Tensor): response, ``[n]`` shared by the batch or ``[B, n]``. Must not be constant.
        delrsq (float): convergence threshold on R^2. Default: 0.01 (mace.f).
        maxit (int): maximum number of inner and of outer iterations. Default: 20.
        nterm (int): number of consecutive outer iterations checked for convergence. Default: 3.
        bass_enhancement (float): passed to :func:`super_smoother`. Default: 0 (none).

    Returns:
        ACEResult: the transforms in the input order, R^2 and iteration counts.
    """
    x = x.to(torch.float64)
    if x.dim() == 2:
        x = x.unsqueeze(1)
    if x.dim() != 3:
        raise ValueError(f"x must be [B, n] or [B, m, n], got shape {tuple(x.shape)}")
    y = y.to(device=x.device, dtype=torch.float64)
    batch, m, n = x.shape
    if y.shape[-1] != n or y.dim() not in (1, 2) or (y.dim() == 2 and y.shape[0] != batch):
        raise ValueError(f"y must be [{n}] or [{batch}, {n}] for x of shape {tuple(x.shape)}, got {tuple(y.shape)}")
    y_std = y.std(-1, unbiased=False, keepdim=True)
    if bool((y_std == 0).any()):
        raise ValueError("y is constant: ACE needs a response that varies")

    theta = ((y - y.mean(-1, keepdim=True)) / y_std).expand(batch, n).clone()
    phis = x - x.mean(-1, keepdim=True)
    phis = _scale_x_transforms(phis, theta, delrsq)
    x_order, y_order = canonical_orders(x, y)
    x_sorted = x.gather(-1, x_order)
    y_sorted = y.expand(batch, n).gather(-1, y_order) if y_order.dim() == 2 else y.gather(-1, y_order)
    if y_sorted.dim() == 2 and bool((y_sorted == y_sorted[:1]).all()):
        # rows with the same y values in different pairings (a permutation null): one y axis
        y_sorted = y_sorted[0]
    if _use_kernel(x, m, bass_enhancement):
        return _ace_compiled(phis, theta, x_sorted, x_order, y_sorted, y_order, delrsq, maxit, nterm)
    y_axis_full = SortedAbscissa(y_sorted)

    rsq = x.new_zeros(batch)
    history = x.new_full((batch, nterm), 100.0)
    outer = torch.zeros(batch, dtype=torch.long, device=x.device)
    active = torch.arange(batch, device=x.device)
    x_axes: list[SortedAbscissa] = [SortedAbscissa(x_sorted[:, k]) for k in range(m)]
    y_axis = y_axis_full
    shared_y = y_order.dim() == 1
    shared_axis = y_axis.x.dim() == 1

    for it in range(maxit):
        ph, th, rs = phis.index_select(0, active), theta.index_select(0, active), rsq.index_select(0, active)
        xo = x_order.index_select(0, active)
        yo = y_order if shared_y else y_order.index_select(0, active)
        inner_running = torch.ones(active.numel(), dtype=torch.bool, device=x.device)
        for inner in range(maxit):
            before = rs.clone()
            ph, rs = _update_x_transforms(ph, th, rs, xo, x_axes, inner_running, bass_enhancement)
            stop = (rs - before <= delrsq) | (m == 1) | (inner + 1 >= maxit)
            inner_running = inner_running & ~stop
            if not bool(inner_running.any()):
                break
        th = _update_y_transform(ph, th, yo, y_axis, bass_enhancement)
        rs = 1.0 - ((th - ph.sum(1)) ** 2).mean(-1)
        phis.index_copy_(0, active, ph)
        theta.index_copy_(0, active, th)
        rsq.index_copy_(0, active, rs)
        history[active, it % nterm] = rs
        outer[active] = it + 1
        h = history.index_select(0, active)
        done = (h.amax(-1) - h.amin(-1) <= delrsq) | (it + 1 >= maxit)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            active = active[keep]
            x_axes = [ax.subset(keep.nonzero().squeeze(-1)) for ax in x_axes]
            if not shared_axis:
                y_axis = y_axis.subset(keep.nonzero().squeeze(-1))
    return ACEResult(phis, theta, rsq, outer)


def _use_kernel(x: Tensor, m: int, bass_enhancement: float) -> bool:
    return x.device.type == "cpu" and m == 1 and not 0.0 < bass_enhancement <= 10.0 and _numba.load()


def _ace_compiled(
    phis: Tensor,
    theta: Tensor,
    x_sorted: Tensor,
    x_order: Tensor,
    y_sorted: Tensor,
    y_order: Tensor,
    delrsq: float,
    maxit: int,
    nterm: int,
) -> ACEResult:
    """The iterations of :func:`ace` for one predictor in the compiled kernel
    (:mod:`captum_elfa.stats._ace_kernel`), from the same starting point and orders."""
    from captum_elfa.stats import _ace_kernel

    def rows(t: Tensor) -> np.ndarray:
        return np.ascontiguousarray((t if t.dim() == 2 else t.unsqueeze(0)).detach().numpy())

    phi, th, rsq, outer = _ace_kernel.ace_one_predictor(
        rows(phis[:, 0]),
        rows(theta),
        rows(x_sorted[:, 0]),
        rows(x_order[:, 0]),
        rows(y_sorted),
        rows(y_order),
        delrsq,
        maxit,
        nterm,
        threads=torch.get_num_threads(),
    )
    return ACEResult(
        torch.from_numpy(phi).unsqueeze(1),
        torch.from_numpy(th),
        torch.from_numpy(rsq),
        torch.from_numpy(outer),
    )


def _update_x_transforms(
    phis: Tensor,
    theta: Tensor,
    rsq: Tensor,
    x_order: Tensor,
    x_axes: list[SortedAbscissa],
    running: Tensor,
    bass_enhancement: float,
) -> tuple[Tensor, Tensor]:
    """One inner pass: phi_k <- centred smooth of ``theta - sum_{j!=k} phi_j`` against x_k, kept
    only where it raises R^2 (and the row is still running)."""
    phis = phis.clone()
    rest = theta - phis.sum(1)
    for k, axis in enumerate(x_axes):
        order = x_order[:, k]
        target = _sort_rows(rest + phis[:, k], order)
        new = super_smoother(axis, target, bass_enhancement)
        new = new - new.mean(-1, keepdim=True)
        new_rsq = 1.0 - ((target - new) ** 2).mean(-1)
        accept = running & (new_rsq > rsq)
        rsq = torch.where(accept, new_rsq, rsq)
        new_phi = _unsort_rows(new, order)
        updated_rest = (rest + phis[:, k]) - new_phi
        phis[:, k] = torch.where(accept.unsqueeze(-1), new_phi, phis[:, k])
        rest = torch.where(accept.unsqueeze(-1), updated_rest, rest)
    return phis, rsq


def _update_y_transform(
    phis: Tensor, theta: Tensor, y_order: Tensor, y_axis: SortedAbscissa, bass_enhancement: float
) -> Tensor:
    """theta <- standardised smooth of ``sum phi`` against y (kept as is where that is constant)."""
    total = _sort_rows(phis.sum(1), y_order)
    smooth = super_smoother(y_axis, total, bass_enhancement)
    smooth = smooth - smooth.mean(-1, keepdim=True)
    std = (smooth * smooth).mean(-1, keepdim=True).sqrt_()
    ok = std > 0
    new_theta = _unsort_rows(smooth / torch.where(ok, std, torch.ones_like(std)), y_order)
    return torch.where(ok, new_theta, theta)
