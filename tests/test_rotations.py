"""Rotations (captum_elfa.stats.rotations) against factor_analyzer 0.5.1 and independent gradients.

Oracles: factor_analyzer's ``Rotator`` run at a tight tolerance, and projected gradients computed
here with autograd from the criteria's definitions (GPArotation's ``vgQ.*``), not read from the
library's fields.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.factor_model import fit_factor_model, score_weights
from captum_elfa.stats.rotations import (
    OBLIQUE,
    ORTHOGONAL,
    ROTATIONS,
    check_rotation_kwargs,
    communalities,
    factor_variance,
    orient,
    rotate,
    rotate_score_weights,
)
from helpers import require

factor_analyzer = require("factor_analyzer")
Rotator = factor_analyzer.Rotator

GRID = [(c, k) for c in (6, 20, 64, 128) for k in (2, 3, 5, 8) if (c - k) ** 2 - (c + k) >= 0]


@functools.cache
def _loadings(c: int, k: int, seed: int, kind: str) -> np.ndarray:
    """``fit``: ML loadings (unrotated) of a sample correlation matrix with simple structure;
    ``rand``: Gaussian loadings without structure."""
    rng = np.random.default_rng(1000 * c + 10 * k + seed)
    if kind == "rand":
        return rng.standard_normal((c, k)) * 0.4
    w = np.zeros((c, k))
    w[np.arange(c), np.arange(c) % k] = rng.uniform(0.4, 0.8, c)
    w += rng.normal(0.0, 0.15, (c, k))
    x = rng.standard_normal((2000, k)) @ w.T + 0.6 * rng.standard_normal((2000, c))
    r = torch.from_numpy(np.corrcoef(x, rowvar=False))
    return fit_factor_model(r, k, rotation=None).loadings.numpy()


def _cases(kinds=("fit",), seeds=(0, 1)):
    return [(c, k, s, kind) for c, k in GRID for s in seeds for kind in kinds]


# ---- criteria and projected gradients from the definitions (torch autograd) ----


def _q(lam: torch.Tensor, method: str, gamma: float = 0.0, delta: float = 0.01) -> torch.Tensor:
    l2 = lam**2
    p, k = lam.shape
    if method == "varimax":
        return -((l2 - l2.mean(0)) ** 2).sum() / 4
    if method == "quartimax":
        return -(l2**2).sum() / 4
    if method == "oblimin":
        n = torch.ones(k, k, dtype=lam.dtype) - torch.eye(k, dtype=lam.dtype)
        cmat = torch.eye(p, dtype=lam.dtype) - gamma / p
        return (l2 * (cmat @ l2 @ n)).sum() / 4
    if method == "geomin":
        return torch.exp(torch.log(l2 + delta).mean(1)).sum()
    raise AssertionError(method)


def _projected_gradient(a: np.ndarray, t: np.ndarray, method: str, oblique: bool, **kw) -> float:
    """Norm of the gradient of Q(Lambda(T)) w.r.t. T projected on the tangent space of the constraint
    set (orthogonal matrices, or matrices with unit-length columns)."""
    at = torch.from_numpy(a)
    tt = torch.from_numpy(t).clone().requires_grad_(True)
    lam = at @ torch.linalg.inv(tt).T if oblique else at @ tt
    (g,) = torch.autograd.grad(_q(lam, method, **kw), tt)
    tt = tt.detach()
    if oblique:
        gp = g - tt * (tt * g).sum(0, keepdim=True)
    else:
        m = tt.T @ g
        gp = g - tt @ (m + m.T) / 2
    return float(torch.linalg.norm(gp))


def _normalized(a: np.ndarray) -> np.ndarray:
    h = np.sqrt((a**2).sum(1))
    return a / np.where(h == 0, 1.0, h)[:, None]


def _align(ref: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute and flip other's columns to match ref (Hungarian on |cross products|)."""
    _, cols = linear_sum_assignment(-np.abs(ref.T @ other))
    sign = np.sign((ref * other[:, cols]).sum(0))
    sign[sign == 0] = 1
    return other[:, cols] * sign, cols, sign


def _fa(a: np.ndarray, method: str, normalize: bool, **kw):
    """factor_analyzer at a tight tolerance; Kaiser normalisation done here for the GPA methods (its
    ``Rotator`` normalises only for varimax and promax)."""
    name = {"oblimin": "quartimin", "geomin": "geomin_obl"}.get(method, method)
    pre = normalize and method not in ("varimax", "promax")
    x = _normalized(a) if pre else a
    # its varimax stops when the sum of singular values grows by < tol: tol=0 runs to stagnation;
    # its GPA line search stalls near 1e-7 (no decrease resolvable in float64), so 1e-6 for the others
    tol = 0.0 if method in ("varimax", "promax") else 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rot = Rotator(method=name, normalize=normalize, max_iter=5000, tol=tol, **kw)
        lam = rot.fit_transform(x)
    if pre:
        lam = lam * np.sqrt((a**2).sum(1))[:, None]
    return lam, rot.rotation_, rot.phi_


# ---- tests ----


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(
    "method,kw", [("varimax", {}), ("quartimax", {}), ("oblimin", {}), ("oblimin", {"gamma": -0.5}), ("geomin", {})]
)
def test_converged_projected_gradient_scan(method, kw, normalize):
    worst = 0.0
    for c, k, seed, kind in _cases(kinds=("fit", "rand"), seeds=(0,)):
        a = _loadings(c, k, seed, kind)
        rot = rotate(torch.from_numpy(a), method, normalize=normalize, **kw)
        assert rot.converged, (c, k, seed, kind, rot.projected_gradient, rot.n_iter)
        an = _normalized(a) if normalize else a
        s = _projected_gradient(an, rot.rotation_matrix.numpy(), method, method in OBLIQUE, **kw)
        worst = max(worst, s)
        assert s < 1e-8, (c, k, seed, kind, s)
        # the relations of the docstring
        t = rot.rotation_matrix.numpy()
        lam = a @ np.linalg.inv(t).T
        np.testing.assert_allclose(rot.loadings.numpy(), lam, atol=1e-12)
        np.testing.assert_allclose(rot.phi.numpy(), t.T @ t, atol=1e-12)
        np.testing.assert_allclose(rot.structure.numpy(), lam @ (t.T @ t), atol=1e-12)
        # the model covariance is unchanged
        np.testing.assert_allclose(lam @ rot.phi.numpy() @ lam.T, a @ a.T, atol=1e-10)
    assert worst > 0


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("method", ["varimax", "quartimax", "oblimin", "promax", "geomin"])
def test_matches_factor_analyzer(method, normalize):
    for c, k, seed, kind in _cases(kinds=("fit",), seeds=(0,)):
        a = _loadings(c, k, seed, kind)
        rot = rotate(torch.from_numpy(a), method, normalize=normalize)
        ours = rot.loadings.numpy()
        lam, _, phi = _fa(a, method, normalize)
        lam, cols, sign = _align(ours, lam)
        gap = np.abs(lam - ours).max()
        if method == "promax":
            # deterministic after varimax; its varimax stops at stagnation, not at a zero gradient
            assert gap < 1e-4, (c, k, gap)
        else:
            assert gap < 1e-4, (c, k, gap)
            # where they differ, ours is the better optimum: lower criterion, smaller gradient
            h = np.sqrt((a**2).sum(1))[:, None] if normalize else 1.0
            q_fa = float(_q(torch.from_numpy(lam / h), method))
            q_us = float(_q(torch.from_numpy(ours / h), method))
            assert q_us <= q_fa + 1e-12 * abs(q_fa), (c, k, q_us, q_fa)
        if phi is not None:
            phi = phi[np.ix_(cols, cols)] * sign[:, None] * sign[None, :]
            np.testing.assert_allclose(rot.phi.numpy(), phi, atol=1e-4)
        else:
            np.testing.assert_allclose(rot.phi.numpy(), np.eye(k), atol=1e-14)


def test_oblimin_gamma_nonzero_is_not_factor_analyzer():
    """factor_analyzer 0.5.1's oblimin with gamma != 0 replaces ``L^2 N`` by the constant ``p``
    (``np.diag(np.full(1, p)) - np.dot(np.zeros((p, p)), X)``): its criterion is ``p * sum(L^2) / 4``,
    constant under orthogonal rotations; GPArotation's ``(I - gamma/p 11^T) L^2 N`` is used here."""
    a = _loadings(20, 3, 0, "fit")
    rot = rotate(torch.from_numpy(a), "oblimin", gamma=0.5)
    s = _projected_gradient(a, rot.rotation_matrix.numpy(), "oblimin", True, gamma=0.5)
    assert s < 1e-8
    lam_fa, _, _ = _fa(a, "oblimin", False, gamma=0.5)
    q_fa = float(_q(torch.from_numpy(lam_fa), "oblimin", gamma=0.5))
    assert rot.criterion < q_fa - 1e-3


def test_sklearn_varimax_stops_early_on_128_channels():
    from sklearn.decomposition import FactorAnalysis

    rng = np.random.default_rng(7)
    c, k = 128, 6
    w = np.zeros((c, k))
    w[np.arange(c), np.arange(c) % k] = rng.uniform(0.4, 0.8, c)
    w += rng.normal(0.0, 0.15, (c, k))
    x = rng.standard_normal((3000, k)) @ w.T + 0.6 * rng.standard_normal((3000, c))
    x = (x - x.mean(0)) / x.std(0)
    fa0 = FactorAnalysis(n_components=k, random_state=0).fit(x)
    fav = FactorAnalysis(n_components=k, rotation="varimax", random_state=0).fit(x)
    a = fa0.components_.T
    sk = fav.components_.T
    rot = rotate(torch.from_numpy(a), "varimax")
    ours = rot.loadings.numpy()
    sk_al, _, _ = _align(ours, sk)
    gap = np.abs(sk_al - ours).max()
    assert 1e-6 < gap < 0.2  # close, not equal
    q_sk = float(_q(torch.from_numpy(sk), "varimax"))
    assert rot.criterion < q_sk
    t_sk = np.linalg.lstsq(a, sk, rcond=None)[0]
    u, _, vt = np.linalg.svd(t_sk)
    s_sk = _projected_gradient(a, u @ vt, "varimax", False)
    s_us = _projected_gradient(a, rot.rotation_matrix.numpy(), "varimax", False)
    assert s_us < 1e-8 < s_sk


@pytest.mark.parametrize("method", ["varimax", "quartimax", "oblimin", "promax"])
def test_criterion_invariant_to_orthogonal_prerotation(method):
    for c, k, seed, kind in _cases(kinds=("fit",), seeds=(0,)):
        a = _loadings(c, k, seed, kind)
        q, _ = np.linalg.qr(np.random.default_rng(seed + k).standard_normal((k, k)))
        r1 = orient(rotate(torch.from_numpy(a), method))
        r2 = orient(rotate(torch.from_numpy(a @ q), method))
        assert abs(r1.criterion - r2.criterion) <= 1e-9 * abs(r1.criterion), (c, k)
        tol = 1e-4 if method == "promax" else 1e-5
        np.testing.assert_allclose(r1.loadings.numpy(), r2.loadings.numpy(), atol=tol)


@pytest.mark.parametrize("method", [m for m in ROTATIONS if m is not None])
def test_orient_convention_and_score_weights(method):
    rng = np.random.default_rng(3)
    for c, k, seed, kind in _cases(kinds=("fit",), seeds=(0,))[::2]:
        a = _loadings(c, k, seed, kind)
        a = a[:, rng.permutation(k)] * rng.choice([-1.0, 1.0], k)
        rot = orient(rotate(torch.from_numpy(a), method))
        lam, phi, t = rot.loadings.numpy(), rot.phi.numpy(), rot.rotation_matrix.numpy()
        var = np.diag(phi @ lam.T @ lam)
        assert np.all(np.diff(var) <= 1e-12), var
        assert np.all(lam.sum(0) > 0)
        np.testing.assert_allclose(factor_variance(rot.loadings, rot.phi).numpy(), var, atol=1e-12)
        np.testing.assert_allclose(var.sum(), communalities(rot.loadings, rot.phi).numpy().sum(), rtol=1e-12)
        # communalities are those of the unrotated loadings
        np.testing.assert_allclose(communalities(rot.loadings, rot.phi).numpy(), (a**2).sum(1), atol=1e-10)
        np.testing.assert_allclose(lam, a @ np.linalg.inv(t).T, atol=1e-10)
        np.testing.assert_allclose(phi, t.T @ t, atol=1e-12)
        np.testing.assert_allclose(rot.structure.numpy(), lam @ phi, atol=1e-12)
        if method in ORTHOGONAL:
            np.testing.assert_allclose(phi, np.eye(k), atol=1e-14)
        # Thurstone scores of the rotated factors: Phi Lambda^T Sigma^-1
        psi = np.clip(1.0 - (a**2).sum(1), 0.05, None)
        sigma = a @ a.T + np.diag(psi)
        b0 = score_weights(torch.from_numpy(a), torch.from_numpy(psi))
        np.testing.assert_allclose(b0.numpy(), a.T @ np.linalg.inv(sigma), atol=1e-10)
        b = rotate_score_weights(b0, rot).numpy()
        np.testing.assert_allclose(b, phi @ lam.T @ np.linalg.inv(sigma), atol=1e-10)


def test_kaiser_normalisation_zero_row_and_k1():
    a = _loadings(20, 3, 0, "fit").copy()
    a[4] = 0.0
    for method in ("varimax", "promax", "oblimin", "quartimax"):
        rot = rotate(torch.from_numpy(a), method, normalize=True)
        assert torch.isfinite(rot.loadings).all() and torch.all(rot.loadings[4] == 0)
    one = torch.from_numpy(a[:, :1])
    for method in ROTATIONS:
        rot = rotate(one, method)
        assert torch.equal(rot.loadings, one) and rot.converged


def test_none_is_identity():
    a = torch.from_numpy(_loadings(20, 3, 0, "fit"))
    rot = rotate(a, None)
    assert torch.equal(rot.loadings, a) and torch.equal(rot.rotation_matrix, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "method,kwargs,needle",
    [
        ("varimax", {"power": 3}, "power"),
        ("promax", {"power": 0.5}, "power"),
        ("promax", {"power": "4"}, "power"),
        ("oblimin", {"gamma": float("nan")}, "gamma"),
        ("oblimin", {"delta": 0.1}, "delta"),
        ("geomin", {"delta": 0.0}, "delta"),
        ("varimax", {"normalize": 1}, "normalize"),
        ("quartimax", {"tol": -1.0}, "tol"),
        ("quartimax", {"max_iter": 0}, "max_iter"),
        ("quartimax", {"max_iter": 10.5}, "max_iter"),
        ("varimin", {}, "varimin"),
        (None, {"normalize": True}, "normalize"),
    ],
)
def test_bad_kwargs(method, kwargs, needle):
    with pytest.raises(CaptumElfaError, match=needle):
        check_rotation_kwargs(method, kwargs)
    with pytest.raises(CaptumElfaError, match=needle):
        rotate(torch.eye(4, 2, dtype=torch.float64), method, **kwargs)


def test_defaults_filled():
    assert check_rotation_kwargs("promax", {}) == {"normalize": False, "tol": 1e-8, "max_iter": 50000, "power": 4}
    assert check_rotation_kwargs("oblimin", {"gamma": 1})["gamma"] == 1.0
    assert check_rotation_kwargs(None, None) == {}
    assert set(ORTHOGONAL) | set(OBLIQUE) | {None} == set(ROTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["varimax", "quartimax", "oblimin"])
def test_many_factors_converge(method):
    """Many factors: oblique ones up to the Newton cost bound (26-30 factors here) are polished by
    Newton steps; wide orthogonal ones above it (36-40 factors on 400-480 channels) converge by
    the first-order iterations alone. Both must reach the 1e-8 criterion, checked by autograd,
    on generated loadings without structure."""
    from captum_elfa.stats._rotation_criteria import _NEWTON_MAX_COST

    oblique = method in OBLIQUE
    cases = ((80, 26, 0), (120, 30, 1)) if oblique else ((400, 36, 0), (480, 40, 1))
    for c, k, seed in cases:
        d = k * k if oblique else k * (k - 1) // 2
        assert (d * c * k <= _NEWTON_MAX_COST) == oblique  # the path the case is meant to exercise
        a = _loadings(c, k, seed, "rand")
        rot = rotate(torch.from_numpy(a), method)
        assert rot.converged, (c, k, seed, rot.projected_gradient, rot.n_iter)
        s = _projected_gradient(a, rot.rotation_matrix.numpy(), method, oblique)
        assert s < 1e-8, (c, k, seed, s)
