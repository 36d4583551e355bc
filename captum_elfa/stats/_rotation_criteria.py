"""The rotation criteria and the minimisers of :mod:`captum_elfa.stats.rotations` (private).

Each criterion maps loadings ``L`` to ``(Q, dQ/dL)`` (GPArotation's ``vgQ.*``); the minimisers
are the gradient-projection algorithm (GPArotation's ``GPForth``/``GPFoblq``), Kaiser's SVD
iteration for the orthomax family, Riemannian Newton steps and promax. The conventions and the
references are in the docstring of :mod:`captum_elfa.stats.rotations`, which re-exports these.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

# line-search halvings per iteration (GPArotation: 0:10)
_HALVINGS = 11

# --------------------------------------------------------------------------------------------
# criteria: (Q, dQ/dL)

_Criterion = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _varimax(L: np.ndarray) -> tuple[float, np.ndarray]:
    L2 = L * L
    Q = L2 - L2.mean(0, keepdims=True)
    return -float((Q * Q).sum()) / 4.0, -L * Q


def _quartimax(L: np.ndarray) -> tuple[float, np.ndarray]:
    L2 = L * L
    return -float((L2 * L2).sum()) / 4.0, -L * L2


def _oblimin(gamma: float) -> _Criterion:
    def crit(L: np.ndarray) -> tuple[float, np.ndarray]:
        L2 = L * L
        X = L2.sum(1, keepdims=True) - L2  # L^2 (11^T - I)
        if gamma != 0:
            X = X - (gamma / L.shape[0]) * X.sum(0, keepdims=True)
        return float((L2 * X).sum()) / 4.0, L * X

    return crit


def _geomin(delta: float) -> _Criterion:
    def crit(L: np.ndarray) -> tuple[float, np.ndarray]:
        k = L.shape[1]
        L2 = L * L + delta
        pro = np.exp(np.log(L2).sum(1) / k)
        return float(pro.sum()), (2.0 / k) * (L / L2) * pro[:, None]

    return crit


# --------------------------------------------------------------------------------------------
# gradient projection


def _noise(f: float, n: int) -> float:
    """Rounding level of a criterion value summed over ``n`` terms."""
    return 64.0 * np.finfo(np.float64).eps * max(abs(f), 1e-300) * math.sqrt(max(n, 1))


def _proj_orth(T: np.ndarray, G: np.ndarray) -> np.ndarray:
    M = T.T @ G
    return G - T @ ((M + M.T) / 2.0)


def _proj_oblq(T: np.ndarray, G: np.ndarray) -> np.ndarray:
    return G - T * (T * G).sum(0, keepdims=True)


def _retract_orth(X: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(X)
    return U @ Vt


def _retract_oblq(X: np.ndarray) -> np.ndarray:
    return X / np.sqrt((X * X).sum(0, keepdims=True))


class _Problem:
    """Q(T) and its Euclidean gradient in T, for orthogonal (``L = A T``) or oblique (``L = A T^-T``)."""

    def __init__(self, A: np.ndarray, crit: _Criterion, oblique: bool) -> None:
        self.A, self.crit, self.oblique = A, crit, oblique
        self.proj = _proj_oblq if oblique else _proj_orth
        self.retract = _retract_oblq if oblique else _retract_orth

    def value_grad(self, T: np.ndarray) -> tuple[float, np.ndarray]:
        if self.oblique:
            Ti = np.linalg.inv(T)
            L = self.A @ Ti.T
            f, Gq = self.crit(L)
            return f, -(L.T @ Gq @ Ti).T
        f, Gq = self.crit(self.A @ T)
        return f, self.A.T @ Gq

    def tangent_basis(self, T: np.ndarray) -> np.ndarray:
        """Orthonormal basis [d, k, k] of the tangent space at T."""
        k = T.shape[0]
        out = []
        if self.oblique:
            for j in range(k):
                q, _ = np.linalg.qr(np.column_stack([T[:, j], np.eye(k)]))
                for i in range(1, k):
                    e = np.zeros((k, k))
                    e[:, j] = q[:, i]
                    out.append(e)
        else:
            for i in range(k):
                for j in range(i + 1, k):
                    w = np.zeros((k, k))
                    w[i, j], w[j, i] = 1 / math.sqrt(2), -1 / math.sqrt(2)
                    out.append(T @ w)
        return np.array(out)


def _gpa(
    prob: _Problem, T: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, bool, int, float, float, np.ndarray]:
    """GPArotation's GPForth / GPFoblq iteration from T until the projected gradient is below tol."""
    f, G = prob.value_grad(T)
    Gp = prob.proj(T, G)
    s = float(np.linalg.norm(Gp))
    al = 1.0
    it = 0
    noise = _noise(f, prob.A.size)
    while s >= tol:
        if it >= max_iter:
            return T, False, it, f, s, Gp
        it += 1
        al *= 2.0
        for _ in range(_HALVINGS):
            Tt = prob.retract(T - al * Gp)
            ft, Gt = prob.value_grad(Tt)
            need = 0.5 * s * s * al
            if f - ft > need:
                break
            if need < noise and ft <= f + noise and float(np.linalg.norm(prob.proj(Tt, Gt))) < s:
                break
            al /= 2.0
        T, f, G = Tt, ft, Gt
        Gp = prob.proj(T, G)
        s = float(np.linalg.norm(Gp))
    return T, True, it, f, s, Gp


def _newton(
    prob: _Problem, T: np.ndarray, f: float, s: float, tol: float, max_steps: int = 30
) -> tuple[np.ndarray, float, float, int]:
    """Riemannian Newton steps near a minimum (Hessian by central differences of the projected
    gradient); a step is kept only if it shrinks the projected gradient without raising Q."""
    noise = _noise(f, prob.A.size)
    steps = 0
    for _ in range(max_steps):
        if s < tol:
            break
        B = prob.tangent_basis(T)
        d = B.shape[0]
        Bf = B.reshape(d, -1)
        _, G = prob.value_grad(T)
        g = Bf @ prob.proj(T, G).ravel()
        h = 1e-5
        H = np.empty((d, d))
        for j in range(d):
            # P_T of the Riemannian gradient P_Y G(Y) (differentiating P_Y gives the curvature term)
            yp, ym = prob.retract(T + h * B[j]), prob.retract(T - h * B[j])
            gp = prob.proj(T, prob.proj(yp, prob.value_grad(yp)[1]))
            gm = prob.proj(T, prob.proj(ym, prob.value_grad(ym)[1]))
            H[:, j] = Bf @ ((gp - gm).ravel() / (2 * h))
        H = (H + H.T) / 2
        lam, V = np.linalg.eigh(H)
        if lam[0] <= 0:
            break
        xi = -(V @ ((V.T @ g) / lam))
        Tt = prob.retract(T + np.tensordot(xi, B, axes=1))
        ft, Gt = prob.value_grad(Tt)
        st = float(np.linalg.norm(prob.proj(Tt, Gt)))
        if not (st < s and ft <= f + noise):
            break
        T, f, s = Tt, ft, st
        steps += 1
    return T, f, s, steps


def _svd_iteration(prob: _Problem, T: np.ndarray, gamma: float, tol: float, max_iter: int) -> tuple[np.ndarray, int]:
    """Kaiser's (Horst's) SVD iteration for the orthomax family, ``T = U V^T`` of the SVD of
    ``A^T (L^3 - gamma L diag(mean L^2))`` (varimax: gamma = 1, quartimax: 0; scikit-learn's
    update), run until the GPA projected gradient falls below ``tol``: each step costs one k x k
    SVD and it converges in far fewer steps than gradient projection on wide layers."""
    A = prob.A
    it = 0
    for it in range(1, max_iter + 1):
        L = A @ T
        u, _, vt = np.linalg.svd(A.T @ (L**3 - gamma * L * (L**2).mean(0, keepdims=True)))
        T = u @ vt
        if it % 5 == 0:
            _, G = prob.value_grad(T)
            if float(np.linalg.norm(prob.proj(T, G))) < tol:
                break
    return T, it


#: largest (tangent dimension x C x k) for which rotations are polished by Newton steps with a
#: finite-difference Hessian
_NEWTON_MAX_COST = 5_000_000


def _minimise(A: np.ndarray, crit: _Criterion, oblique: bool, tol: float, max_iter: int):
    """(Orthomax: SVD iterations, then) GPA to a loose tolerance, Newton polish, then GPA again if
    the polish did not reach tol."""
    prob = _Problem(A, crit, oblique)
    T = np.eye(A.shape[1])
    it0 = 0
    c, k = A.shape
    # Newton's finite-difference Hessian costs 2d gradients of O(C k^2) each, d = k(k-1)/2
    # (orthogonal) or k^2 (oblique): above _NEWTON_MAX_COST the first-order iterations go to tol
    # alone (ResNet-18 layer4, 512 channels, varimax with k = 55: 13 s of Newton, 0.2 s without)
    d = k * k if oblique else k * (k - 1) // 2
    newton = d * c * k <= _NEWTON_MAX_COST
    if not oblique and crit in (_varimax, _quartimax):
        # the SVD iteration converges linearly: to 1e-5, or to tol itself when that is >= 1e-6
        # (cheaper there than Newton steps with a finite-difference Hessian) or without Newton
        svd_tol = tol if (tol >= 1e-6 or not newton) else max(tol, 1e-5)
        cap = min(max_iter, 5000) if newton else max_iter
        T, it0 = _svd_iteration(prob, T, 1.0 if crit is _varimax else 0.0, svd_tol, cap)
    T, conv, it, f, s, _ = _gpa(prob, T, max(tol, 1e-5) if newton else tol, max_iter)
    it += it0
    if s >= tol and newton:
        T, f, s, nn = _newton(prob, T, f, s, tol)
        it += nn
    if s >= tol:
        T, conv, it2, f, s, _ = _gpa(prob, T, tol, max(max_iter - it, 0))
        it += it2
    return T, bool(s < tol), it, f, s


def _gpa_orth(A: np.ndarray, crit: _Criterion, tol: float, max_iter: int) -> tuple[np.ndarray, bool, int, float, float]:
    return _minimise(A, crit, False, tol, max_iter)


def _gpa_oblq(A: np.ndarray, crit: _Criterion, tol: float, max_iter: int) -> tuple[np.ndarray, bool, int, float, float]:
    return _minimise(A, crit, True, tol, max_iter)


def _promax(A: np.ndarray, power: float, tol: float, max_iter: int) -> tuple[np.ndarray, bool, int, float, float]:
    Tv, conv, it, f, s = _gpa_orth(A, _varimax, tol, max_iter)
    X = A @ Tv
    Y = X * np.abs(X) ** (power - 1.0)
    coef = np.linalg.solve(X.T @ X, X.T @ Y)
    try:
        diag_inv = np.diag(np.linalg.inv(coef.T @ coef))
    except np.linalg.LinAlgError:
        diag_inv = np.diag(np.linalg.pinv(coef.T @ coef))
    coef = coef * np.sqrt(diag_inv)[None, :]
    # Lambda = A Tv coef = A T^-T  ->  T = Tv coef^-T  (Tv orthogonal); Phi = coef^-1 coef^-T
    T = Tv @ np.linalg.inv(coef).T
    return T, conv, it, f, s
