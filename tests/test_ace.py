"""The batched super smoother and ACE against the ``ace`` package 0.4.2 (the oracle), and the
PCACE preprocessing against scikit-learn's StandardScaler + PCA."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from captum_elfa.stats.ace import (
    DEFAULT_SPANS,
    SortedAbscissa,
    ace,
    correlation,
    fixed_span_smooth,
    standardized_components,
    super_smoother,
)
from helpers import require

ace_pkg = require("ace.ace")
smoother_pkg = require("ace.smoother")
supersmoother_pkg = require("ace.supersmoother")


def _sample_x(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    x = rng.normal(size=n)
    if kind == "rounded":  # small runs of ties everywhere
        x = np.round(x, 1)
    elif kind == "relu":  # one long run of exact zeros
        x = np.maximum(x, 0.0)
    elif kind == "half_zero":
        x[rng.random(n) < 0.5] = 0.0
    return np.sort(x)


KINDS = ("plain", "rounded", "relu", "half_zero")


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_span_smooth_matches_package(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    for n in (10, 23, 64, 117):
        x = _sample_x(rng, n, kind)
        y = np.sin(2 * x) + rng.normal(scale=0.5, size=n)
        ax = SortedAbscissa(torch.tensor(x))
        for span in DEFAULT_SPANS:
            ref = smoother_pkg.perform_smooth(list(x), list(y), span)
            smooth, res = fixed_span_smooth(ax, torch.tensor(y), span)
            np.testing.assert_allclose(smooth.numpy(), ref.smooth_result, atol=1e-9, rtol=0)
            # where the leverage is 1 the package divides rounding noise by rounding noise
            valid = ax._span(span).valid.numpy()
            np.testing.assert_allclose(
                res.numpy()[valid], np.asarray(ref.cross_validated_residual)[valid], atol=1e-8, rtol=1e-8
            )


def test_leverage_one_reuses_previous_residual() -> None:
    # a run of ties with one value before it: in the first window that value has leverage 1
    x = np.concatenate([[-3.0], np.zeros(12), np.linspace(1, 2, 7)])
    y = np.random.default_rng(0).normal(size=x.size)
    ax = SortedAbscissa(torch.tensor(x))
    _, res = fixed_span_smooth(ax, torch.tensor(y), 0.05)
    invalid = np.flatnonzero(~ax._span(0.05).valid.numpy())
    assert invalid.size > 0 and invalid[0] == 0
    assert res[0].item() == 0.0  # nothing before it: 0, as the package
    for i in invalid[1:]:
        assert res[i].item() == res[i - 1].item()
    assert torch.isfinite(res).all()


@pytest.mark.parametrize("kind", KINDS)
def test_super_smoother_matches_package(kind: str) -> None:
    rng = np.random.default_rng(10 + len(kind))
    for n in (12, 50, 101):
        x = _sample_x(rng, n, kind)
        y = np.tanh(x) + rng.normal(scale=0.3, size=n)
        ref = supersmoother_pkg.SuperSmoother()
        ref.specify_data_set(list(x), list(y))
        ref.compute()
        ours = super_smoother(torch.tensor(x), torch.tensor(y))
        np.testing.assert_allclose(ours.numpy(), ref.smooth_result, atol=1e-8, rtol=0)


def test_super_smoother_bass_enhancement_matches_package() -> None:
    rng = np.random.default_rng(3)
    x = _sample_x(rng, 80, "rounded")
    y = x**2 + rng.normal(scale=0.5, size=80)
    for alpha in (2.0, 8.0):
        ref = supersmoother_pkg.SuperSmoother()
        ref.set_bass_enhancement(alpha)
        ref.specify_data_set(list(x), list(y))
        ref.compute()
        ours = super_smoother(torch.tensor(x), torch.tensor(y), bass_enhancement=alpha)
        np.testing.assert_allclose(ours.numpy(), ref.smooth_result, atol=1e-8, rtol=0)
    plain = super_smoother(torch.tensor(x), torch.tensor(y))
    assert not torch.allclose(plain, ours)


def test_super_smoother_is_batched_and_handles_constant_x() -> None:
    rng = np.random.default_rng(4)
    xs = np.stack([_sample_x(rng, 40, k) for k in KINDS] + [np.full(40, 1.5)])
    ys = rng.normal(size=xs.shape)
    batched = super_smoother(torch.tensor(xs), torch.tensor(ys))
    for i in range(xs.shape[0]):
        single = super_smoother(torch.tensor(xs[i]), torch.tensor(ys[i]))
        torch.testing.assert_close(batched[i], single, atol=1e-12, rtol=0)
    # constant x: the mean of y, as the package
    np.testing.assert_allclose(batched[-1].numpy(), np.full(40, ys[-1].mean()), atol=1e-12)


def _oracle_ace(x: np.ndarray, y: np.ndarray):
    solver = ace_pkg.ACESolver()
    solver.specify_data_set([list(v) for v in x], list(y))
    with contextlib.redirect_stdout(io.StringIO()):
        solver.solve()
    return np.array(solver.x_transforms), np.array(solver.y_transform), solver.rsq, solver._outer_iters


@pytest.mark.parametrize("m", [1, 2, 3])
def test_ace_matches_package(m: int) -> None:
    rng = np.random.default_rng(20 + m)
    batch, n = 9, 70
    x = rng.normal(size=(batch, m, n))
    x[1::3] = np.maximum(x[1::3], 0.0)  # ReLU ties
    x[2::3] = np.round(x[2::3], 1)  # small runs of ties
    y = np.stack([np.tanh(x[b].sum(0)) + rng.normal(scale=0.2 + 0.15 * (b % 4), size=n) for b in range(batch)])
    y[0] = np.round(y[0], 1)  # ties in y too
    res = ace(torch.tensor(x), torch.tensor(y))
    for b in range(batch):
        # with ties the package's result depends on the order of the samples; ours is the
        # package's on the samples sorted lexicographically by (x_1, ..., x_m, y), for any order
        order = np.lexsort([y[b]] + [x[b, j] for j in reversed(range(m))])
        phi_s, theta_s, rsq, outer = _oracle_ace(x[b][:, order], y[b][order])
        phi, theta = np.empty_like(phi_s), np.empty_like(theta_s)
        phi[:, order], theta[order] = phi_s, theta_s
        np.testing.assert_allclose(res.x_transforms[b].numpy(), phi, atol=1e-8, rtol=0)
        np.testing.assert_allclose(res.y_transform[b].numpy(), theta, atol=1e-8, rtol=0)
        assert res.rsq[b].item() == pytest.approx(rsq, abs=1e-10)
        assert res.outer_iterations[b].item() == outer
        expected = abs(np.corrcoef(phi.sum(0), theta)[0, 1])
        assert res.correlation[b].item() == pytest.approx(expected, abs=1e-10)


def test_ace_shared_y_and_batch_independence() -> None:
    rng = np.random.default_rng(5)
    n = 60
    y = rng.normal(size=n)
    x = np.stack([y * w + rng.normal(size=n) for w in (0.0, 0.3, 1.0, 3.0)])
    x[2] = np.maximum(x[2], 0)
    shared = ace(torch.tensor(x), torch.tensor(y))
    per_row = ace(torch.tensor(x), torch.tensor(np.tile(y, (4, 1))))
    torch.testing.assert_close(shared.x_transforms, per_row.x_transforms, atol=1e-12, rtol=0)
    for b in range(4):  # a row's result does not depend on the others converging earlier or later
        alone = ace(torch.tensor(x[b : b + 1]), torch.tensor(y))
        torch.testing.assert_close(alone.y_transform[0], shared.y_transform[b], atol=1e-12, rtol=0)
    corr = shared.correlation
    assert torch.all((corr >= 0) & (corr <= 1))
    assert corr[3] > corr[0]  # the strongly related predictor correlates more than noise


def test_ace_rejects_constant_y_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="constant"):
        ace(torch.randn(2, 20), torch.ones(20))
    with pytest.raises(ValueError, match="y must be"):
        ace(torch.randn(2, 20), torch.randn(21))
    with pytest.raises(ValueError, match="x must be"):
        ace(torch.randn(20), torch.randn(20))


def test_correlation_is_zero_for_constant_rows() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64).expand(2, 3)
    out = correlation(a, b)
    assert out[1].item() == 0.0
    assert out[0].item() == pytest.approx(np.corrcoef(a[0], b[0])[0, 1])


@pytest.mark.parametrize("n_images,side,k", [(60, 3, 1), (60, 3, 2), (12, 4, 2)])
def test_standardized_components_match_sklearn(n_images: int, side: int, k: int) -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n_images + side + k)
    p = side * side
    acts = np.maximum(rng.normal(size=(5, n_images, p)) + rng.normal(size=(5, 1, p)), 0).astype(np.float32)
    acts[1] = 0.0  # dead channel
    acts[2, :, 0] = 0.7  # one constant pixel position
    acts[3, : n_images // 3] = 0.0  # several identical all-zero maps: ties in the component
    comps, constant = standardized_components(torch.from_numpy(acts), k)
    assert constant.tolist() == [False, True, False, False, False]
    assert torch.all(comps[1] == 0)
    for c in (0, 2, 3, 4):
        ref = PCA(n_components=k).fit_transform(StandardScaler().fit_transform(acts[c].astype(np.float64)))
        np.testing.assert_allclose(comps[c].numpy(), ref.T, atol=1e-8, rtol=0)
    tied = comps[3, 0, : n_images // 3]
    assert torch.all(tied == tied[0])  # exactly equal, not just close


def test_standardized_components_validates_n_components() -> None:
    with pytest.raises(ValueError, match="n_components=5"):
        standardized_components(torch.randn(2, 10, 4), 5)
