"""Rotations of factor loadings: varimax, quartimax (orthogonal), promax, oblimin, geomin (oblique).

Conventions (all methods). The unrotated loadings are ``A`` [C, k] (``x = A f0 + e`` with
``cov(f0) = I``). A rotation is a ``k x k`` matrix ``T`` whose columns have unit length (the
``Th`` of R's GPArotation), and

* pattern loadings ``Lambda = A T^-T`` (``A @ inv(T).T``); for an orthogonal ``T`` this is ``A T``;
* factor correlations ``Phi = T^T T`` (unit diagonal; the identity for orthogonal rotations);
* structure ``S = Lambda Phi`` (correlations of the variables with the factors);
* factors ``f = T^T f0``: ``A f0 = Lambda f`` and ``cov(f) = Phi``. Every linear factor score
  (regression/Thurstone ``Phi Lambda^T Sigma^-1 x``, Bartlett ``(Lambda^T Psi^-1 Lambda)^-1 Lambda^T
  Psi^-1 x``) therefore rotates as ``B = T^T B0`` (:func:`rotate_score_weights`).

The model covariance ``Lambda Phi Lambda^T + Psi = A A^T + Psi`` does not change.

Algorithms. Varimax, quartimax, oblimin and geomin minimise their criterion ``Q(Lambda)`` by the
gradient-projection algorithm (Jennrich 2001, 2002; Bernaards & Jennrich 2005, GPArotation's
``GPForth``/``GPFoblq``, from ``T = I``), run until the Frobenius norm of the projected gradient is
below ``tol`` (default 1e-8). When the sufficient-decrease test of the line search asks for a decrease
smaller than the rounding error of ``Q`` (near the optimum, where GPArotation's default ``eps=1e-5``
never goes), a step is accepted instead when ``Q`` does not rise beyond rounding and the projected
gradient shrinks. Varimax and quartimax start with Kaiser's SVD iteration (scikit-learn's update,
much faster on wide layers) until the projected gradient is below 1e-5; every method then takes
Riemannian Newton steps and, if needed, gradient projection again down to ``tol``. Only
``max_iter`` iterations without convergence give ``converged=False``.
Promax (Hendrickson & White 1964) is a converged varimax followed by the least-squares fit of the
power target ``L |L|^(power-1)`` and a rescaling to unit factor variances, as factor_analyzer 0.5.1's
``Rotator._promax`` (and R's ``stats::promax``).

Criteria (GPArotation's ``vgQ.*``; ``L`` = loadings being rotated, ``p`` = rows, ``N = 11^T - I``):

* varimax: ``Q = -||L^2 - 1 mean(L^2)||_F^2 / 4`` (raw varimax; the column variances of ``L^2``);
* quartimax: ``Q = -sum(L^4) / 4``;
* oblimin: ``Q = sum(L^2 * ((I - gamma/p 11^T) L^2 N)) / 4``; ``gamma = 0`` is quartimin;
* geomin: ``Q = sum_i (prod_j (L_ij^2 + delta))^(1/k)``.

Kaiser normalisation (``normalize=True``) rotates ``D^-1 A`` with ``D = diag(sqrt(h2))`` (``h2`` the
communalities of ``A``; a row with zero communality is left as it is) and multiplies the rows back;
``T``, ``Phi`` and the score rotation are unchanged by the row scaling. The default is
``normalize=False``, as scikit-learn's ``FactorAnalysis(rotation=...)`` and the ELFA reference
package, which rotate raw loadings; factor_analyzer (``Rotator(normalize=True)``, used for varimax
and promax only) and R's psych/GPArotation/``stats::varimax`` default to Kaiser normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError

__all__ = [
    "ROTATIONS",
    "ORTHOGONAL",
    "OBLIQUE",
    "Rotation",
    "check_rotation_kwargs",
    "rotate",
    "orient",
    "rotate_score_weights",
    "factor_variance",
    "communalities",
    "rotation_criterion",
]

ORTHOGONAL: tuple[str, ...] = ("varimax", "quartimax")
OBLIQUE: tuple[str, ...] = ("promax", "oblimin", "geomin")
ROTATIONS: tuple[Optional[str], ...] = (*ORTHOGONAL, *OBLIQUE, None)

_COMMON_DEFAULTS: dict[str, Any] = {"normalize": False, "tol": 1e-8, "max_iter": 50_000}
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "varimax": {},
    "quartimax": {},
    "promax": {"power": 4},
    "oblimin": {"gamma": 0.0},
    "geomin": {"delta": 0.01},
}
# line-search halvings per iteration (GPArotation: 0:10)
_HALVINGS = 11


@dataclass(frozen=True)
class Rotation:
    """A rotated factor solution.

    With ``A`` the unrotated loadings passed to :func:`rotate` and ``T = rotation_matrix``:
    ``loadings = A @ inv(T).T`` (``A @ T`` when orthogonal), ``phi = T.T @ T``,
    ``structure = loadings @ phi``, and the rotated factors are ``f = T.T @ f0``.

    Attributes:
        loadings (Tensor): pattern loadings ``Lambda`` [C, k], float64.
        phi (Tensor): factor correlations ``Phi`` [k, k] (identity for orthogonal rotations).
        structure (Tensor): structure loadings ``Lambda Phi`` [C, k].
        rotation_matrix (Tensor): ``T`` [k, k], unit-length columns (orthogonal for varimax and
            quartimax).
        method (str or None): the rotation.
        params (dict): the complete rotation keyword arguments used (see
            :func:`check_rotation_kwargs`).
        converged (bool): projected gradient below ``tol`` before ``max_iter`` iterations (for
            promax: of its varimax step).
        n_iter (int): gradient-projection iterations (promax: of its varimax step; 0 for None).
        criterion (float): final criterion value ``Q`` (on the Kaiser-normalised loadings when
            ``normalize``; promax: the varimax step's; NaN for None).
        projected_gradient (float): Frobenius norm of the final projected gradient (same remarks).
    """

    loadings: Tensor
    phi: Tensor
    structure: Tensor
    rotation_matrix: Tensor
    method: Optional[str]
    params: dict[str, Any] = field(default_factory=dict)
    converged: bool = True
    n_iter: int = 0
    criterion: float = math.nan
    projected_gradient: float = 0.0

    @property
    def oblique(self) -> bool:
        """Whether the method is oblique (``phi`` may differ from the identity)."""
        return self.method in OBLIQUE


# --------------------------------------------------------------------------------------------
# keyword arguments


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_rotation_kwargs(method: Optional[str], kwargs: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Validate ``rotation_kwargs`` for ``method`` and fill in the defaults.

    Valid keys: ``normalize`` (bool, Kaiser normalisation, default False), ``tol`` (float > 0,
    projected-gradient norm at which the iteration stops, default 1e-8), ``max_iter`` (int >= 1,
    default 50000) for every method; ``power`` (promax; real >= 1, default 4); ``gamma`` (oblimin;
    real, default 0 = quartimin); ``delta`` (geomin; real > 0, default 0.01). ``method=None`` takes
    none.

    Args:
        method (str or None): one of :data:`ROTATIONS`.
        kwargs (mapping or None): the keyword arguments given.

    Returns:
        dict: every keyword argument of ``method``, given or default.

    Raises:
        CaptumElfaError: unknown method, unknown key (the message lists the valid keys) or a bad value.

    Examples:
        >>> check_rotation_kwargs("promax", {"power": 3})
        {'normalize': False, 'tol': 1e-08, 'max_iter': 50000, 'power': 3}
    """
    if method not in ROTATIONS:
        raise CaptumElfaError(f"rotation={method!r} is not valid; choose one of {list(ROTATIONS)}")
    given = dict(kwargs or {})
    if method is None:
        if given:
            raise CaptumElfaError(f"rotation=None takes no rotation_kwargs; got {sorted(given)}")
        return {}
    defaults = {**_COMMON_DEFAULTS, **_METHOD_DEFAULTS[method]}
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise CaptumElfaError(
            f"rotation_kwargs key(s) {unknown} are not valid for rotation={method!r}; valid keys: {sorted(defaults)}"
        )
    out = {**defaults, **given}
    if not isinstance(out["normalize"], (bool, np.bool_)):
        raise CaptumElfaError(f"rotation_kwargs normalize={out['normalize']!r} is not valid; use True or False")
    out["normalize"] = bool(out["normalize"])
    tol = out["tol"]
    if not _is_real(tol) or not math.isfinite(tol) or tol <= 0:
        raise CaptumElfaError(f"rotation_kwargs tol={tol!r} is not valid; use a finite float > 0 (default 1e-8)")
    out["tol"] = float(tol)
    mi = out["max_iter"]
    if not isinstance(mi, (int, np.integer)) or isinstance(mi, (bool, np.bool_)) or mi < 1:
        raise CaptumElfaError(f"rotation_kwargs max_iter={mi!r} is not valid; use an int >= 1 (default 50000)")
    out["max_iter"] = int(mi)
    if method == "promax":
        pw = out["power"]
        if not _is_real(pw) or not math.isfinite(pw) or pw < 1:
            raise CaptumElfaError(f"rotation_kwargs power={pw!r} is not valid for promax; use a real >= 1 (default 4)")
    if method == "oblimin":
        g = out["gamma"]
        if not _is_real(g) or not math.isfinite(g):
            raise CaptumElfaError(
                f"rotation_kwargs gamma={g!r} is not valid for oblimin; use a finite real (default 0 = quartimin)"
            )
        out["gamma"] = float(g)
    if method == "geomin":
        d = out["delta"]
        if not _is_real(d) or not math.isfinite(d) or d <= 0:
            raise CaptumElfaError(f"rotation_kwargs delta={d!r} is not valid for geomin; use a real > 0 (default 0.01)")
        out["delta"] = float(d)
    return out


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


def _criterion(method: str, params: Mapping[str, Any]) -> _Criterion:
    if method == "varimax":
        return _varimax
    if method == "quartimax":
        return _quartimax
    if method == "oblimin":
        return _oblimin(float(params.get("gamma", 0.0)))
    if method == "geomin":
        return _geomin(float(params.get("delta", 0.01)))
    raise CaptumElfaError(f"rotation={method!r} has no gradient-projection criterion; choose one of {ORTHOGONAL}")


def rotation_criterion(loadings: Tensor, method: str, **kwargs: Any) -> float:
    """The criterion ``Q`` that ``method`` minimises, at ``loadings`` (no normalisation applied).

    Args:
        loadings (Tensor): loadings [C, k].
        method (str): "varimax", "quartimax", "oblimin" (``gamma``) or "geomin" (``delta``).
        **kwargs: ``gamma`` / ``delta``.

    Returns:
        float: ``Q(loadings)`` (smaller is better; varimax and quartimax are negative).
    """
    params = check_rotation_kwargs(method, kwargs)
    return _criterion(method, params)(loadings.detach().to(torch.float64).cpu().numpy())[0]


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


def _minimise(A: np.ndarray, crit: _Criterion, oblique: bool, tol: float, max_iter: int):
    """(Orthomax: SVD iterations, then) GPA to a loose tolerance, Newton polish, then GPA again if
    the polish did not reach tol."""
    prob = _Problem(A, crit, oblique)
    T = np.eye(A.shape[1])
    it0 = 0
    if not oblique and crit in (_varimax, _quartimax):
        # the SVD iteration converges linearly: to 1e-5, or to tol itself when that is >= 1e-6
        # (cheaper there than Newton steps with a finite-difference Hessian)
        svd_tol = tol if tol >= 1e-6 else max(tol, 1e-5)
        T, it0 = _svd_iteration(prob, T, 1.0 if crit is _varimax else 0.0, svd_tol, min(max_iter, 5000))
    T, conv, it, f, s, _ = _gpa(prob, T, max(tol, 1e-5), max_iter)
    it += it0
    if s >= tol:
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


# --------------------------------------------------------------------------------------------
# public functions


def _as_numpy(loadings: Tensor, name: str = "loadings") -> np.ndarray:
    if not isinstance(loadings, Tensor):
        raise CaptumElfaError(f"{name} must be a torch.Tensor [C, k]; got {type(loadings).__name__}")
    if loadings.ndim != 2 or loadings.shape[1] < 1:
        raise CaptumElfaError(f"{name} must have shape [C, k] with k >= 1; got {tuple(loadings.shape)}")
    a = loadings.detach().to(torch.float64).cpu().numpy().copy()
    if not np.isfinite(a).all():
        raise CaptumElfaError(f"{name} contains NaN or infinite values")
    return a


def _build(
    A: np.ndarray, T: np.ndarray, method: Optional[str], params: dict[str, Any], conv: bool, it: int, f: float, s: float
) -> Rotation:
    lam = np.linalg.solve(T, A.T).T  # A T^-T
    phi = np.eye(T.shape[1]) if method in ORTHOGONAL or method is None else T.T @ T
    if method not in OBLIQUE:
        lam = A @ T
    t = torch.from_numpy
    return Rotation(t(lam), t(phi), t(lam @ phi), t(T.copy()), method, params, bool(conv), int(it), float(f), float(s))


def rotate(loadings: Tensor, method: Optional[str], **kwargs: Any) -> Rotation:
    """Rotate unrotated loadings ``A`` [C, k] (see the module docstring for the conventions).

    Args:
        loadings (Tensor): unrotated loadings ``A`` [C, k] (any float dtype/device; computed in float64).
        method (str or None): one of :data:`ROTATIONS`; None returns ``A`` with ``T = Phi = I``.
        **kwargs: rotation keyword arguments, checked by :func:`check_rotation_kwargs`
            (``normalize``, ``tol``, ``max_iter``, ``power``, ``gamma``, ``delta``).

    Returns:
        Rotation: float64 CPU tensors, factors in the order the algorithm leaves them (apply
        :func:`orient` for the package's order and signs).

    Raises:
        CaptumElfaError: bad method, keyword arguments or loadings.

    Examples:
        >>> a = torch.tensor([[0.8, 0.3], [0.7, 0.4], [0.3, -0.7], [0.2, -0.8]], dtype=torch.float64)
        >>> rot = orient(rotate(a, "oblimin"))
        >>> rot.converged, rot.projected_gradient < 1e-8
        (True, True)
    """
    params = check_rotation_kwargs(method, kwargs)
    A = _as_numpy(loadings)
    k = A.shape[1]
    if method is None or k == 1:
        return _build(A, np.eye(k), method, params, True, 0, math.nan, 0.0)
    An = A
    if params["normalize"]:
        h = np.sqrt((A * A).sum(1))
        h[h == 0] = 1.0
        An = A / h[:, None]
    tol, mi = params["tol"], params["max_iter"]
    if method == "promax":
        T, conv, it, f, s = _promax(An, float(params["power"]), tol, mi)
    elif method in ORTHOGONAL:
        T, conv, it, f, s = _gpa_orth(An, _criterion(method, params), tol, mi)
    else:
        T, conv, it, f, s = _gpa_oblq(An, _criterion(method, params), tol, mi)
    return _build(A, T, method, params, conv, it, f, s)


def factor_variance(loadings: Tensor, phi: Optional[Tensor] = None) -> Tensor:
    """Variance explained by each factor, ``diag(Phi Lambda^T Lambda)`` [k] (psych's ``Vaccounted``).

    For orthogonal factors (``phi`` None or I) the column sums of squared loadings. For oblique ones,
    ``sum_i Lambda_ij (Lambda Phi)_ij`` (pattern times structure): the parts add up to the total
    communality ``sum_i diag(Lambda Phi Lambda^T)``, as in R's ``psych::fa`` (which orders factors by
    it). factor_analyzer 0.5.1's ``get_factor_variance`` ignores ``Phi`` (column sums of squared
    pattern loadings, which do not add up to the communalities of correlated factors); the two agree
    for orthogonal rotations.

    Args:
        loadings (Tensor): pattern loadings ``Lambda`` [C, k].
        phi (Tensor or None): factor correlations [k, k]; None for orthogonal factors.

    Returns:
        Tensor: [k], the loadings' dtype.
    """
    if phi is None:
        return (loadings**2).sum(0)
    return (loadings * (loadings @ phi)).sum(0)


def communalities(loadings: Tensor, phi: Optional[Tensor] = None) -> Tensor:
    """Communalities ``diag(Lambda Phi Lambda^T)`` [C]: the common part of each variable's variance.

    Invariant under rotation (equal to the unrotated row sums of squares). factor_analyzer 0.5.1's
    ``get_communalities`` returns the row sums of squared pattern loadings also for oblique rotations,
    which is not the model's common variance (``h2 + psi`` then differs from the variance); psych's
    ``fa`` reports ``diag(Lambda Phi Lambda^T)`` as we do. Equal for orthogonal rotations.

    Args:
        loadings (Tensor): pattern loadings ``Lambda`` [C, k].
        phi (Tensor or None): factor correlations [k, k]; None for orthogonal factors.

    Returns:
        Tensor: [C].
    """
    if phi is None:
        return (loadings**2).sum(1)
    return (loadings * (loadings @ phi)).sum(1)


def orient(rotation: Rotation) -> Rotation:
    """The package's convention: factors by variance explained (descending), loadings summing positive.

    Factors are sorted by :func:`factor_variance` (``diag(Phi Lambda^T Lambda)``, stable for ties),
    then each factor's sign is chosen so that its pattern loadings sum to a positive number (a zero
    sum keeps the sign). ``loadings``, ``structure`` and ``rotation_matrix`` get their columns
    permuted and flipped, ``phi`` its rows and columns, so that every relation of :class:`Rotation`
    still holds.

    Args:
        rotation (Rotation): from :func:`rotate`.

    Returns:
        Rotation: a new, oriented rotation (other fields unchanged).
    """
    lam, phi = rotation.loadings, rotation.phi
    var = factor_variance(lam, phi)
    order = torch.from_numpy(np.argsort(-var.numpy(), kind="stable"))
    lam = lam[:, order]
    sign = torch.where(lam.sum(0) < 0, -1.0, 1.0).to(lam.dtype)
    return Rotation(
        lam * sign,
        phi[order][:, order] * sign[:, None] * sign[None, :],
        rotation.structure[:, order] * sign,
        rotation.rotation_matrix[:, order] * sign,
        rotation.method,
        dict(rotation.params),
        rotation.converged,
        rotation.n_iter,
        rotation.criterion,
        rotation.projected_gradient,
    )


def rotate_score_weights(b0: Tensor, rotation: Rotation) -> Tensor:
    """Rotate factor-score weights of the unrotated factors: ``B = T^T B0`` [k, C].

    With unrotated loadings ``A`` and regression weights ``B0 = A^T Sigma^-1`` (``score_weights`` of
    ``factor_model``, ``(I + A^T Psi^-1 A)^-1 A^T Psi^-1``, is the same matrix), ``T^T B0`` equals
    ``Phi Lambda^T Sigma^-1``: the regression (Thurstone) scores of the rotated, possibly correlated
    factors. Bartlett weights rotate the same way. For orthogonal rotations ``Phi = I`` and this is
    ``Lambda^T Sigma^-1``.

    Args:
        b0 (Tensor): score weights [k, C] of the unrotated factors passed to :func:`rotate`.
        rotation (Rotation): the rotation (oriented or not).

    Returns:
        Tensor: [k, C] in ``b0``'s dtype and device.
    """
    t = rotation.rotation_matrix.to(dtype=b0.dtype, device=b0.device)
    if b0.ndim != 2 or b0.shape[0] != t.shape[0]:
        raise CaptumElfaError(f"b0 must have shape [k={t.shape[0]}, C]; got {tuple(b0.shape)}")
    return t.T @ b0
