"""Choosing the number of factors from the eigenvalues of a correlation matrix."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, is_int

__all__ = [
    "kaiser",
    "variance_fraction",
    "se_scree",
    "parallel_eigenvalues",
    "parallel_analysis",
    "choose_n_factors",
    "NFactorsSpec",
    "degrees_of_freedom",
    "ledermann_bound",
    "check_identified",
    "factor_count_criteria",
    "VARIANCE_FRACTIONS",
    "N_FACTORS_METHODS",
    "check_n_factors_spec",
]

NFactorsSpec = Union[int, float, str]
#: the factor-count criteria ``n_factors`` may name (besides an int or a variance fraction)
N_FACTORS_METHODS = ("kaiser", "scree", "parallel")
#: variance fractions reported by :func:`factor_count_criteria` (key ``"variance_<percent>"``)
VARIANCE_FRACTIONS = (0.5, 0.8, 0.9)


def check_n_factors_spec(n_factors: Any) -> NFactorsSpec:
    """Check the form of ``n_factors`` before any data are seen; return it unchanged.

    Valid: an int >= 1 (checked against the live channels by :func:`choose_n_factors`), one of
    :data:`N_FACTORS_METHODS` or a float in (0, 1), a variance fraction.

    Raises:
        CaptumElfaError: naming the value and what is valid.

    Examples::

        >>> check_n_factors_spec("parallel")
        'parallel'
    """
    valid = f"use an int, one of {list(N_FACTORS_METHODS)} or a float in (0, 1)"
    if is_int(n_factors):
        if int(n_factors) < 1:
            raise CaptumElfaError(
                f"n_factors={n_factors} is not valid; it must be at least 1 (and below the number of live channels)"
            )
        return int(n_factors)
    if isinstance(n_factors, str):
        if n_factors not in N_FACTORS_METHODS:
            raise CaptumElfaError(f"n_factors={n_factors!r} is not valid; {valid}")
        return n_factors
    if not isinstance(n_factors, float):
        raise CaptumElfaError(f"n_factors={n_factors!r} is not valid; {valid}")
    if not (0.0 < n_factors < 1.0):
        raise CaptumElfaError(f"n_factors={n_factors!r}: a float must be a variance fraction in (0, 1); {valid}")
    return float(n_factors)


def degrees_of_freedom(c: int, k: int) -> int:
    r"""Degrees of freedom of a ``k``-factor model of ``c`` variables: ``((c - k)^2 - (c + k)) / 2``.

    The number of distinct correlations ``c (c - 1) / 2`` minus the free parameters of the model
    (``c k + c`` loadings and uniquenesses, less ``k (k - 1) / 2`` for the rotation and ``c`` for
    the unit diagonal). Always an integer (``(c - k)^2`` and ``c + k`` have the same parity);
    negative means the model is not identified.

    Examples::

        >>> degrees_of_freedom(16, 10), degrees_of_freedom(16, 11)
        (2, -6)
    """
    c, k = int(c), int(k)
    return ((c - k) ** 2 - (c + k)) // 2


def ledermann_bound(c: int) -> int:
    r"""Largest number of factors ``k`` with ``degrees_of_freedom(c, k) >= 0`` (Ledermann 1937).

    ``k <= (2c + 1 - sqrt(8c + 1)) / 2``, computed exactly in integers. 0 for ``c <= 2``.

    Examples::

        >>> ledermann_bound(16), ledermann_bound(256)
        (10, 233)
    """
    c = int(c)
    if c < 1:
        raise CaptumElfaError(f"c={c} variables: the Ledermann bound needs at least one variable")
    # (c-k)^2 - (c+k) >= 0 for k <= k*, a root of k^2 - (2c+1) k + c^2 - c = 0
    k = max((2 * c + 1 - math.isqrt(8 * c + 1)) // 2, 0)
    while k + 1 < c and degrees_of_freedom(c, k + 1) >= 0:
        k += 1
    while k > 0 and degrees_of_freedom(c, k) < 0:
        k -= 1
    return k


def check_identified(n_factors: int, c: int) -> None:
    """Raise :class:`CaptumElfaError` if ``n_factors`` exceeds :func:`ledermann_bound` of ``c`` channels."""
    bound = ledermann_bound(c)
    if n_factors > bound:
        raise CaptumElfaError(
            f"n_factors={n_factors} is above the identification (Ledermann) bound {bound} for {c} channels: "
            f"the model would have {degrees_of_freedom(c, n_factors)} (negative) degrees of freedom "
            f"((C - k)^2 - (C + k)) / 2; use at most {bound} factors"
        )


def kaiser(eigenvalues: Tensor) -> int:
    """Number of eigenvalues of the correlation matrix that are at least 1."""
    return int((eigenvalues >= 1).sum())


def variance_fraction(eigenvalues: Tensor, m: float) -> int:
    """Smallest ``k`` whose ``k`` leading eigenvalues hold at least the fraction ``m`` of the total.

    Note: ``elfa.criteria.variance_nfactors_criterion`` returns one less than this whenever the
    answer is above 1 (its loop counts the index, not the number, of eigenvalues).
    """
    ev = torch.sort(eigenvalues, descending=True).values
    frac = torch.cumsum(ev, 0) / ev.sum()
    # small tolerance so that a fraction reached exactly in theory is not missed by rounding
    k = int((frac < m - 1e-12).sum()) + 1
    return min(k, ev.numel())


def se_scree(eigenvalues: Tensor, n_samples: Optional[int] = None) -> int:
    """Standard-error scree of Zoski & Jurs (1996).

    Walking ``i`` from the first eigenvalue, the remaining eigenvalues ``ev[i:]`` are regressed on
    their index; the walk stops at the first ``i`` whose standard error of estimate falls below
    ``1/C`` and returns ``i`` (at least 1). Like the ELFA reference, the eigenvalues are those of
    the unbiased covariance of the standardised data, ``R * n / (n - 1)``.
    """
    ev = torch.sort(eigenvalues.to(torch.float64), descending=True).values
    if n_samples is not None and n_samples > 1:
        ev = ev * (n_samples / (n_samples - 1))
    c = ev.numel()
    crit = 1.0 / c
    e = ev.cpu().numpy()
    i = 0
    while i < c - 2:
        y = e[i:]
        x = np.arange(i, c, dtype=np.float64)
        m = y.size
        xc = x - x.mean()
        yc = y - y.mean()
        sxx = float(xc @ xc)
        sxy = float(xc @ yc)
        syy = float(yc @ yc)
        sse = max(syy - sxy * sxy / sxx, 0.0)
        se = math.sqrt(sse / (m - 2))
        if se < crit:
            break
        i += 1
    return max(i, 1)


def default_parallel_draws(n_channels: int) -> int:
    """Random draws of parallel analysis: 100 up to 128 channels, then ``100 * 128 / C`` (at
    least 20), so that the cost (one ``C x C`` eigendecomposition per draw) stays near that of
    128 channels: 20 draws at 640 channels and more. The 95% quantile per rank is then a coarser
    order statistic, but at these sizes the random eigenvalues of one rank vary across draws by
    far less than the gaps between ranks (``tests/test_screening.py`` checks that the retained
    count agrees with 100 draws)."""
    return 100 if n_channels <= 128 else max(20, int(100 * 128 / n_channels))


def parallel_eigenvalues(
    n_channels: int, n_samples: int, n_iter: Optional[int] = None, random_state: Optional[int] = 0
) -> Tensor:
    """Eigenvalues of correlation matrices of uncorrelated normal data, ``[n_iter, C]`` descending.

    Each draw is the correlation matrix of ``n_samples`` independent standard normal samples of
    ``n_channels`` variables, sampled exactly (Bartlett decomposition of the Wishart matrix), so
    the cost does not grow with ``n_samples``. ``n_iter`` defaults to
    :func:`default_parallel_draws`.
    """
    if n_iter is None:
        n_iter = default_parallel_draws(n_channels)
    rng = np.random.default_rng(random_state)
    c = n_channels
    dof = max(n_samples - 1, c)
    out = np.empty((n_iter, c))
    il = np.tril_indices(c, -1)
    for t in range(n_iter):
        a = np.zeros((c, c))
        a[np.diag_indices(c)] = np.sqrt(rng.chisquare(dof - np.arange(c)))
        a[il] = rng.standard_normal(il[0].size)
        w = a @ a.T
        d = 1.0 / np.sqrt(np.diag(w))
        corr = w * d[:, None] * d[None, :]
        out[t] = np.linalg.eigvalsh(corr)[::-1]
    return torch.from_numpy(out)


def parallel_analysis(
    eigenvalues: Tensor,
    n_samples: int,
    n_iter: Optional[int] = None,
    quantile: float = 0.95,
    random_state: Optional[int] = 0,
) -> tuple[int, Tensor]:
    """Horn's parallel analysis.

    Keeps the leading eigenvalues that exceed the ``quantile`` of the eigenvalues of the same
    rank from random uncorrelated data of the same size.

    Returns:
        (number of factors, the random eigenvalues' quantile per rank [C])
    """
    ev = torch.sort(eigenvalues.to(torch.float64).cpu(), descending=True).values
    rand = parallel_eigenvalues(ev.numel(), n_samples, n_iter, random_state)
    thresh = torch.quantile(rand, quantile, dim=0)
    above = (ev > thresh).to(torch.int64)
    k = int(torch.cumprod(above, 0).sum())
    return k, thresh


def factor_count_criteria(
    eigenvalues: Tensor,
    n_samples: int,
    random_state: Optional[int] = 0,
    *,
    n_images: Optional[int] = None,
    parallel_threshold: Optional[Tensor] = None,
) -> Dict[str, Any]:
    r"""Every factor-count criterion side by side, so that their disagreement shows.

    On network layers they often disagree widely (random-init ResNet-18 layer3, 256 channels:
    Kaiser 25, the standard-error scree 146): the scree's stopping rule (standard error of the
    remaining eigenvalues' linear fit below ``1/C``) is met only where the tail of the spectrum
    is nearly straight, and it matches the reference ``elfa.criteria.standard_error_scree_criterion``
    on the same data (``tests/test_screening.py``), so that is what the method gives.

    Args:
        eigenvalues (Tensor): eigenvalues of the live channels' correlation matrix [C].
        n_samples (int): number of samples (images x pixels), for the parallel analysis and the
                    scree's ``n / (n - 1)`` factor.
        random_state (int, optional): seed of the parallel analysis.
        n_images (int, optional): number of images; when given, ``"parallel_images"`` is the
                    parallel analysis with the images as the sample size (the pixels of an image
                    are dependent, so this is the conservative count).
        parallel_threshold (Tensor, optional): the parallel analysis' threshold curve for
                    ``n_samples`` if already computed (by :func:`choose_n_factors`), to reuse it.

    Returns:
        dict: ``"kaiser"``, ``"parallel"``, ``"scree"``, ``"variance_50"``, ``"variance_80"``,
        ``"variance_90"`` (the counts of :func:`kaiser`, :func:`parallel_analysis`,
        :func:`se_scree`, :func:`variance_fraction` at 0.5 / 0.8 / 0.9; unclipped),
        ``"parallel_images"`` (int, only with ``n_images``), ``"ledermann_bound"`` (int) and
        ``"agree"`` (bool: Kaiser, parallel and scree give the same count). JSON-serialisable.

    Examples::

        >>> factor_count_criteria(torch.linalg.eigvalsh(r).flip(0), n)
        {'kaiser': 25, 'parallel': 24, 'scree': 146, 'variance_50': 9, ..., 'ledermann_bound': 233, 'agree': False}
    """
    ev = torch.sort(eigenvalues.to(torch.float64).cpu(), descending=True).values
    c = ev.numel()
    if c < 1:
        raise CaptumElfaError("factor_count_criteria needs at least one eigenvalue")
    out: Dict[str, Any] = {"kaiser": kaiser(ev)}
    if parallel_threshold is None:
        out["parallel"], _ = parallel_analysis(ev, n_samples, random_state=random_state)
    else:
        thr = parallel_threshold.to(torch.float64).cpu()
        out["parallel"] = int(torch.cumprod((ev > thr).to(torch.int64), 0).sum())
    out["scree"] = se_scree(ev, n_samples)
    for m in VARIANCE_FRACTIONS:
        out[f"variance_{round(100 * m)}"] = variance_fraction(ev, m)
    if n_images is not None:
        out["parallel_images"], _ = parallel_analysis(ev, int(n_images), random_state=random_state)
    out["ledermann_bound"] = ledermann_bound(c)
    out["agree"] = len({out["kaiser"], out["parallel"], out["scree"]}) == 1
    return out


def choose_n_factors(
    spec: NFactorsSpec,
    eigenvalues: Tensor,
    n_samples: int,
    random_state: Optional[int] = 0,
) -> tuple[int, dict]:
    """Resolve ``n_factors`` (int, "kaiser", "scree", "parallel" or a float in (0, 1)).

    Returns the count, clipped to ``[1, C-1]`` for the criteria (an explicit int is validated
    instead), and a dict of extras (the parallel-analysis threshold curve).
    """
    c = eigenvalues.numel()
    extras: dict = {}
    if isinstance(spec, bool):
        raise CaptumElfaError(f"n_factors={spec!r} is not valid; {_valid(c)}")
    if is_int(spec):
        k = int(spec)
        if not 1 <= k <= c - 1:
            raise CaptumElfaError(f"n_factors={k} is outside [1, {c - 1}] ({c} live channels); {_valid(c)}")
        return k, extras
    if isinstance(spec, float):
        if not (0.0 < spec < 1.0) or math.isnan(spec):
            raise CaptumElfaError(f"n_factors={spec!r}: a float must be a variance fraction in (0, 1); {_valid(c)}")
        k = variance_fraction(eigenvalues, spec)
    elif isinstance(spec, str):
        if spec == "kaiser":
            k = kaiser(eigenvalues)
        elif spec == "scree":
            k = se_scree(eigenvalues, n_samples)
        elif spec == "parallel":
            k, thresh = parallel_analysis(eigenvalues, n_samples, random_state=random_state)
            extras["parallel_threshold"] = thresh
        else:
            raise CaptumElfaError(f"n_factors={spec!r} is not valid; {_valid(c)}")
    else:
        raise CaptumElfaError(f"n_factors={spec!r} ({type(spec).__name__}) is not valid; {_valid(c)}")
    return min(max(k, 1), c - 1), extras


def _valid(c: int) -> str:
    return f"use an int in [1, {c - 1}], one of {list(N_FACTORS_METHODS)}, or a float in (0, 1) for a variance fraction"
