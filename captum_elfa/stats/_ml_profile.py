"""The profile likelihood of the ML factor model in ``x = log Psi`` and its optimisers.

Private to :mod:`captum_elfa.stats.factor_model` (which re-exports :class:`_Profile`): the
objective ``F(x) = log|Sigma| + tr(Sigma^-1 R)`` at the optimal loadings for ``Psi = exp(x)``,
its analytic gradient, the eigenpairs it needs (LAPACK, a Jacobi SVD near the floor, or a
warm-started subspace iteration for screening), and the L-BFGS-B, Newton and boundary steps
:func:`~captum_elfa.stats.factor_model.ml_factor_analysis` combines.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import scipy.linalg
import scipy.optimize

# below this log(Psi_i / R_ii) the eigenpairs come from a Jacobi SVD (relative accuracy)
_GRADED_BELOW = math.log(1e-6)
# the Jacobi SVD is O(C^3) with a large constant (20 s at C = 2,048): above this size the
# Householder eigensolver is used throughout (objective accurate to ~eps / min Psi near the floor)
_GRADED_MAX_C = 512


class _Profile:
    """The profile objective ``F(x) = log|Sigma| + tr(Sigma^-1 R)`` at the optimal ``W`` for
    ``Psi = exp(x)``, and its gradient in ``x``: ``g_i = (Sigma_ii - R_ii) / Psi_i``."""

    def __init__(self, r: np.ndarray, k: int, floor: float, iterative: bool) -> None:
        self.r = r
        self.k = k
        self.c = r.shape[0]
        self.d = np.diag(r).copy()
        self.lower = np.log(floor * self.d)
        self.upper = np.log(self.d)
        self.iterative = iterative
        self.m = min(self.c, k + max(10, k // 2))
        self._v: Optional[np.ndarray] = None
        self.n_eval = 0
        self._factor: Optional[np.ndarray] = None
        self._full: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None

    def _graded(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """Top eigenpairs of ``S = D R D`` and the sum of the other eigenvalues, with relative
        accuracy: the one-sided Jacobi SVD (LAPACK ``dgejsv``) of ``G = D R^1/2``, ``S = G G^T``.
        Householder ``eigh`` has absolute errors ``eps * ||S|| ~ eps / min Psi`` in every
        eigenvalue (1e-4 at Psi = 1e-12: the objective's ``tr S - sum_top l`` would lose 12
        digits), Jacobi's do not grow with the row scaling ``D``."""
        if self._factor is None:
            try:
                self._factor = np.linalg.cholesky(self.r)
            except np.linalg.LinAlgError:
                lam, vec = np.linalg.eigh(self.r)
                self._factor = vec * np.sqrt(np.maximum(lam, 0.0))[None, :]
        g = np.exp(-0.5 * x)[:, None] * self._factor
        sva, u, _, work, _, info = scipy.linalg.lapack.dgejsv(g, joba=4, jobu=0, jobv=3, jobr=1, jobt=0, jobp=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"dgejsv failed (info={info})")
        lam = (sva * (work[0] / work[1])) ** 2
        order = np.argsort(-lam, kind="stable")
        top = order[: self.k]
        # g_i = 1 - d_i/psi_i + sum_top u_ij^2 (l_j - 1)_+ cancels 1/psi; with the full basis
        # (sum_j u_ij^2 = 1, sum_j u_ij^2 l_j = d_i/psi_i) it is a sum of bounded terms
        other = np.ones(lam.size, dtype=bool)
        other[top[lam[top] > 1.0]] = False
        g = (u[:, other] ** 2) @ (1.0 - lam[other])
        return lam[top], u[:, top], float(lam[order[self.k :]].sum()), g

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        sc = np.exp(-0.5 * x)
        return self.r * sc[:, None] * sc[None, :]

    def _exact(self, s: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
        c = self.c
        vals, vecs = scipy.linalg.eigh(s, subset_by_index=[c - m, c - 1], driver="evr", check_finite=False)
        return vals[::-1], vecs[:, ::-1]

    def _subspace(self, s: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Block power iteration with Rayleigh-Ritz from the last eigenvectors; None if slow."""
        assert self._v is not None
        v, k = self._v, self.k
        for _ in range(25):
            z = s @ v
            t = v.T @ z
            w, u = np.linalg.eigh(0.5 * (t + t.T))
            w, u = w[::-1], u[:, ::-1]
            v, z = v @ u, z @ u
            res = np.linalg.norm(z[:, :k] - v[:, :k] * w[None, :k], axis=0)
            if res.max() <= 1e-11 * max(abs(w[0]), 1.0):
                self._v = v
                return w[:k], v[:, :k]
            v, _ = np.linalg.qr(z)
        return None

    def eig(self, x: np.ndarray, exact: bool = False) -> Tuple[np.ndarray, np.ndarray, float, Optional[np.ndarray]]:
        """Top-k eigenvalues and vectors of ``S`` at ``x`` the sum of its other eigenvalues and
        (from the Jacobi SVD only) the gradient."""
        self.n_eval += 1
        if self.c <= _GRADED_MAX_C and float((x - self.upper).min()) < _GRADED_BELOW:
            return self._graded(x)
        s = self._scaled(x)
        trs = float(np.trace(s))
        if self.iterative and not exact and self._v is not None:
            out = self._subspace(s)
            if out is not None:
                return out[0], out[1], trs - float(out[0].sum()), None
        if self.iterative:
            vals, vecs = self._exact(s, self.m)
            self._v = vecs
            vals, vecs = vals[: self.k], vecs[:, : self.k]
        else:
            vals, vecs = self._exact(s, self.k)
        return vals, vecs, trs - float(vals.sum()), None

    def value_grad(self, x: np.ndarray, exact: bool = False) -> Tuple[float, np.ndarray]:
        vals, vecs, rest, g = self.eig(x, exact)
        return self._fg(x, vals, vecs, rest, g)

    def _fg(
        self, x: np.ndarray, vals: np.ndarray, vecs: np.ndarray, rest: float, g: Optional[np.ndarray] = None
    ) -> Tuple[float, np.ndarray]:
        inv_psi = self.d * np.exp(-x)
        vals_c = np.maximum(vals, 1.0)
        # sum log psi + sum_top log max(l, 1) + sum_top l / max(l, 1) + sum_rest l
        f = x.sum() + np.log(vals_c).sum() + (vals / vals_c).sum() + rest
        if g is None:
            g = (vecs**2) @ np.maximum(vals - 1.0, 0.0) + 1.0 - inv_psi
        return float(f), g

    def loadings(self, x: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
        """Exact loadings, objective and gradient at ``x``."""
        vals, vecs, rest, g0 = self.eig(x, exact=True)
        f, g = self._fg(x, vals, vecs, rest, g0)
        w = vecs * np.sqrt(np.maximum(vals - 1.0, 0.0))[None, :] * np.exp(0.5 * x)[:, None]
        return w, f, g

    def _full_eig(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``S`` at ``x`` and all its eigenpairs (descending), cached for the last ``x``."""
        cached = self._full
        if cached is not None and np.array_equal(cached[0], x):
            return cached[1], cached[2], cached[3]
        s = self._scaled(x)
        lam, u = scipy.linalg.eigh(s, driver="evr", check_finite=False)
        lam, u = lam[::-1], u[:, ::-1]
        self._full = (x.copy(), s, lam, u)
        return s, lam, u

    def value_grad_full(self, x: np.ndarray) -> Tuple[float, np.ndarray]:
        """:meth:`value_grad` (exact) from the full eigendecomposition, which :meth:`hessian` at
        the same ``x`` then reuses; near the floor the Jacobi SVD path of :meth:`value_grad`."""
        if self.c <= _GRADED_MAX_C and float((x - self.upper).min()) < _GRADED_BELOW:
            return self.value_grad(x, exact=True)
        self.n_eval += 1
        s, lam, u = self._full_eig(x)
        k = self.k
        return self._fg(x, lam[:k], u[:, :k], float(np.trace(s)) - float(lam[:k].sum()))

    def hessian(self, x: np.ndarray) -> np.ndarray:
        """Analytic Hessian of ``F`` in ``x = log Psi`` (from first-order eigen-perturbation).

        With ``S = Psi^-1/2 R Psi^-1/2 = sum_m l_m u_m u_m^T`` and ``T`` the leading ``k``
        eigenvalues above 1, ``g_i = 1 - S_ii + sum_{m in T} (l_m - 1) u_im^2``; differentiating
        with ``dl_m/dx_j = -l_m u_jm^2`` and ``du_m/dx_j = -1/2 sum_{n != m} u_jn u_jm
        (l_m + l_n)/(l_m - l_n) u_n`` gives

        ``H = diag(S_ii) - sum_{m in T} l_m q_mm q_mm^T - sum_{m < n in T} (l_m + l_n) q_mn q_mn^T
        - sum_{m in T, n not in T} (l_m - 1)(l_m + l_n)/(l_m - l_n) q_mn q_mn^T``

        with ``q_mn = u_m * u_n`` (elementwise); the pairs inside ``T`` combine without a
        denominator. Checked against finite differences of the gradient in the tests.
        """
        s, lam, u = self._full_eig(x)
        t = int(np.sum(lam[: self.k] > 1.0))
        lt = lam[:t, None]
        gap = lt - lam[None, :]
        # a near-degenerate pair (l_k ~ l_k+1, where the profile is not smooth): bounded coefficient
        tiny = 1e-10 * max(float(lam[0]), 1.0)
        gap = np.where(np.abs(gap) < tiny, np.where(gap < 0, -tiny, tiny), gap)
        # coefficient of q_mn q_mn^T for m in T and every n (ordered pairs inside T share l_m + l_n)
        coef = np.where(
            np.arange(lam.size)[None, :] < t, 0.5 * (lt + lam[None, :]), (lt - 1.0) * (lt + lam[None, :]) / gap
        )
        q = (u[:, :t, None] * u[:, None, :]).reshape(self.c, -1)
        h = np.diag(np.diag(s).copy()) - (q * coef.reshape(1, -1)) @ q.T
        return 0.5 * (h + h.T)

    def active(self, x: np.ndarray, g: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Coordinates at the lower / upper bound."""
        return x <= self.lower + 1e-10, x >= self.upper - 1e-10

    def projected(self, x: np.ndarray, g: np.ndarray) -> float:
        """max ``|projected gradient|``: g for free coordinates; at a bound, only the part pointing
        into the box (a descent direction -g leaving the box is allowed: the KKT condition)."""
        lo, hi = self.active(x, g)
        pg = g.copy()
        pg[lo] = np.minimum(g[lo], 0.0)
        pg[hi] = np.maximum(g[hi], 0.0)
        return float(np.abs(pg).max()) if pg.size else 0.0

    def em(self, x: np.ndarray, f: float, steps: int) -> Tuple[np.ndarray, float, int]:
        """scikit-learn's EM update ``Psi = diag(R) - diag(W W^T)`` (never lowers the likelihood)."""
        done = 0
        for done in range(1, steps + 1):
            vals, vecs, _, _ = self.eig(x, exact=True)
            h2 = ((vecs**2) @ np.maximum(vals - 1.0, 0.0)) * np.exp(x)
            xn = np.clip(np.log(np.maximum(self.d - h2, 1e-300)), self.lower, self.upper)
            fn, _ = self.value_grad(xn, exact=True)
            if not fn < f:
                return x, f, done - 1
            x, f = xn, fn
        return x, f, done


def _lbfgsb(prof: _Profile, x0: np.ndarray, maxiter: int, gtol: float) -> Tuple[np.ndarray, float, int]:
    res = scipy.optimize.minimize(
        prof.value_grad,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(prof.lower, prof.upper)),
        # no stop on the change of F: only the projected gradient, a failed line search or the
        # iteration cap end a run, and only the KKT test below decides convergence
        options={"maxiter": maxiter, "ftol": 0.0, "gtol": gtol, "maxcor": 30, "maxls": 50},
    )
    return np.asarray(res.x, dtype=np.float64), float(res.fun), int(res.nit)


def _newton(prof: _Profile, x: np.ndarray, steps: int, gtol: float) -> Tuple[np.ndarray, int]:
    """Projected Newton steps (Bertsekas) with the analytic Hessian on the free coordinates:
    coordinates at a bound whose gradient points out of the box are held, the Hessian's
    eigenvalues are replaced by their absolute values (a descent direction also where ``F`` is
    not convex), a step moves no coordinate by more than 2 in ``log Psi``, and a backtracking
    line search on the exact objective accepts a step only if it lowers ``F`` or, at the
    resolution of ``F`` near the optimum, the projected gradient."""
    f, g = prof.value_grad_full(x)
    pg = prof.projected(x, g)
    done = 0
    for done in range(1, steps + 1):
        if pg <= gtol:
            return x, done - 1
        lo, hi = prof.active(x, g)
        free = np.flatnonzero(~((lo & (g > 0)) | (hi & (g < 0))))
        if free.size == 0:
            return x, done - 1
        if prof.c <= _GRADED_MAX_C and float((x - prof.upper).min()) < _GRADED_BELOW:
            # a uniqueness near the floor makes S ill-conditioned: the analytic Hessian from a
            # Householder eigendecomposition loses its digits there, so difference the accurate
            # (Jacobi SVD) gradient on the free coordinates instead
            h = 1e-6
            cols = []
            for i in free:
                xp = x.copy()
                xp[i] += h
                cols.append((prof.value_grad(xp, exact=True)[1][free] - g[free]) / h)
            hess = np.array(cols)
            hess = 0.5 * (hess + hess.T)
        else:
            hess = prof.hessian(x)[np.ix_(free, free)]
        step = np.zeros_like(x)
        try:  # positive definite (the usual case near a minimum): a Cholesky solve
            step[free] = -scipy.linalg.cho_solve(scipy.linalg.cho_factor(hess, check_finite=False), g[free])
        except np.linalg.LinAlgError:
            ev, evec = np.linalg.eigh(hess)
            ev = np.maximum(np.abs(ev), 1e-8 * max(np.abs(ev).max(), 1e-300))
            step[free] = -(evec @ ((evec.T @ g[free]) / ev))
        big = float(np.abs(step).max())
        if big > 2.0:
            step *= 2.0 / big
        t, accepted = 1.0, False
        for _ in range(30):
            xn = np.clip(x + t * step, prof.lower, prof.upper)
            fn, gn = prof.value_grad_full(xn)
            pgn = prof.projected(xn, gn)
            # near the optimum F is resolved to ~1e-10 relative (uniquenesses at the 1e-12 floor
            # make S ill-conditioned): a step that cuts the projected gradient and leaves F
            # unchanged at that resolution is progress
            tiny = 1e-10 * max(abs(f), 1.0)
            if fn < f - 1e-4 * t * abs(g @ (xn - x)) or (fn <= f + tiny and pgn < 0.5 * pg):
                x, f, g, pg, accepted = xn, fn, gn, pgn, True
                break
            t *= 0.5
        if not accepted:
            return x, done
    return x, done


def _fix_boundary(prof: _Profile, x: np.ndarray, gtol: float, max_iter: int) -> Tuple[np.ndarray, int]:
    """Snap uniquenesses within three decades of the floor onto it and re-optimise the others with
    them held there (an active-set step). Near the floor F is flat in ``log Psi`` and ``S`` is
    ill-conditioned, which stalls L-BFGS-B on the *free* coordinates; with the boundary ones
    fixed the remaining problem is regular."""
    near = x <= prof.lower + math.log(1e3)
    if not near.any() or near.all():
        return x, 0
    xs = x.copy()
    xs[near] = prof.lower[near]
    free = np.flatnonzero(~near)

    def fg(xf: np.ndarray) -> Tuple[float, np.ndarray]:
        xx = xs.copy()
        xx[free] = xf
        f, g = prof.value_grad(xx, exact=True)
        return f, g[free]

    res = scipy.optimize.minimize(
        fg,
        xs[free],
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(prof.lower[free], prof.upper[free])),
        options={"maxiter": max_iter, "ftol": 0.0, "gtol": gtol, "maxcor": 30, "maxls": 50},
    )
    xs[free] = res.x
    return xs, int(res.nit)
