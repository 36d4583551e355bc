"""PCACE's preprocessing of one channel at a time in compiled code (numba, ``nogil``): the images
taken in the canonical order, every pixel position standardised over them, the Gram matrix
(BLAS ``dsyrk``), its two largest eigenvalues and leading eigenvector
(:func:`captum_elfa.stats._eigen_kernel._top_pair`), the sign convention and the projection.

The same rules as :func:`captum_elfa.stats._pca.standardized_spectrum` with one component and two
eigenvalues (its results up to rounding; ``tests/test_kernels.py``), but a channel's maps (300
images of 7 x 7 pixels: 118 KB in float64) stay in the core's cache through every pass, where
the batched torch version streams every intermediate of a block of channels through memory.
Identical maps still give identical scores (each row's projection is one loop in a fixed order).
"""

from __future__ import annotations

import numpy as np

from captum_elfa.stats._eigen_kernel import _top_pair, _top_workspace
from captum_elfa.stats._numba import external, jit, run_blocks
from captum_elfa.stats._pca import DEGENERATE, SIGN_TIE

_dsyrk = external("cython_blas", "dsyrk", 10)

_EPS = float(np.finfo(np.float64).eps)
# numba compiles these module globals into the kernel as constants (the rules of _pca)
_SIGN_TIE, _DEGENERATE = SIGN_TIE, DEGENERATE


@jit
def _channel_rows(
    acts: np.ndarray,
    index: np.ndarray,
    scores: np.ndarray,
    evals: np.ndarray,
    total: np.ndarray,
    zero_fraction: np.ndarray,
    status: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """Channels ``lo:hi`` of ``acts`` ``[C, N0, P]``, images ``index`` ``[N]`` (N >= P).

    Writes ``scores`` ``[C, N]`` (PC1 of the standardised maps), ``evals`` ``[C, 2]``, ``total``
    ``[C]`` (trace), ``zero_fraction`` ``[C]`` and ``status`` ``[C]``: 0 ok, 1 constant channel,
    2 non-finite activations, 3 + LAPACK's info on a LAPACK failure.
    """
    n = index.shape[0]
    p = acts.shape[2]
    z = np.empty((n, p))  # C order [N, P]: column-major P x N, the matrix dsyrk reads
    g = np.empty((p, p))  # column-major P x P Gram matrix, upper triangle
    mean = np.empty(p)
    inv_scale = np.empty(p)
    weights = np.empty(p)
    flags = np.array([ord("U"), ord("N")], dtype=np.uint8)
    ints = np.array([p, n], dtype=np.int32)
    alpha = np.ones(1)
    beta = np.zeros(1)
    ws = _top_workspace(p)
    for c in range(lo, hi):
        status[c] = 0
        # the maps in the canonical order, the column sums and the all-zero maps
        for j in range(p):
            mean[j] = 0.0
        zeros = 0
        for i in range(n):
            row = acts[c, index[i]]
            absolute = 0.0
            for j in range(p):
                v = np.float64(row[j])
                z[i, j] = v
                mean[j] += v
                absolute += abs(v)
            if absolute == 0.0:
                zeros += 1
        zero_fraction[c] = zeros / n
        finite = True
        for j in range(p):
            if not np.isfinite(mean[j]):
                finite = False
            mean[j] /= n
        if not finite:  # a NaN or Inf makes its column sum non-finite
            status[c] = 2
            continue
        for i in range(n):
            for j in range(p):
                z[i, j] -= mean[j]
        _dsyrk(
            flags[0:1].ctypes,
            flags[1:2].ctypes,
            ints[0:1].ctypes,
            ints[1:2].ctypes,
            alpha.ctypes,
            z.ctypes,
            ints[0:1].ctypes,
            beta.ctypes,
            g.ctypes,
            ints[0:1].ctypes,
        )
        # scikit-learn's rule: a column whose variance is zero up to rounding is centred, not scaled
        constant = True
        for j in range(p):
            var = g[j, j] / n
            if var <= n * _EPS * var + (n * mean[j] * _EPS) ** 2:
                inv_scale[j] = 0.0
            else:
                inv_scale[j] = 1.0 / np.sqrt(var)
                constant = False
        trace = 0.0
        for b in range(p):  # element (a, b), a <= b, is g[b, a]
            for a in range(b + 1):
                g[b, a] = g[b, a] * inv_scale[a] * inv_scale[b]
            trace += g[b, b]
        total[c] = trace
        top, second, info = _top_pair(g, ws)
        if info != 0:
            status[c] = 3 + info
            continue
        evals[c, 0] = max(top, 0.0)
        evals[c, 1] = max(second, 0.0)
        if constant:
            status[c] = 1
        if constant or top <= _DEGENERATE * max(trace, 0.0):
            for i in range(n):
                scores[c, i] = 0.0
            continue
        # sign: the largest |loading| positive, the first of those equal to 1e-9
        vec = ws[2][4]
        largest = 0.0
        for j in range(p):
            largest = max(largest, abs(vec[j]))
        sign = 1.0
        for j in range(p):
            if abs(vec[j]) >= largest * (1.0 - _SIGN_TIE):
                sign = -1.0 if vec[j] < 0 else 1.0
                break
        for j in range(p):
            weights[j] = vec[j] * sign * inv_scale[j]
        for i in range(n):
            acc = 0.0
            for j in range(p):
                acc += z[i, j] * weights[j]
            scores[c, i] = acc


def channel_components(acts: np.ndarray, index: np.ndarray, threads: int = 1) -> tuple[np.ndarray, ...]:
    """PC1 scores ``[C, N]``, the two largest eigenvalues ``[C, 2]``, traces ``[C]``, zero-map
    fractions ``[C]`` and statuses ``[C]`` (see :func:`_channel_rows`) of ``acts`` ``[C, N0, P]``
    (float32 or float64) on the images ``index`` ``[N]``, ``N >= P``."""
    c = acts.shape[0]
    n = index.shape[0]
    scores = np.empty((c, n))
    evals = np.zeros((c, 2))
    total = np.zeros(c)
    zero_fraction = np.zeros(c)
    status = np.zeros(c, dtype=np.int64)
    run_blocks(
        lambda lo, hi: _channel_rows(acts, index, scores, evals, total, zero_fraction, status, lo, hi),
        c,
        threads,
        min_rows=4,
        per_thread=4,
    )
    return scores, evals, total, zero_fraction, status
