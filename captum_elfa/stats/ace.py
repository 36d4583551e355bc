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
from typing import Optional

import torch
from torch import Tensor

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

TWEETER_SPAN = 0.05
MID_SPAN = 0.2
BASS_SPAN = 0.5
DEFAULT_SPANS = (TWEETER_SPAN, MID_SPAN, BASS_SPAN)

#: relative floor of the window variance below which the local slope is zero (``eps`` in supsmu.f)
VARIANCE_EPS = 1.0e-3
#: floor of the residual ratio in bass enhancement (``sml`` in supsmu.f)
MIN_BASS_RATIO = 1.0e-7
#: a cross-validation leverage this close to 1 counts as 1 (the residual is then undefined and the
#: previous one is reused, as in the package); see ``fixed_span_smooth``.
LEVERAGE_TOL = 1.0e-9

DEFAULT_DELRSQ = 0.01
DEFAULT_MAXIT = 20
DEFAULT_NTERM = 3


def _pad_cumsum(t: Tensor) -> Tensor:
    """Cumulative sum along the last dimension with a leading zero: ``S[j] = sum(t[..., :j])``."""
    out = torch.empty(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype, device=t.device)
    out[..., 0] = 0.0
    torch.cumsum(t, dim=-1, out=out[..., 1:])
    return out


def _window_shape(n: int, span: float) -> tuple[int, int]:
    """Half-width ``J`` and size ``W`` of the package's window for ``n`` samples.

    The package's smoother starts with the first ``W`` samples and slides the window by one
    sample for every ``i`` with ``J < i < n - J``: the window at sorted sample ``i`` starts at
    ``clamp(i - J, 0, n - W)``, with ``J = max(int(0.5 * span * n + 0.5), 2)`` and
    ``W = min(2 J + 1, n)``.
    """
    half = max(int(0.5 * span * n + 0.5), 2)
    return half, min(2 * half + 1, n)


def _per_sample(per_window: Tensor, half: int, size: int) -> Tensor:
    """Spread values of the ``n - W + 1`` distinct windows to the ``n`` samples that use them.

    The first ``J`` samples use the first window, the last ``W - J - 1`` the last one, and the
    ones between the window centred on them.
    """
    lead = per_window[..., :1].expand(*per_window.shape[:-1], half)
    trail = per_window[..., -1:].expand(*per_window.shape[:-1], size - half - 1)
    return torch.cat([lead, per_window, trail], dim=-1)


def _window_sums(cum: Tensor, half: int, size: int) -> Tensor:
    """Sum over each sample's window from a padded cumulative sum ``[..., n + 1]``."""
    return _per_sample(cum[..., size:] - cum[..., : cum.shape[-1] - size], half, size)


def _variance_threshold(x: Tensor) -> Tensor:
    """``vsmlsq`` of supsmu.f: ``(1e-3 * scale)^2`` with ``scale`` an inter-quartile spread of x.

    ``scale = x[3q - 1] - x[q - 1]`` with ``q = max(n // 4, 1)``, the two indices moved apart one
    step at a time while the spread is zero. ``x`` is sorted, so the spread grows with the steps
    and the first positive one is the smallest positive one.
    """
    n = x.shape[-1]
    lower = max(n // 4, 1)
    upper = 3 * lower
    steps = torch.arange(max(n - upper, lower - 1) + 1, device=x.device)
    up_idx = (upper + steps).clamp(max=n) - 1
    lo_idx = (lower - steps).clamp(min=1) - 1
    spread = x.index_select(-1, up_idx) - x.index_select(-1, lo_idx)
    positive = spread > 0
    scale = torch.where(positive, spread, torch.full_like(spread, float("inf"))).amin(-1)
    scale = torch.where(positive.any(-1), scale, torch.zeros_like(scale))
    return (VARIANCE_EPS * scale) ** 2


@dataclass
class _SpanCache:
    half: int
    size: int
    sx_w: Tensor  # window sums of centred x
    slope_dx: Tensor  # (x_i - window mean) / window variance; 0 where the slope is forced to 0
    valid: Tensor  # leverage < 1: the cross-validated residual is defined
    inv_denom: Tensor  # 1 / (1 - leverage) where valid, else 1
    all_valid: bool


class SortedAbscissa:
    """Sorted ``x`` values ``[..., n]`` and everything the smoothers need from them alone.

    Window statistics of ``x`` depend only on ``x`` and the span, so they are computed once and
    reused by every smooth against the same ``x`` (ACE smooths against the same sorted
    predictor and response in every iteration). ``x`` must be sorted ascending along the last
    dimension; tied values are allowed. Leading dimensions broadcast against the values smoothed.
    """

    def __init__(self, x: Tensor) -> None:
        if x.dim() < 1 or x.shape[-1] < 3:
            raise ValueError(f"need at least 3 samples to smooth, got x of shape {tuple(x.shape)}")
        x = x.to(torch.float64)
        self.x = x
        self.n = x.shape[-1]
        self.offset = x.mean(-1, keepdim=True)
        self.xc = x - self.offset
        self.sx = _pad_cumsum(self.xc)
        self.sxx = _pad_cumsum(self.xc * self.xc)
        self.threshold = _variance_threshold(x).unsqueeze(-1)
        self.varying = x[..., -1] > x[..., 0]
        new_value = x[..., 1:] > x[..., :-1]
        self.has_ties = not bool(new_value.all())
        if self.has_ties:
            groups = torch.zeros(x.shape, dtype=torch.long, device=x.device)
            torch.cumsum(new_value.long(), dim=-1, out=groups[..., 1:])
            counts = torch.zeros_like(x).scatter_add_(-1, groups, torch.ones_like(x))
            self.groups = groups
            self.group_size = counts.gather(-1, groups)
        self._spans: dict[float, _SpanCache] = {}

    def _span(self, span: float) -> _SpanCache:
        cache = self._spans.get(span)
        if cache is not None:
            return cache
        half, size = _window_shape(self.n, span)
        sx_w = _window_sums(self.sx, half, size)
        sxx_w = _window_sums(self.sxx, half, size)
        mean = sx_w / size
        var = (sxx_w - sx_w * mean).clamp_min(0.0)
        # a window of tied values has exactly zero variance (cumulative sums leave a rounding
        # residue); x is sorted, so a window is tied iff its first and last values are equal
        tied = _per_sample(self.x[..., size - 1 :] == self.x[..., : self.n - size + 1], half, size)
        var = var.masked_fill(tied, 0.0)
        sloped = var > self.threshold
        inv_var = torch.where(sloped, 1.0 / torch.where(sloped, var, torch.ones_like(var)), 0.0)
        dx = self.xc - mean
        slope_dx = dx * inv_var
        denom = 1.0 - (1.0 / size + dx * slope_dx)
        valid = denom > LEVERAGE_TOL
        inv_denom = 1.0 / torch.where(valid, denom, torch.ones_like(denom))
        cache = _SpanCache(half, size, sx_w, slope_dx, valid, inv_denom, bool(valid.all()))
        self._spans[span] = cache
        return cache

    def tie_average(self, values: Tensor) -> Tensor:
        """Give the samples of every run of tied x the mean of their values."""
        if not self.has_ties:
            return values
        groups = self.groups.expand_as(values)
        sums = torch.zeros_like(values).scatter_add_(-1, groups, values)
        return sums.gather(-1, groups).div_(self.group_size)

    def subset(self, index: Tensor) -> SortedAbscissa:
        """The abscissa of the rows ``index`` (first dimension); a shared 1-D one is returned as is."""
        if self.x.dim() == 1:
            return self
        return SortedAbscissa(self.x.index_select(0, index))


def _as_abscissa(x: Tensor | SortedAbscissa) -> SortedAbscissa:
    return x if isinstance(x, SortedAbscissa) else SortedAbscissa(x)


def _smooths(
    ax: SortedAbscissa, y: Tensor, spans: tuple[float, ...], residuals: bool
) -> list[tuple[Tensor, Optional[Tensor]]]:
    """Fixed-span smooths of one ``y`` for several spans, sharing its cumulative sums."""
    y = y.to(torch.float64)
    y_mean = y.mean(-1, keepdim=True)
    yc = y - y_mean
    sy = _pad_cumsum(yc)
    sxy = _pad_cumsum(ax.xc * yc)
    out = []
    for span in spans:
        c = ax._span(span)
        my = _window_sums(sy, c.half, c.size).div_(c.size)
        cov = _window_sums(sxy, c.half, c.size).sub_(c.sx_w * my)
        smooth_c = cov.mul_(c.slope_dx).add_(my)
        res: Optional[Tensor] = None
        if residuals:
            res = (yc - smooth_c).abs_().mul_(c.inv_denom)
            if not c.all_valid:
                valid = c.valid.expand_as(res)
                pos = torch.arange(ax.n, device=res.device).expand_as(res)
                last = torch.where(valid, pos, torch.full_like(pos, -1)).cummax(-1).values
                res = res.gather(-1, last.clamp_min(0)).masked_fill_(last < 0, 0.0)
        out.append((ax.tie_average(smooth_c.add_(y_mean)), res))
    return out


def fixed_span_smooth(
    x: Tensor | SortedAbscissa, y: Tensor, span: float, residuals: bool = True
) -> tuple[Tensor, Optional[Tensor]]:
    """Running-line smooth of ``y`` against sorted ``x`` with a fixed span (the package's
    ``BasicFixedSpanSmoother``), batched over the leading dimensions.

    At sorted sample ``i`` the smooth is the least-squares line through the window of
    ``W = min(2 J + 1, n)`` samples around ``i`` (``J = max(int(span * n / 2 + 0.5), 2)``, windows
    clipped at the ends), evaluated at ``x_i``; the slope is 0 where the window variance of x is
    below ``(1e-3 * IQR-spread)^2``. The cross-validated residual is ``|y_i - s_i| / (1 - h_i)``
    with leverage ``h_i = 1/W + (x_i - mean)^2 / var``; where ``h_i`` is 1 (a window of tied values
    and one other) the previous residual is reused (0 at the start). Finally the smooth of tied
    ``x`` values is replaced by their mean (the residuals are not).

    Args:
        x (Tensor or SortedAbscissa): sorted abscissae ``[..., n]``, ``n >= 3``.
        y (Tensor): values ``[..., n]`` in the order of ``x``; broadcasts with ``x``.
        span (float): fraction of the samples in the window.
        residuals (bool): also return the cross-validated absolute residuals.

    Returns:
        (smooth, residuals): float64 Tensors of the broadcast shape; residuals is None if not
        requested.
    """
    return _smooths(_as_abscissa(x), y, (span,), residuals)[0]


def _interp_spans(spans: Tensor, primaries: list[Tensor]) -> Tensor:
    """``numpy.interp(spans, DEFAULT_SPANS, primaries)`` elementwise (clamped at the ends).

    Written as ``f0 + (f1 - f0) t0 + (f2 - f1) t1`` with ``t0, t1`` the clamped positions in the two
    intervals, which equals numpy's piecewise formula up to rounding and avoids boolean masks
    (slow elementwise kernels on CPU).
    """
    f0, f1, f2 = primaries
    t0 = spans.clamp(TWEETER_SPAN, MID_SPAN).sub_(TWEETER_SPAN).div_(MID_SPAN - TWEETER_SPAN)
    t1 = spans.clamp(MID_SPAN, BASS_SPAN).sub_(MID_SPAN).div_(BASS_SPAN - MID_SPAN)
    return (f1 - f0).mul_(t0).add_(f0).add_((f2 - f1).mul_(t1))


def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``where(mask, a, b)`` for finite values with a 0/1 float mask: exact, without a boolean kernel."""
    return a * mask + b * (1.0 - mask)


def super_smoother(x: Tensor | SortedAbscissa, y: Tensor, bass_enhancement: float = 0.0) -> Tensor:
    """Friedman's variable-span super smoother (the package's ``SuperSmoother``), batched.

    Args:
        x (Tensor or SortedAbscissa): sorted abscissae ``[..., n]``, ``n >= 3``; ties allowed.
        y (Tensor): values ``[..., n]`` in the order of ``x``; broadcasts with ``x``.
        bass_enhancement (float): alpha in (0, 10] pulls the chosen spans towards the woofer
                    span (Friedman's eq. 11); 0 (the package's default) or out of range: none.

    Returns:
        Tensor: the smooth, float64, of the broadcast shape. Rows whose ``x`` is constant get the
        mean of ``y``.
    """
    ax = _as_abscissa(x)
    y = y.to(torch.float64)
    primary = _smooths(ax, y, DEFAULT_SPANS, residuals=True)
    rs = [_smooths(ax, r, (MID_SPAN,), residuals=False)[0][0] for _, r in primary]  # type: ignore[arg-type]
    # best span at each point: the first of the smallest smoothed residuals (list.index(min))
    better = (rs[1] < rs[0]).to(y.dtype)
    best_res = _select(better, rs[1], rs[0])
    best_span = _select(better, torch.full_like(better, MID_SPAN), torch.full_like(better, TWEETER_SPAN))
    better = (rs[2] < best_res).to(y.dtype)
    best_res = _select(better, rs[2], best_res)
    best_span = _select(better, torch.full_like(better, BASS_SPAN), best_span)
    if 0.0 < bass_enhancement <= 10.0:
        bass_residual = rs[DEFAULT_SPANS.index(BASS_SPAN)]
        enhance = (best_res > 0) & (best_res < bass_residual)
        ratio = (best_res / torch.where(enhance, bass_residual, 1.0)).clamp_min(MIN_BASS_RATIO)
        enhanced = best_span + (BASS_SPAN - best_span) * ratio ** (10.0 - bass_enhancement)
        best_span = torch.where(enhance, enhanced, best_span)
    smoothed_span = _smooths(ax, best_span, (MID_SPAN,), residuals=False)[0][0]
    interpolated = _interp_spans(smoothed_span, [s for s, _ in primary])
    result = _smooths(ax, interpolated, (TWEETER_SPAN,), residuals=False)[0][0]
    if not bool(ax.varying.all()):
        mean = y.mean(-1, keepdim=True).expand_as(result)
        result = torch.where(ax.varying.unsqueeze(-1), result, mean)
    return result


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
    if _has_ties(x, x_order):
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


# ---------------------------------------------------------------------------------------------
# PCACE preprocessing
# ---------------------------------------------------------------------------------------------
def standardized_components(acts: Tensor, n_components: int) -> tuple[Tensor, Tensor]:
    """Standardise each pixel position over the images, then project on the leading principal axes.

    See :func:`standardized_spectrum`, which also returns the leading eigenvalues.

    Returns:
        (components, constant): ``[C, n_components, N]`` float64 scores and the ``[C]`` bool mask
        of constant channels.
    """
    scores, constant, _, _ = standardized_spectrum(acts, n_components)
    return scores, constant


def standardized_spectrum(
    acts: Tensor, n_components: int, n_eigenvalues: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardise each pixel position over the images, then project on the leading principal axes.

    Per channel, as scikit-learn's ``StandardScaler().fit_transform`` followed by
    ``PCA(n_components).fit_transform``: a column whose variance is zero up to rounding
    (scikit-learn's rule) is centred but not scaled, and each principal axis is signed so that its
    largest-magnitude loading is positive (``svd_flip`` with ``u_based_decision=False``; loadings
    whose magnitudes agree to 1e-9 count as tied and the first one decides, where scikit-learn lets
    rounding decide). A component whose variance is zero up to rounding is set to exactly 0.

    Args:
        acts (Tensor): ``[C, N, P]`` activations of ``C`` channels for ``N`` images and ``P``
                    pixel positions (any float dtype; computed in float64).
        n_components (int): number of components, at most ``min(N, P)``.
        n_eigenvalues (int): leading eigenvalues to return, at least ``n_components`` (smaller
                    values count as ``n_components``); those beyond ``min(N, P)`` are 0.

    Returns:
        (components, constant, eigenvalues, total): ``[C, n_components, N]`` float64
        principal-component scores, a ``[C]`` bool mask of channels whose every pixel position is
        constant over the images (their components are 0), ``[C, e]`` the leading eigenvalues of
        the standardised maps' Gram matrix, largest first, and ``[C]`` its trace (eigenvalues
        are ``N`` times those of the covariance; ratios are what matter).
    """
    c, n, p = acts.shape
    if not 1 <= n_components <= min(n, p):
        raise ValueError(f"n_components={n_components} must be between 1 and min(N, P)={min(n, p)}")
    z = acts.to(torch.float64, copy=True)
    mean = z.mean(1, keepdim=True)
    z.sub_(mean)
    var = (z * z).mean(1, keepdim=True)  # [C, 1, P]
    eps = torch.finfo(torch.float64).eps
    constant_col = var <= n * eps * var + (n * mean * eps) ** 2
    # 1 / scale, with constant columns (scikit-learn: centred, scale 1) set to exactly 0
    inv_scale = (1.0 / var.sqrt().masked_fill_(constant_col, 1.0)).masked_fill_(constant_col, 0.0)
    constant = constant_col.all(-1).squeeze(-1)
    n_eig = min(max(n_components, n_eigenvalues), min(n, p))
    if p <= n:
        # covariance of the standardised columns, scaled after the product of the centred ones
        gram = (z.transpose(1, 2) @ z).mul_(inv_scale.transpose(1, 2)).mul_(inv_scale)  # [C, P, P]
        evals, axes = _leading_eigenpairs(gram, n_eig)  # axes [C, P, e]
        axes = axes[..., :n_components]
    else:
        z.mul_(inv_scale)
        gram = z @ z.transpose(1, 2)  # [C, N, N]
        evals, u = _leading_eigenpairs(gram, n_eig)
        axes = z.transpose(1, 2) @ u[..., :n_components]  # [C, P, k]
        axes = axes / axes.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        inv_scale = torch.ones_like(inv_scale)
    total = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1, keepdim=True)
    # sign: largest |loading| positive, the first of those equal up to rounding on ties (with two
    # live pixels, the loadings are always +-1/sqrt(2): rounding noise must not pick the sign)
    mag = axes.abs()
    near_max = mag >= mag.amax(1, keepdim=True) * (1.0 - 1e-9)
    big = near_max.to(torch.uint8).argmax(1, keepdim=True)
    signs = torch.sign(axes.gather(1, big))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    # scores of the standardised data: elementwise product and sum over pixels, so that identical
    # maps (all-zero ReLU maps) give exactly identical scores, i.e. ties
    weights = axes * inv_scale.transpose(1, 2)  # [C, P, k]
    scores = torch.stack([(z * weights[..., j].unsqueeze(1)).sum(-1) for j in range(n_components)], 1)
    degenerate = evals[:, :n_components] <= 1e-12 * total.clamp_min(0)
    scores = scores.masked_fill(degenerate.unsqueeze(-1) | constant.view(c, 1, 1), 0.0)
    want = max(n_components, n_eigenvalues)
    if want > n_eig:
        evals = torch.cat([evals, evals.new_zeros(c, want - n_eig)], 1)
    return scores, constant, evals.clamp_min(0.0), total.squeeze(-1)


def _leading_eigenpairs(mats: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest eigenvalues ``[B, k]`` and eigenvectors ``[B, d, k]`` (largest first) of a
    batch of symmetric matrices ``[B, d, d]``.

    On CPU, LAPACK's ``dsyevr`` computes just the ``k`` wanted pairs of each matrix; a loop over
    the batch avoids ``torch.linalg.eigh``'s batched CPU path, which nests OpenMP regions and can
    be orders of magnitude slower on a busy machine. Elsewhere, ``torch.linalg.eigh``.
    """
    b, d, _ = mats.shape
    if mats.device.type != "cpu":
        evals, evecs = torch.linalg.eigh(mats)
        return evals[..., -k:].flip(-1), evecs[..., -k:].flip(-1)
    from scipy.linalg import lapack

    arr = mats.detach().to(torch.float64).numpy()
    evals = torch.empty(b, k, dtype=torch.float64)
    evecs = torch.empty(b, d, k, dtype=torch.float64)
    for i in range(b):
        w, v, _, _, info = lapack.dsyevr(arr[i], compute_v=1, range="I", il=d - k + 1, iu=d)
        if info != 0:  # pragma: no cover - LAPACK failure
            raise RuntimeError(f"LAPACK dsyevr failed with info={info} on matrix {i}")
        evals[i] = torch.from_numpy(w[:k][::-1].copy())
        evecs[i] = torch.from_numpy(v[:, :k][:, ::-1].copy())
    return evals, evecs
