"""Batched super smoother (Friedman's ``supsmu``), in float64: the smoothing half of
:mod:`captum_elfa.stats.ace` (see its docstring for the algorithm and the deliberate differences
from the ``ace`` package)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

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
