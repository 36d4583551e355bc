"""ELFA numbers against the reference implementations, on activations of CNNs run on real digits.

Oracles: factor_analyzer (KMO, Bartlett), scikit-learn FactorAnalysis (ML model, rotation,
transform) and the ELFA reference package `elfa` (criteria, layerfa, attr_maps).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from captum_elfa import LayerFactorAnalysis
from captum_elfa.stats.nfactors import ledermann_bound, variance_fraction
from helpers import SmallCNN, layer_matrix, require, standardise

_fa = require("factor_analyzer.factor_analyzer")
calculate_bartlett_sphericity, calculate_kmo = _fa.calculate_bartlett_sphericity, _fa.calculate_kmo
FactorAnalysis = require("sklearn.decomposition").FactorAnalysis
elfa_criteria = require("elfa.criteria")
attr_maps = require("elfa.attr_maps")
layerfa = require("elfa.layerfa")


@pytest.fixture(scope="module")
def fitted(digits):
    """A CNN with 3 dead channels in conv2 (20 channels), fitted on 200 digits (12,800 samples)."""
    x = digits[0][:200]
    model = SmallCNN(c1=12, c2=20, n_dead=3, seed=1).eval()
    lfa = LayerFactorAnalysis(model, model.relu2).fit(x, n_factors=2, rotation=None, progress=False, batch_size=37)
    a = layer_matrix(model, model.relu2, x)
    live = a.std(0) > 0
    return model, x, lfa, standardise(a[:, live]), live


def _sk_model(lfa, live):
    """A scikit-learn FactorAnalysis holding our loadings, for the reference's metric functions."""
    fa = FactorAnalysis(n_components=lfa.n_factors_)
    w = lfa.loadings_[torch.from_numpy(live)].numpy()
    fa.components_ = w.T.copy()
    fa.noise_variance_ = lfa.uniquenesses_[torch.from_numpy(live)].numpy().copy()
    fa.mean_ = np.zeros(w.shape[0])
    fa.n_features_in_ = w.shape[0]
    return fa


def test_dead_channels_found(fitted):
    _, _, lfa, _, live = fitted
    assert lfa.dead_channels_.tolist() == [0, 1, 2]
    assert np.array_equal(~live, np.isin(np.arange(20), [0, 1, 2]))
    assert torch.all(lfa.loadings_[:3] == 0)
    rep = lfa.report()
    flat = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in rep["metrics"].values()])
    assert np.isfinite(flat).all()
    assert np.isfinite(np.asarray(rep["adequacy"]["kmo_per_channel"])).all()


def test_adequacy_matches_factor_analyzer(fitted):
    _, _, lfa, z, live = fitted
    kmo_per, kmo_all = calculate_kmo(z)
    chi2, p = calculate_bartlett_sphericity(z)
    assert lfa.adequacy_.kmo == pytest.approx(kmo_all, rel=1e-8)
    np.testing.assert_allclose(lfa.adequacy_.kmo_per_channel.numpy()[live], kmo_per, rtol=1e-7)
    assert lfa.adequacy_.bartlett_chi2 == pytest.approx(chi2, rel=1e-7)
    assert lfa.adequacy_.bartlett_p == pytest.approx(p, abs=1e-12)
    assert lfa.adequacy_.bartlett_dof == live.sum() * (live.sum() - 1) // 2


def test_factor_counts_match_elfa_criteria(fitted, digits):
    model, x, lfa, z, _ = fitted
    eig_ref, k_ref = elfa_criteria.eigenvalues_criterion(z)
    n = z.shape[0]  # the reference takes eigenvalues of the unbiased covariance, R * n / (n - 1)
    np.testing.assert_allclose(lfa.eigenvalues_.numpy() * n / (n - 1), eig_ref, rtol=1e-8, atol=1e-10)
    fit = lambda spec: LayerFactorAnalysis(model, model.relu2).fit(x, n_factors=spec, progress=False).n_factors_
    bound = ledermann_bound(int(lfa.live_channels_.numel()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fit("kaiser") == k_ref == lfa.n_factors_criteria_["kaiser"]
        assert fit("scree") == elfa_criteria.standard_error_scree_criterion(z) == lfa.n_factors_criteria_["scree"]
        for m in (0.5, 0.8, 0.95):
            ours = variance_fraction(lfa.eigenvalues_, m)
            # the reference counts one eigenvalue fewer than the smallest k reaching m (when k > 1)
            assert max(ours - 1, 1) == elfa_criteria.variance_nfactors_criterion(z, m)
            ev = np.sort(eig_ref)[::-1]
            assert ev[:ours].sum() / ev.sum() >= m - 1e-12 and (ours == 1 or ev[: ours - 1].sum() / ev.sum() < m)
            # the fit takes that count, clipped to the identification (Ledermann) bound
            assert fit(m) == min(ours, bound)


def test_ml_fit_reaches_sklearn_optimum(fitted):
    _, _, lfa, z, live = fitted
    fa = FactorAnalysis(lfa.n_factors_, svd_method="lapack", tol=1e-9, max_iter=3000).fit(z)
    # the multi-start fit finds a better optimum than scikit-learn's EM here (-22.4603 against
    # -22.4990 per sample): at least as likely, and converged by the KKT test
    assert lfa.metrics_.loglike >= fa.score(z) - 1e-9 * abs(fa.score(z))
    assert lfa.converged_


@pytest.mark.parametrize("rotation", ["varimax", "quartimax"])
def test_rotation_matches_converged_rotator(digits, rotation):
    """scikit-learn's rotation stops after 100 iterations at tol 1e-6, so it is close (1e-3) but
    not an oracle; factor_analyzer's Rotator run to a tight tolerance on our unrotated solution is."""
    from factor_analyzer.rotator import Rotator

    x = digits[0][:150]
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    lfa = LayerFactorAnalysis(model, model.relu2).fit(x, n_factors=3, rotation=rotation, progress=False)
    plain = LayerFactorAnalysis(model, model.relu2).fit(x, n_factors=3, rotation=None, progress=False)
    z = standardise(layer_matrix(model, model.relu2, x))
    fa = FactorAnalysis(3, svd_method="lapack", tol=1e-10, max_iter=3000, rotation=rotation).fit(z)
    ours = lfa.loadings_.numpy()
    sk = fa.components_.T
    assert (
        min(
            np.abs(ours - sk[:, list(p)] * np.sign((sk[:, list(p)] * ours).sum(0))).max()
            for p in itertools.permutations(range(3))
        )
        < 1e-3
    )
    ref = Rotator(method=rotation, normalize=False, max_iter=100000, tol=1e-14).fit_transform(plain.loadings_.numpy())
    best = min(
        np.abs(ours - ref[:, list(p)] * np.sign((ref[:, list(p)] * ours).sum(0))).max()
        for p in itertools.permutations(range(3))
    )
    assert best < 1e-5
    # documented convention: every factor's loadings sum to a positive number, variance descending
    assert (ours.sum(0) > 0).all()
    fv = (ours**2).sum(0)
    assert (np.diff(fv) <= 1e-12).all()


def test_heywood_case_at_least_as_good_as_sklearn(digits):
    """When a uniqueness goes to 0, scikit-learn's EM creeps; our optimum is at least as likely."""
    x = digits[0][:200]
    model = SmallCNN(c1=12, c2=14, seed=3).eval()
    with pytest.warns(UserWarning, match="Heywood case: at the likelihood optimum"):
        lfa = LayerFactorAnalysis(model, model.relu2).fit(x, n_factors=2, rotation=None, progress=False)
    assert len(lfa.heywood_channels_) >= 1 and lfa.converged_
    assert "heywood" in [c["kind"] for c in lfa.report()["cautions"]]
    z = standardise(layer_matrix(model, model.relu2, x))
    fa = FactorAnalysis(2, svd_method="lapack", tol=1e-9, max_iter=500).fit(z)
    assert lfa.metrics_.loglike >= fa.score(z) - 1e-9


def test_metrics_match_elfa_layerfa(fitted):
    _, _, lfa, z, live = fitted
    fa = _sk_model(lfa, live)
    wt = fa.components_
    latent = fa.transform(z)
    _, _, d1, dg = layerfa.get_factor_residuals_cov(z, wt, latent)
    residuals, res = layerfa.get_model_residuals(z, fa)
    gamma2 = layerfa.get_correlation_coef(wt, z)
    r2 = layerfa.get_determination_coef(z, fa)
    var, prop, cum = layerfa.get_factors_variance(wt)
    tve = layerfa.get_totvar_explained(wt, z)
    m = lfa.metrics_
    assert m.d1 == pytest.approx(d1, rel=1e-6)
    assert m.d_greater == pytest.approx(dg, rel=1e-6)
    assert m.res == pytest.approx(res, rel=1e-6)
    assert m.res_max == pytest.approx(residuals.max(), abs=1e-8)
    assert m.res_min == pytest.approx(residuals.min(), abs=1e-8)
    np.testing.assert_allclose(m.gamma2.numpy()[live], gamma2, rtol=1e-8)
    assert m.gamma2_p20 == pytest.approx(np.percentile(gamma2, 20), rel=1e-8)
    assert m.r2 == pytest.approx(r2, rel=1e-8)
    np.testing.assert_allclose(m.factor_variance.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(m.proportional_variance.numpy(), prop, rtol=1e-10)
    np.testing.assert_allclose(m.cumulative_variance.numpy(), cum, rtol=1e-10)
    assert m.total_variance_explained == pytest.approx(tve, rel=1e-10)
    np.testing.assert_allclose(m.communalities.numpy()[live], layerfa.get_communalities(wt), rtol=1e-10)


def test_factor_scores_match_sklearn_transform(fitted):
    model, x, lfa, z, live = fitted
    fa = _sk_model(lfa, live)
    latent = fa.transform(z)  # (N*H*W, k), rows in (n, h, w) order
    f = lfa.factor_scores(x)  # [N, k, H, W]
    ours = f.permute(0, 2, 3, 1).reshape(-1, lfa.n_factors_).numpy()
    np.testing.assert_allclose(ours, latent, atol=1e-8)


@pytest.mark.parametrize("norm", ["max_min", "relu", "max"])
def test_efam_matches_elfa_attr_maps(fitted, norm):
    model, x, lfa, z, live = fitted
    fa = _sk_model(lfa, live)
    ref = attr_maps.efam_factors(fa.components_, fa.transform(z), (8, 8), norm_method=norm)
    ours = lfa.attribute(x, normalize=norm)
    assert ours.shape == (200, 1, 8, 8)
    np.testing.assert_allclose(ours[:, 0].numpy(), ref, atol=1e-5)


def test_per_factor_maps(fitted):
    model, x, lfa, z, live = fitted
    raw = lfa.attribute(x[:5], factors="all", normalize=None)
    assert raw.shape == (5, lfa.n_factors_, 8, 8)
    torch.testing.assert_close(raw, lfa.factor_scores(x[:5]).float())
    two = lfa.attribute(x[:5], factors=[1, 0])
    assert two.shape == (5, 2, 8, 8)
    assert float(two.min()) == 0.0 and float(two.max()) == 1.0
