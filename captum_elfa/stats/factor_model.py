"""Maximum-likelihood factor analysis from a correlation matrix, rotations and score weights.

The model is ``x = W f + e`` with ``f ~ N(0, I_k)`` and ``e ~ N(0, Psi)``. For fixed
uniquenesses ``Psi`` the likelihood is maximised by the leading eigenvectors of
``S = Psi^-1/2 R Psi^-1/2`` (the step scikit-learn's ``FactorAnalysis`` takes with an SVD of the
whole data matrix); :func:`ml_factor_analysis` maximises this profile likelihood over
``x = log Psi`` in the box ``[log(floor * R_ii), log R_ii]`` with L-BFGS-B and an analytic
gradient (Joreskog's method, as R's ``factanal``), which needs only the ``C x C`` correlation
matrix. The profile has local optima (spurious Heywood solutions, a uniqueness at the floor, when
``R`` is ill-conditioned), so it starts from several points and keeps the best, and it calls a fit
converged only when the Karush-Kuhn-Tucker conditions hold at the exact (LAPACK) eigenvectors:
the projected gradient in ``log Psi`` vanishes (see :func:`ml_factor_analysis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats._ml_profile import _fix_boundary, _lbfgsb, _newton, _Profile

__all__ = [
    "FactorModel",
    "MLResult",
    "ml_factor_analysis",
    "fit_factor_model",
    "score_weights",
    "loglikelihood",
    "PSI_FLOOR",
    "KKT_TOL",
]

#: lower bound of a uniqueness, relative to the variable's variance ``R_ii`` (scikit-learn's
#: ``FactorAnalysis`` clips its noise variances at 1e-12 too); near-duplicate channels need it
PSI_FLOOR = 1e-12
PSI_MIN = PSI_FLOOR  # the name earlier versions used
#: tolerance of the KKT test on the projected gradient in ``log Psi`` (see ``ml_factor_analysis``)
KKT_TOL = 1e-6
# above this many variables the screening runs use a warm-started subspace iteration for the
# leading eigenpairs and only the best starts are refined; at or below, every start is refined
# and the best one polished by Newton steps on a finite-difference Hessian
_LARGE_C = 768
_SCREEN_ITER = 20
_N_REFINE = 3
_REFINE_ALL_C = 32  # small problems: every start is refined (a screened start lost a better
# optimum by 5e-5 per sample on a 15-channel layer at k = 10, next to the Ledermann bound)
_NEWTON_MAX_C = 128
_NEWTON_STEPS = 60
_SCREEN_NEWTON = 6
# a uniqueness below 1e-6 R_ii with the KKT sign is tried on the floor at the end (accepted only
# if F does not rise): Newton in log Psi approaches a boundary optimum only slowly, F is flat there
_SNAP_WITHIN = math.log(1e6)


@dataclass
class MLResult:
    """The maximum-likelihood factor model of a correlation matrix, before any rotation.

    Attributes:
        loadings (Tensor): unrotated loadings ``W`` [C, k] (float64): the leading eigenvectors
                    of ``Psi^-1/2 R Psi^-1/2`` scaled, in eigenvalue order, each column's sum
                    made positive. Columns of zeros when fewer than k eigenvalues exceed 1.
        uniquenesses (Tensor): ``Psi`` [C] (float64).
        loglike (float): mean log-likelihood per sample of the standardised data (scikit-learn's
                    ``FactorAnalysis.score``), from :func:`loglikelihood`.
        converged (bool): whether the KKT conditions hold at the solution to ``tol``.
        n_iter (int): optimiser iterations over all starts (L-BFGS-B, EM and Newton steps).
        projected_gradient (float): max ``|projected gradient|`` of the objective in ``log Psi`` at
                    the solution, from the exact eigenvectors.
        n_starts (int): number of starting points tried.
        start_loglikes (list of float): the log-likelihood reached from each start, in the order
                    classical, 1 - SMC, SMC, flat 0.5, then the random ones (``-inf`` for a start
                    that was only screened).
        heywood (Tensor): bool [C], uniquenesses at the lower bound (or within 1e3 of it, where
                    the likelihood is flat to ~1e-9) with the KKT sign there: a boundary optimum,
                    the likelihood would rise if they could go lower.
        best_start (int): index of the start the solution came from.
    """

    loadings: Tensor
    uniquenesses: Tensor
    loglike: float
    converged: bool
    n_iter: int
    projected_gradient: float
    n_starts: int
    start_loglikes: List[float]
    heywood: Tensor
    best_start: int = 0


def _starts(r: np.ndarray, k: int, n_random: int, rng: np.random.Generator) -> List[np.ndarray]:
    """Uniquenesses to start from: classical ``(1 - k/2C) / diag(R^-1)``, ``1 - SMC = 1/diag(R^-1)``,
    ``SMC = 1 - 1/diag(R^-1)``, flat 0.5, and seeded uniform random ones; relative to ``R_ii``."""
    c = r.shape[0]
    d = np.diag(r)
    lam, vec = np.linalg.eigh(r)
    lam = np.maximum(lam, 1e-12 * max(lam[-1], 1e-300))
    rinv_d = ((vec**2) / lam[None, :]).sum(1) * d  # diag(R^-1) of the standardised variables
    one_minus_smc = 1.0 / rinv_d
    out = [(1.0 - 0.5 * k / c) * one_minus_smc, one_minus_smc, 1.0 - one_minus_smc, np.full(c, 0.5)]
    out += [rng.uniform(0.05, 0.95, size=c) for _ in range(n_random)]
    return [np.log(np.clip(p, 5e-3, 0.995) * d) for p in out]


def ml_factor_analysis(
    r: Tensor,
    n_factors: int,
    *,
    max_iter: int = 5000,
    random_state: int = 0,
    n_random_starts: int = 2,
    tol: float = KKT_TOL,
    psi_floor: float = PSI_FLOOR,
    init: Optional[Tensor] = None,
    n_refine: Optional[int] = None,
) -> MLResult:
    r"""Maximum-likelihood factor analysis of a correlation matrix, from several starts.

    Minimises the profile discrepancy ``F(x) = log|Sigma| + tr(Sigma^-1 R)`` over ``x = log Psi``
    in ``[log(psi_floor * R_ii), log R_ii]`` (``W`` optimal for each ``Psi``) with L-BFGS-B, from
    the classical start ``(1 - k/2C)/diag(R^-1)``, ``1/diag(R^-1)`` (one minus the squared
    multiple correlations), the squared multiple correlations, a flat 0.5 and
    ``n_random_starts`` seeded random points. Every start runs 20 screening iterations; the
    three best (every start up to 32 variables) are refined to the KKT tolerance, the best is kept
    and polished (Newton steps on a finite-difference Hessian for C <= 64, EM and restarted
    L-BFGS-B otherwise); if it stalls next to the floor, the uniquenesses within three decades of
    it are held on it and the others re-optimised (an active-set step). Above 768 variables the
    leading eigenpairs come from a warm-started subspace iteration during the runs.

    Convergence is the KKT test at the exact (LAPACK) eigenvectors, never the change of ``F``:
    with ``g_i = dF/dx_i = (Sigma_ii - R_ii)/Psi_i`` (a dimensionless relative misfit of the
    diagonal), ``|g_i| <= tol`` for free coordinates, and ``g_i >= -tol`` (``<= tol``) at the
    lower (upper) bound. Near the optimum ``F - F* ~ g^T H^-1 g / 2``, so ``tol = 1e-6``
    puts the log-likelihood within about ``C * 1e-12 / lambda_min(H)`` per sample of the optimum,
    far below ``1e-8 |loglike|`` unless ``H`` is singular to 1e-4.

    Args:
        r (Tensor): correlation matrix [C, C] of the standardised variables (float64).
        n_factors (int): number of factors ``k`` (1 <= k < C).
        max_iter (int): L-BFGS-B iteration cap for each run.
        random_state (int): seed of the random starts.
        n_random_starts (int): number of random starts.
        tol (float): KKT tolerance on the projected gradient in ``log Psi``.
        psi_floor (float): lower bound of a uniqueness relative to ``R_ii`` (1e-12, as
                    scikit-learn): low enough for near-duplicate channels.
        init (Tensor, optional): uniquenesses [C] to try first (a warm start, e.g. the solution
                    of the same model on all the data when fitting half of it).
        n_refine (int, optional): how many of the screened starts are refined (default: 3, or
                    every start up to 32 variables).

    Returns:
        MLResult: unrotated loadings, uniquenesses, mean log-likelihood per sample, the KKT
        verdict, the projected gradient, the log-likelihood from every start and the Heywood mask.

    Examples::

        >>> res = ml_factor_analysis(r, 5)
        >>> res.converged, res.projected_gradient <= 1e-6
        (True, True)
    """
    c = r.shape[0] if r.dim() == 2 else -1
    if r.dim() != 2 or r.shape[0] != r.shape[1]:
        raise CaptumElfaError(f"r must be a square [C, C] correlation matrix, got shape {tuple(r.shape)}")
    if not 1 <= n_factors < c:
        raise CaptumElfaError(f"n_factors={n_factors} is outside [1, {c - 1}] for {c} variables")
    rn = r.detach().to(torch.float64).cpu().numpy()
    if not np.isfinite(rn).all() or not (np.diag(rn) > 0).all():
        raise CaptumElfaError("r must be finite with a positive diagonal (a correlation matrix)")
    if not 0 < psi_floor < 1:
        raise CaptumElfaError(f"psi_floor={psi_floor} is outside (0, 1)")
    rn = 0.5 * (rn + rn.T)
    k = n_factors
    large = c > _LARGE_C
    prof = _Profile(rn, k, psi_floor, iterative=large)
    starts = _starts(rn, k, n_random_starts, np.random.default_rng(random_state))
    if init is not None:
        if init.shape != (c,):
            raise CaptumElfaError(f"init must hold {c} uniquenesses, got shape {tuple(init.shape)}")
        d0 = np.diag(rn)
        starts.insert(0, np.log(np.clip(init.detach().to(torch.float64).cpu().numpy(), psi_floor * d0, d0)))
    n_iter = 0
    gtol = tol * 1e-3 if not large else tol * 1e-2
    # every start runs a short screening pass; the three best are refined to the KKT tolerance
    # (all of them up to 32 variables), which costs a third of refining every start
    screened = []
    for x0 in starts:
        if c <= _NEWTON_MAX_C:
            x, it = _newton(prof, x0, _SCREEN_NEWTON, gtol)
            f = prof.value_grad(x, exact=True)[0]
        else:
            x, f, it = _lbfgsb(prof, x0, _SCREEN_ITER, gtol)
        n_iter += it
        screened.append((f, x))
    if n_refine is None:
        n_refine = len(starts) if c <= _REFINE_ALL_C else _N_REFINE
    order = np.argsort([s[0] for s in screened], kind="stable")[:n_refine]
    to_refine = [(int(i), screened[i][1]) for i in order]
    finals: List[Tuple[float, int, np.ndarray]] = []
    f_start = [math.inf] * len(starts)
    for i, x0 in to_refine:
        if c <= _NEWTON_MAX_C:
            # Newton with the analytic Hessian: ~10 steps where L-BFGS-B takes ~100 evaluations
            x, it = _newton(prof, x0, _NEWTON_STEPS, gtol)
            n_iter += it
            f, g = prof.value_grad(x, exact=True)
            if prof.projected(x, g) > gtol:
                x, f, it = _lbfgsb(prof, x, max_iter, gtol)
                n_iter += it
        else:
            x, f, it = _lbfgsb(prof, x0, max_iter, gtol)
            n_iter += it
        f_start[i] = f
        finals.append((f, i, x))
    # the exact objective decides between the candidates
    best = min(((prof.value_grad(x, exact=True)[0], i, x) for _, i, x in finals), key=lambda t: (t[0], t[1]))
    f, best_i, x = best
    _, g = prof.value_grad(x, exact=True)
    pg = prof.projected(x, g)
    prof.iterative = False
    # polish: small problems to 1e-3 * tol (cheap, and it makes the answer independent of the
    # start and of rounding); large ones only when the KKT test is not met yet (each exact
    # eigendecomposition of a 2,048-channel S costs ~0.5 s)
    polish_to = 1e-3 * tol if not large else tol
    for _ in range(2):
        if pg <= polish_to:
            break
        if c <= _NEWTON_MAX_C:
            x, it = _newton(prof, x, 6, 1e-3 * tol)
            n_iter += it
        else:
            x, f, it = prof.em(x, f, 20)
            n_iter += it
            x, f, it = _lbfgsb(prof, x, max_iter, 1e-3 * tol)
            n_iter += it
        f, g = prof.value_grad(x, exact=True)
        pg_new = prof.projected(x, g)
        if not pg_new < pg:
            pg = pg_new
            break
        pg = pg_new
    for _ in range(3):  # stalled next to the boundary: hold the near-floor uniquenesses on it
        if pg <= tol:
            break
        f0 = prof.value_grad(x, exact=True)[0]
        xs, it = _fix_boundary(prof, x, 1e-3 * tol, max_iter)
        n_iter += it
        if c <= _NEWTON_MAX_C:
            xs, it = _newton(prof, xs, 10, 1e-3 * tol)
            n_iter += it
        fs, gs = prof.value_grad(xs, exact=True)
        pgs = prof.projected(xs, gs)
        if not (fs <= f0 + 1e-10 * max(abs(f0), 1.0) and pgs < pg):
            break
        x, pg = xs, pgs
    # a uniqueness that ends within six decades of the floor with the KKT sign goes onto the
    # floor when that costs nothing (F is flat there to ~1e-10): boundary values, and the metrics
    # that depend on log Psi (R^2), then do not depend on where the optimiser happened to stop
    f_now, g_now = prof.value_grad(x, exact=True)
    near = (x <= prof.lower + _SNAP_WITHIN) & (x > prof.lower) & (g_now >= -tol)
    if near.any():
        xs = x.copy()
        xs[near] = prof.lower[near]
        fs, gs = prof.value_grad(xs, exact=True)
        if fs <= f_now + 1e-10 * max(abs(f_now), 1.0) and prof.projected(xs, gs) <= max(pg, tol):
            x = xs
    w, f, g = prof.loadings(x)
    pg = prof.projected(x, g)
    # at the floor, or within three decades of it where F is flat to ~1e-9 (the optimum of a
    # Heywood variable is psi -> 0; L-BFGS-B may stop just inside the box), with the KKT sign
    heywood = (x <= prof.lower + math.log(1e3)) & (g >= -tol)
    w = w * np.where(w.sum(0) < 0, -1.0, 1.0)[None, :]
    psi = np.exp(x)
    loadings = torch.from_numpy(np.ascontiguousarray(w))
    psi_t = torch.from_numpy(psi)
    ll = loglikelihood(torch.from_numpy(rn), loadings, psi_t)
    ll_start = [-0.5 * (c * math.log(2 * math.pi) + fs) if math.isfinite(fs) else -math.inf for fs in f_start]
    return MLResult(
        loadings=loadings,
        uniquenesses=psi_t,
        loglike=ll,
        converged=bool(pg <= tol),
        n_iter=int(n_iter),
        projected_gradient=pg,
        n_starts=len(starts),
        start_loglikes=ll_start,
        heywood=torch.from_numpy(heywood),
        best_start=int(best_i),
    )


@dataclass
class FactorModel:
    """A fitted factor model on standardised variables.

    Attributes:
        loadings (Tensor): ``W`` [C, k] (rotated, sign convention applied, ordered by variance).
        uniquenesses (Tensor): ``Psi`` [C].
        loglike (float): mean log-likelihood per sample (scikit-learn's ``score``).
        n_iter (int): optimiser iterations.
        converged (bool): whether the KKT conditions hold at the ML solution (see
                    :func:`ml_factor_analysis`).
        projected_gradient (float): max ``|projected gradient|`` in ``log Psi`` at the solution.
        n_starts (int): starting points tried.
        heywood (Tensor): bool [C], uniquenesses at the lower bound at a KKT point.
        phi (Tensor, optional): factor correlations [k, k] (the identity for orthogonal rotations).
    """

    loadings: Tensor
    uniquenesses: Tensor
    loglike: float
    n_iter: int
    converged: bool
    projected_gradient: float = float("nan")
    n_starts: int = 1
    heywood: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    phi: Optional[Tensor] = None


def fit_factor_model(
    r: Tensor,
    n_factors: int,
    rotation: Optional[str] = "varimax",
    tol: float = KKT_TOL,
    max_iter: int = 5000,
    random_state: Optional[int] = 0,
    rotation_kwargs: Optional[dict] = None,
) -> FactorModel:
    """Fit the ML factor model to a correlation matrix ``r`` [C, C] (float64) and rotate it.

    Args:
        r (Tensor): correlation matrix of the standardised variables.
        n_factors (int): number of factors ``k`` (1 <= k < C).
        rotation (str or None): one of :data:`captum_elfa.stats.rotations.ROTATIONS`.
        tol (float): KKT tolerance on the projected gradient (see :func:`ml_factor_analysis`).
        max_iter (int): maximum L-BFGS-B iterations per run.
        random_state (int, optional): seed of the random starts (None: 0, so fits stay reproducible).
        rotation_kwargs (dict, optional): options of the rotation
                    (:func:`captum_elfa.stats.rotations.check_rotation_kwargs`).

    Returns:
        FactorModel: loadings rotated (the pattern for oblique rotations, with ``phi``), factors
        ordered by the variance they explain, each factor's loadings summing to a positive number.

    Examples::

        >>> fm = fit_factor_model(r, 3, rotation="varimax")
        >>> fm.loadings.shape, fm.converged
        (torch.Size([C, 3]), True)
    """
    from captum_elfa.stats.rotations import check_rotation_kwargs, orient, rotate

    kwargs = check_rotation_kwargs(rotation, rotation_kwargs or {})
    res = ml_factor_analysis(
        r, n_factors, max_iter=max_iter, random_state=0 if random_state is None else random_state, tol=tol
    )
    rot = orient(rotate(res.loadings, rotation if n_factors > 1 else None, **kwargs))
    return FactorModel(
        rot.loadings,
        res.uniquenesses,
        res.loglike,
        res.n_iter,
        res.converged,
        res.projected_gradient,
        res.n_starts,
        res.heywood,
        rot.phi,
    )


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


def score_weights(loadings: Tensor, psi: Tensor) -> Tensor:
    """Regression factor-score weights ``B = (I + W^T Psi^-1 W)^-1 W^T Psi^-1`` [k, C].

    ``f = B x`` for a standardised sample ``x``: scikit-learn's ``FactorAnalysis.transform``.
    """
    wpsi = loadings.T / psi[None, :]
    k = loadings.shape[1]
    cov_z = torch.linalg.inv(torch.eye(k, dtype=loadings.dtype, device=loadings.device) + wpsi @ loadings)
    return cov_z @ wpsi
