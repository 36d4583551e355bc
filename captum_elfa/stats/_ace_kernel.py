"""Compiled ACE for one predictor per row (PCACE's default, ``n_components=1``), on the CPU.

The same algorithm as :func:`captum_elfa.stats.ace.ace` with the smoother of
:mod:`captum_elfa.stats._smoother`, step for step (cumulative-sum window sums, the variance floor,
the leverage tolerance, tied ``x`` averaged, the canonical orders computed by the caller), written
as loops over one row at a time and compiled with numba (``nogil``): the torch version runs
thousands of small tensor operations per call, this one keeps a row's 300-sample arrays in the
first-level cache. Rows are independent problems; :func:`ace_one_predictor` splits them over
threads. Results equal the torch version's up to rounding (sums in another order); see
``tests/test_ace_kernel.py``.

Used by :func:`captum_elfa.stats.ace.ace` when numba is installed, the tensors are on the CPU,
there is one predictor and no bass enhancement (see :mod:`captum_elfa.stats._numba` for the
switch).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from captum_elfa.stats._numba import jit as _jit
from captum_elfa.stats._numba import run_blocks
from captum_elfa.stats._smoother import BASS_SPAN, LEVERAGE_TOL, MID_SPAN, TWEETER_SPAN, VARIANCE_EPS

# numba compiles these module globals into the kernels as constants
_TWEETER, _MID, _BASS = TWEETER_SPAN, MID_SPAN, BASS_SPAN
_SPANS = (_TWEETER, _MID, _BASS)


@_jit
def _window_shape(n: int, span: float) -> tuple[int, int]:
    half = max(int(0.5 * span * n + 0.5), 2)
    return half, min(2 * half + 1, n)


@_jit
def _axis(x: np.ndarray, span: float, out: np.ndarray) -> bool:
    """Span statistics of the sorted abscissa ``x`` (``SortedAbscissa._span``) into ``out``
    ``[5, n]``: window sum of centred x, slope factor, 1 / (1 - leverage), validity, and the
    centred x (row 4). Returns whether every leverage is valid."""
    n = x.shape[0]
    half, size = _window_shape(n, span)
    offset = 0.0
    for i in range(n):
        offset += x[i]
    offset /= n
    # variance floor (_variance_threshold)
    lower = max(n // 4, 1)
    upper = 3 * lower
    scale = 0.0
    for s in range(max(n - upper, lower - 1) + 1):
        up = min(upper + s, n) - 1
        lo = max(lower - s, 1) - 1
        spread = x[up] - x[lo]
        if spread > 0:
            scale = spread
            break
    threshold = (VARIANCE_EPS * scale) ** 2
    sx = np.empty(n + 1)
    sxx = np.empty(n + 1)
    sx[0] = 0.0
    sxx[0] = 0.0
    for i in range(n):
        xc = x[i] - offset
        out[4, i] = xc
        sx[i + 1] = sx[i] + xc
        sxx[i + 1] = sxx[i] + xc * xc
    all_valid = True
    for i in range(n):
        w = min(max(i - half, 0), n - size)
        sx_w = sx[w + size] - sx[w]
        sxx_w = sxx[w + size] - sxx[w]
        mean = sx_w / size
        var = max(sxx_w - sx_w * mean, 0.0)
        if x[w + size - 1] == x[w]:
            var = 0.0
        inv_var = 1.0 / var if var > threshold else 0.0
        dx = out[4, i] - mean
        slope_dx = dx * inv_var
        denom = 1.0 - (1.0 / size + dx * slope_dx)
        out[0, i] = sx_w
        out[1, i] = slope_dx
        if denom > LEVERAGE_TOL:
            out[2, i] = 1.0 / denom
            out[3, i] = 1.0
        else:
            out[2, i] = 1.0
            out[3, i] = 0.0
            all_valid = False
    return all_valid


@_jit
def _mean(values: np.ndarray) -> float:
    """The mean, summed in four interleaved partial sums (independent additions pipeline)."""
    n = values.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    stop = n - n % 4
    for i in range(0, stop, 4):
        s0 += values[i]
        s1 += values[i + 1]
        s2 += values[i + 2]
        s3 += values[i + 3]
    for i in range(stop, n):
        s0 += values[i]
    return ((s0 + s1) + (s2 + s3)) / n


@_jit
def _tie_average(x: np.ndarray, values: np.ndarray) -> None:
    """Give every run of tied ``x`` the mean of its ``values`` (in place; sums in index order)."""
    n = x.shape[0]
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and x[stop] == x[start]:
            stop += 1
        if stop - start > 1:
            total = 0.0
            for j in range(start, stop):
                total += values[j]
            mean = total / (stop - start)
            for j in range(start, stop):
                values[j] = mean
        start = stop


@_jit
def _smooth(
    x: np.ndarray,
    stats: np.ndarray,
    valid: np.ndarray,
    ties: bool,
    first: int,
    last: int,
    y: np.ndarray,
    out: np.ndarray,
    res: Optional[np.ndarray],
    work: np.ndarray,
) -> None:
    """``fixed_span_smooth(x, y, span)`` for the spans ``first..last - 1`` of ``_SPANS`` into
    ``out[span]`` (and the residuals into ``res[span]`` if given), sharing the cumulative sums of
    ``y``; ``stats`` and ``valid`` from :func:`_axis_stats`, ``ties`` whether ``x`` has ties,
    ``work`` ``[2, n + 1]`` scratch."""
    n = x.shape[0]
    y_mean = _mean(y)
    sy = work[0]
    sxy = work[1]
    sy[0] = 0.0
    sxy[0] = 0.0
    for i in range(n):
        yc = y[i] - y_mean
        sy[i + 1] = sy[i] + yc
        sxy[i + 1] = sxy[i] + stats[0, 4, i] * yc
    for k in range(first, last):
        half, size = _window_shape(n, _SPANS[k])
        sx_w = stats[k, 0]
        slope = stats[k, 1]
        smooth = out[k]
        # the window of sample i starts at clamp(i - half, 0, n - size)
        for i in range(n):
            w = i - half
            if w < 0:
                w = 0
            elif w > n - size:
                w = n - size
            my = (sy[w + size] - sy[w]) / size
            smooth[i] = ((sxy[w + size] - sxy[w]) - sx_w[i] * my) * slope[i] + my
        if res is not None:
            inv_denom = stats[k, 2]
            carried = 0.0
            if valid[k]:
                for i in range(n):
                    res[k, i] = abs((y[i] - y_mean) - smooth[i]) * inv_denom[i]
            else:
                ok = stats[k, 3]
                for i in range(n):
                    if ok[i] > 0.0:
                        carried = abs((y[i] - y_mean) - smooth[i]) * inv_denom[i]
                    res[k, i] = carried
        for i in range(n):
            smooth[i] += y_mean
        if ties:
            _tie_average(x, smooth)


@_jit
def _workspace(n: int) -> tuple:
    """Scratch arrays of :func:`_super_smoother` for ``n`` samples."""
    return np.empty((2, n + 1)), np.empty((3, n)), np.empty((3, n)), np.empty((3, n))


@_jit
def _super_smoother(
    x: np.ndarray, stats: np.ndarray, valid: np.ndarray, ties: bool, y: np.ndarray, out: np.ndarray, buf: tuple
) -> None:
    """``super_smoother(x, y)`` (no bass enhancement) into ``out[0]``; ``stats``, ``valid`` and
    ``ties`` from :func:`_axis_stats`; ``buf`` from :func:`_workspace` (whole contiguous arrays:
    a slice of columns would make numba's loops strided)."""
    n = x.shape[0]
    work, f, r, s = buf  # cumulative sums; the primary smooths, their residuals; smooths
    _smooth(x, stats, valid, ties, 0, 3, y, f, r, work)
    # smoothed residuals, then the best span at each point (the first of the smallest)
    _smooth(x, stats, valid, ties, 1, 2, r[0], s, None, work)
    best_res = s[0]
    best_span = s[2]
    for i in range(n):
        best_res[i] = s[1, i]
        best_span[i] = _TWEETER
    for k in (1, 2):
        _smooth(x, stats, valid, ties, 1, 2, r[k], s, None, work)
        for i in range(n):
            if s[1, i] < best_res[i]:
                best_res[i] = s[1, i]
                best_span[i] = _SPANS[k]
    # the best spans smoothed with the midrange span, the primaries interpolated, a tweeter smooth
    _smooth(x, stats, valid, ties, 1, 2, best_span, s, None, work)
    interp = r[0]
    for i in range(n):
        span = s[1, i]
        t0 = (min(max(span, _TWEETER), _MID) - _TWEETER) / (_MID - _TWEETER)
        t1 = (min(max(span, _MID), _BASS) - _MID) / (_BASS - _MID)
        interp[i] = (f[1, i] - f[0, i]) * t0 + f[0, i] + (f[2, i] - f[1, i]) * t1
    _smooth(x, stats, valid, ties, 0, 1, interp, out, None, work)
    if not x[n - 1] > x[0]:
        mean = _mean(y)
        for i in range(n):
            out[0, i] = mean


@_jit
def _axis_stats(x: np.ndarray, stats: np.ndarray, valid: np.ndarray) -> bool:
    """:func:`_axis` for the three spans into ``stats`` ``[3, 5, n]`` and ``valid`` ``[3]``;
    returns whether ``x`` has ties."""
    for k in range(3):
        valid[k] = _axis(x, _SPANS[k], stats[k])
    for i in range(1, x.shape[0]):
        if x[i] == x[i - 1]:
            return True
    return False


@_jit
def _ace_rows(
    phi0: np.ndarray,
    theta0: np.ndarray,
    x_sorted: np.ndarray,
    x_order: np.ndarray,
    y_sorted: np.ndarray,
    y_order: np.ndarray,
    delrsq: float,
    maxit: int,
    nterm: int,
    phi: np.ndarray,
    theta: np.ndarray,
    rsq: np.ndarray,
    outer: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """ACE of rows ``lo:hi`` (see :func:`ace_one_predictor`); a 2-D input with one row is shared."""
    n = phi0.shape[1]
    x_stats = np.empty((3, 5, n))
    x_valid = np.empty(3, dtype=np.bool_)
    y_stats = np.empty((3, 5, n))
    y_valid = np.empty(3, dtype=np.bool_)
    buf = _workspace(n)
    target = np.empty(n)
    smooth = np.empty((1, n))
    new = smooth[0]
    history = np.empty(nterm)
    shared_y_axis = y_sorted.shape[0] == 1
    y_ties = False
    if shared_y_axis:
        y_ties = _axis_stats(y_sorted[0], y_stats, y_valid)
    for row in range(lo, hi):
        xs = x_sorted[row]
        xo = x_order[row]
        ys = y_sorted[0] if shared_y_axis else y_sorted[row]
        yo = y_order[0] if y_order.shape[0] == 1 else y_order[row]
        th0 = theta0[0] if theta0.shape[0] == 1 else theta0[row]
        ph = phi[row]
        th = theta[row]
        for i in range(n):
            ph[i] = phi0[row, i]
            th[i] = th0[i]
        x_ties = _axis_stats(xs, x_stats, x_valid)
        if not shared_y_axis:
            y_ties = _axis_stats(ys, y_stats, y_valid)
        rs = 0.0
        for j in range(nterm):
            history[j] = 100.0
        iterations = 0
        for it in range(maxit):
            # phi <- centred smooth of theta against x, kept if it raises R^2 (one predictor: one pass)
            for i in range(n):
                target[i] = th[xo[i]]
            _super_smoother(xs, x_stats, x_valid, x_ties, target, smooth, buf)
            mean = _mean(new)
            err = 0.0
            for i in range(n):
                new[i] -= mean
                d = target[i] - new[i]
                err += d * d
            new_rsq = 1.0 - err / n
            if new_rsq > rs:
                rs = new_rsq
                for i in range(n):
                    ph[xo[i]] = new[i]
            # theta <- standardised smooth of phi against y (kept where that is constant)
            for i in range(n):
                target[i] = ph[yo[i]]
            _super_smoother(ys, y_stats, y_valid, y_ties, target, smooth, buf)
            mean = _mean(new)
            ss = 0.0
            for i in range(n):
                new[i] -= mean
                ss += new[i] * new[i]
            std = math.sqrt(ss / n)
            if std > 0:
                for i in range(n):
                    th[yo[i]] = new[i] / std
            err = 0.0
            for i in range(n):
                d = th[i] - ph[i]
                err += d * d
            rs = 1.0 - err / n
            history[it % nterm] = rs
            iterations = it + 1
            h_max = history[0]
            h_min = history[0]
            for j in range(1, nterm):
                h_max = max(h_max, history[j])
                h_min = min(h_min, history[j])
            if h_max - h_min <= delrsq:
                break
        rsq[row] = rs
        outer[row] = iterations


def ace_one_predictor(
    phi0: np.ndarray,
    theta0: np.ndarray,
    x_sorted: np.ndarray,
    x_order: np.ndarray,
    y_sorted: np.ndarray,
    y_order: np.ndarray,
    delrsq: float,
    maxit: int,
    nterm: int,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ACE of ``R`` independent problems with one predictor each, compiled.

    Args:
        phi0 (ndarray): ``[R, n]`` initial phi (centred x scaled by the least-squares fit), sample order.
        theta0 (ndarray): ``[R, n]`` or ``[1, n]`` initial theta (standardised y), sample order.
        x_sorted (ndarray): ``[R, n]`` x in its canonical order; ``x_order`` ``[R, n]`` int64 the
                    sample index of each sorted position.
        y_sorted (ndarray): ``[R, n]`` or ``[1, n]`` y in its canonical order; ``y_order``
                    ``[R, n]`` or ``[1, n]`` int64.
        delrsq, maxit, nterm: as :func:`captum_elfa.stats.ace.ace`.
        threads (int): threads the rows are split over (eight contiguous blocks per thread, which
                    balances rows that take more iterations than others).

    Returns:
        (phi, theta, rsq, outer_iterations): ``[R, n]``, ``[R, n]``, ``[R]``, ``[R]`` int64.
    """
    rows, n = phi0.shape
    phi = np.empty((rows, n))
    theta = np.empty((rows, n))
    rsq = np.empty(rows)
    outer = np.empty(rows, dtype=np.int64)
    args = (phi0, theta0, x_sorted, x_order, y_sorted, y_order, float(delrsq), int(maxit), int(nterm))
    run_blocks(lambda lo, hi: _ace_rows(*args, phi, theta, rsq, outer, lo, hi), rows, threads, per_thread=8)
    return phi, theta, rsq, outer
