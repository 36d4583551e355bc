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
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, check_bool, is_int
from captum_elfa.stats._rotation_criteria import (  # noqa: F401 (re-exported: tests and callers use the private names)
    _Criterion,
    _geomin,
    _gpa_oblq,
    _gpa_orth,
    _newton,
    _oblimin,
    _Problem,
    _promax,
    _quartimax,
    _svd_iteration,
    _varimax,
)

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
    return is_int(value) or isinstance(value, (float, np.floating))


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
    try:
        out["normalize"] = check_bool("normalize", out["normalize"])
    except CaptumElfaError:
        raise CaptumElfaError(
            f"rotation_kwargs normalize={out['normalize']!r} is not valid; use True or False"
        ) from None
    tol = out["tol"]
    if not _is_real(tol) or not math.isfinite(tol) or tol <= 0:
        raise CaptumElfaError(f"rotation_kwargs tol={tol!r} is not valid; use a finite float > 0 (default 1e-8)")
    out["tol"] = float(tol)
    mi = out["max_iter"]
    if not is_int(mi) or mi < 1:
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
# criteria


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
