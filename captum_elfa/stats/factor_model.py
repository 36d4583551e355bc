"""Maximum-likelihood factor analysis from a correlation matrix, rotations and score weights.

The model is ``x = W f + e`` with ``f ~ N(0, I_k)`` and ``e ~ N(0, Psi)``. For fixed
uniquenesses ``Psi`` the likelihood is maximised by the leading eigenvectors of
``Psi^-1/2 R Psi^-1/2`` (the step scikit-learn's ``FactorAnalysis`` takes with an SVD of the
whole data matrix); here the profile likelihood is maximised over ``log Psi`` with L-BFGS-B and
an analytic gradient (Joreskog's method, as R's ``factanal``), which needs only the ``C x C``
correlation matrix and reaches the optimum scikit-learn converges to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError

__all__ = [
    "FactorModel",
    "fit_factor_model",
    "ortho_rotation",
    "score_weights",
    "loglikelihood",
    "ROTATIONS",
]

ROTATIONS = ("varimax", "quartimax", None)
PSI_MIN = 1e-8


@dataclass
class FactorModel:
    """A fitted factor model on standardised variables.

    Attributes:
        loadings (Tensor): ``W`` [C, k] (rotated, sign convention applied, ordered by variance).
        uniquenesses (Tensor): ``Psi`` [C].
        loglike (float): mean log-likelihood per sample (scikit-learn's ``score``).
        n_iter (int): optimiser iterations.
        converged (bool): whether the optimiser reported convergence.
    """

    loadings: Tensor
    uniquenesses: Tensor
    loglike: float
    n_iter: int
    converged: bool


def _top_eigh(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    c = s.shape[0]
    vals, vecs = scipy.linalg.eigh(s, subset_by_index=[c - k, c - 1], driver="evr", check_finite=False)
    return vals[::-1], vecs[:, ::-1]


def _objective(x: np.ndarray, r: np.ndarray, k: int, logdet_r: float) -> tuple[float, np.ndarray]:
    """Negative profile log-likelihood (per sample, without constants) and its gradient in log psi."""
    psi = np.exp(x)
    sc = 1.0 / np.sqrt(psi)
    s = r * sc[:, None] * sc[None, :]
    vals, vecs = _top_eigh(s, k)
    vals_c = np.maximum(vals, 1.0)
    # F = log|Sigma| + tr(Sigma^-1 R) with the optimal W for this psi
    #   = sum log psi + sum_{top} log max(l,1) + sum_{top} l/max(l,1) + (tr S - sum_top l)
    f = x.sum() + np.log(vals_c).sum() + (vals / vals_c).sum() + (np.trace(s) - vals.sum())
    load = vecs * np.sqrt(np.maximum(vals - 1.0, 0.0))[None, :] * np.sqrt(psi)[:, None]
    g_psi = ((load**2).sum(1) + psi - np.diag(r)) / psi**2
    return float(f), g_psi * psi


def _loadings_at(r: np.ndarray, psi: np.ndarray, k: int) -> np.ndarray:
    sc = 1.0 / np.sqrt(psi)
    vals, vecs = _top_eigh(r * sc[:, None] * sc[None, :], k)
    return vecs * np.sqrt(np.maximum(vals - 1.0, 0.0))[None, :] * np.sqrt(psi)[:, None]


def loglikelihood(r: Tensor, loadings: Tensor, psi: Tensor) -> float:
    """Mean Gaussian log-likelihood per sample of data with correlation ``r`` under ``W W^T + Psi``.

    Equals scikit-learn's ``FactorAnalysis.score`` on the standardised data.
    """
    c = r.shape[0]
    v = loadings @ loadings.T + torch.diag(psi)
    sign, logdet = torch.linalg.slogdet(v)
    if float(sign) <= 0:
        return -math.inf
    tr = torch.trace(torch.linalg.solve(v, r))
    return float(-0.5 * (c * math.log(2 * math.pi) + logdet + tr))


def ortho_rotation(loadings: Tensor, method: str = "varimax", tol: float = 1e-6, max_iter: int = 100) -> Tensor:
    """Orthogonal rotation of loadings ``[C, k]`` (Kaiser's varimax or quartimax).

    The same iteration as scikit-learn's ``FactorAnalysis(rotation=...)`` (raw, unnormalised).
    Computed with numpy: the matrices are small, and numpy's BLAS threads are the ones ``fit``
    limits (torch's intra-op threads made 100 tiny SVDs take seconds on a busy 2-core machine).
    """
    if method not in ("varimax", "quartimax"):
        raise CaptumElfaError(f"rotation={method!r} is not valid; choose one of {list(ROTATIONS)}")
    comp = loadings.detach().to(torch.float64).cpu().numpy()
    nrow, ncol = comp.shape
    rot = np.eye(ncol)
    var = 0.0
    for _ in range(max_iter):
        cr = comp @ rot
        tmp = cr * ((cr**2).sum(0) / nrow) if method == "varimax" else 0.0
        u, s, vh = np.linalg.svd(comp.T @ (cr**3 - tmp))
        rot = u @ vh
        var_new = float(s.sum())
        if var != 0 and var_new < var * (1 + tol):
            break
        var = var_new
    return torch.from_numpy(comp @ rot).to(loadings.device)


def _orient(loadings: Tensor) -> Tensor:
    """Sort factors by variance (descending) and make each factor's loadings sum positive."""
    var = (loadings**2).sum(0)
    order = torch.argsort(var, descending=True)
    w = loadings[:, order]
    sign = torch.where(w.sum(0) < 0, -1.0, 1.0).to(w.dtype)
    return w * sign


def _em_polish(
    r: np.ndarray, psi: np.ndarray, k: int, f: float, logdet_r: float, max_steps: int = 50, tol: float = 1e-13
) -> tuple[np.ndarray, int]:
    """A few of scikit-learn's EM updates ``psi = diag(R) - diag(W W^T)``; each one can only raise
    the likelihood, which settles solutions on the boundary (Heywood cases) where L-BFGS-B stops."""
    steps = 0
    for steps in range(1, max_steps + 1):
        w = _loadings_at(r, psi, k)
        new = np.clip(np.diag(r) - (w**2).sum(1), PSI_MIN, 1.0)
        f_new, _ = _objective(np.log(new), r, k, logdet_r)
        if not f_new < f:
            return psi, steps - 1
        improved = f - f_new
        psi, f = new, f_new
        if improved <= tol * max(1.0, abs(f)):
            break
    return psi, steps


def fit_factor_model(
    r: Tensor,
    n_factors: int,
    rotation: Optional[str] = "varimax",
    tol: float = 1e-12,
    max_iter: int = 5000,
) -> FactorModel:
    """Fit the ML factor model to a correlation matrix ``r`` [C, C] (float64).

    Args:
        r (Tensor): correlation matrix of the standardised variables.
        n_factors (int): number of factors ``k`` (1 <= k < C).
        rotation (str or None): "varimax", "quartimax" or None.
        tol (float): relative tolerance of the objective for L-BFGS-B.
        max_iter (int): maximum L-BFGS-B iterations.

    Returns:
        FactorModel: loadings rotated, each factor's loadings summing to a positive number,
        factors ordered by the variance they explain.
    """
    if rotation not in ROTATIONS:
        raise CaptumElfaError(f"rotation={rotation!r} is not valid; choose one of {list(ROTATIONS)}")
    c = r.shape[0]
    if not 1 <= n_factors < c:
        raise CaptumElfaError(f"n_factors={n_factors} is outside [1, {c - 1}] for {c} variables")
    rn = r.detach().to(torch.float64).cpu().numpy()
    sign, logdet_r = np.linalg.slogdet(rn)
    # starting point of R's factanal: (1 - k/(2C)) / diag(R^-1)
    try:
        start = (1.0 - 0.5 * n_factors / c) / np.diag(np.linalg.inv(rn))
    except np.linalg.LinAlgError:
        start = np.full(c, 0.5)
    start = np.clip(start, 1e-3, 1.0)
    bounds = [(math.log(PSI_MIN), 0.0)] * c
    res = scipy.optimize.minimize(
        _objective,
        np.log(start),
        args=(rn, n_factors, float(logdet_r)),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-9, "maxcor": 20},
    )
    psi = np.exp(res.x)
    f_opt, _ = _objective(res.x, rn, n_factors, float(logdet_r))
    # L-BFGS-B stops either on its tolerances or when the line search can make no more progress
    # at float64 precision (both are the optimum); only hitting the iteration limit is not
    converged = int(res.nit) < max_iter
    psi, n_em = _em_polish(rn, psi, n_factors, f_opt, float(logdet_r))
    w = torch.from_numpy(_loadings_at(rn, psi, n_factors))
    psi_t = torch.from_numpy(psi)
    if rotation is not None and n_factors > 1:
        w = ortho_rotation(w, rotation)
    w = _orient(w)
    ll = loglikelihood(r.detach().to(torch.float64).cpu(), w, psi_t)
    return FactorModel(w, psi_t, ll, int(res.nit) + n_em, converged)


def score_weights(loadings: Tensor, psi: Tensor) -> Tensor:
    """Regression factor-score weights ``B = (I + W^T Psi^-1 W)^-1 W^T Psi^-1`` [k, C].

    ``f = B x`` for a standardised sample ``x``: scikit-learn's ``FactorAnalysis.transform``.
    """
    wpsi = loadings.T / psi[None, :]
    k = loadings.shape[1]
    cov_z = torch.linalg.inv(torch.eye(k, dtype=loadings.dtype, device=loadings.device) + wpsi @ loadings)
    return cov_z @ wpsi
