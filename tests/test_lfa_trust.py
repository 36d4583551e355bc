"""LayerFactorAnalysis diagnostics a researcher relies on: oblique results, cautions, save/load damage.

Each diagnostic is exercised with the input that triggered the problem it fixes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from captum_elfa import CaptumElfaError, LayerFactorAnalysis
from helpers import SmallCNN, layer_matrix, standardise


@pytest.fixture(scope="module")
def x300(digits):
    return digits[0][:300]


def _model(seed: int = 2) -> SmallCNN:
    return SmallCNN(c1=12, c2=16, seed=seed).eval()


def _fit(model, x, layer=None, **kw):
    kw.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LayerFactorAnalysis(model, layer if layer is not None else model.relu2).fit(x, **kw)


# -- oblique rotations through the layer -------------------------------------------------------
@pytest.mark.parametrize("rotation", ["promax", "oblimin"])
def test_oblique_results_account_for_phi(x300, rotation):
    model = _model()
    lfa = _fit(model, x300, n_factors=3, rotation=rotation)
    lam, phi, psi = lfa.loadings_, lfa.phi_, lfa.uniquenesses_
    assert phi.shape == (3, 3)
    torch.testing.assert_close(torch.diagonal(phi), torch.ones(3, dtype=torch.float64))
    assert float((phi - torch.eye(3, dtype=torch.float64)).abs().max()) > 1e-4  # really oblique
    torch.testing.assert_close(lfa.structure_, lam @ phi)
    h2 = torch.einsum("ik,kl,il->i", lam, phi, lam)
    torch.testing.assert_close(lfa.metrics_.communalities, h2)
    torch.testing.assert_close(lfa.metrics_.factor_variance, torch.diagonal(phi @ lam.T @ lam))
    # the model covariance and so the likelihood do not depend on the rotation
    plain = _fit(model, x300, n_factors=3, rotation=None)
    assert lfa.metrics_.loglike == pytest.approx(plain.metrics_.loglike, rel=1e-9)
    torch.testing.assert_close(lam @ phi @ lam.T, plain.loadings_ @ plain.loadings_.T, atol=1e-7, rtol=1e-6)
    # factor scores are the regression scores Phi Lambda^T Sigma^-1 z of the standardised pixels
    a = layer_matrix(model, model.relu2, x300[:5])
    z = (a - lfa.mean_.numpy()) / lfa.std_.numpy()
    sigma = (lam @ phi @ lam.T + torch.diag(psi)).numpy()
    expect = (phi.numpy() @ lam.numpy().T @ np.linalg.solve(sigma, z.T)).T  # [pixels, k]
    got = lfa.factor_scores(x300[:5]).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)
    # sign convention: every factor's pattern loadings sum to a positive number
    assert bool((lam.sum(0) > 0).all())
    rep = lfa.report()
    assert np.asarray(rep["phi"]).shape == (3, 3) and rep["rotation"] == rotation


def test_rotation_kwargs_are_validated(x300):
    model = _model()
    with pytest.raises(CaptumElfaError, match="powr"):
        LayerFactorAnalysis(model, model.relu2).fit(
            x300, n_factors=3, rotation="promax", rotation_kwargs={"powr": 3}, progress=False
        )
    kaiser = _fit(model, x300, n_factors=3, rotation="varimax", rotation_kwargs={"normalize": True})
    raw = _fit(model, x300, n_factors=3, rotation="varimax")
    assert kaiser.rotation_kwargs_["normalize"] is True
    # both are rotations of the same solution
    torch.testing.assert_close(kaiser.loadings_ @ kaiser.loadings_.T, raw.loadings_ @ raw.loadings_.T)


# -- diagnostics -------------------------------------------------------------------------------
def _real_boundary(lfa) -> bool:
    """Each Heywood channel sits on its lower bound at a KKT point: raising its uniqueness lowers
    the likelihood (dF/d log psi >= 0 for F = -2 loglike), checked here by autograd."""
    live = lfa.live_channels_
    r = lfa.correlation_
    w = (lfa.loadings_[live] @ torch.linalg.cholesky(lfa.phi_)).clone()
    x = torch.log(lfa.uniquenesses_[live]).clone().requires_grad_(True)
    sigma = w @ w.T + torch.diag(torch.exp(x))
    f = torch.linalg.slogdet(sigma)[1] + torch.trace(torch.linalg.solve(sigma, r))
    (g,) = torch.autograd.grad(f, x)
    pos = {int(c): i for i, c in enumerate(live.tolist())}
    return all(float(lfa.uniquenesses_[j]) < 1e-9 and float(g[pos[int(j)]]) >= -1e-6 for j in lfa.heywood_channels_)


def test_default_run_warns_only_what_it_can_justify(x300):
    """A default fit on enough images: converged, images counted, and the only caution possible is
    a Heywood case that is verified here to be a real boundary optimum."""
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lfa = LayerFactorAnalysis(model, model.relu2).fit(x300, progress=False)
    assert lfa.converged_ and lfa.n_images_ == 300 and lfa.n_samples_ == 300 * 64
    kinds = [c["kind"] for c in lfa.report()["cautions"]]
    assert set(kinds) <= {"heywood"}, kinds
    assert len(caught) == len(kinds)
    assert _real_boundary(lfa)
    crit = lfa.n_factors_criteria_
    assert crit["kaiser"] == lfa.n_factors_
    assert "images" in lfa.summary() and "criteria" in lfa.summary()


def test_two_images_are_flagged(x300):
    model = _model()
    with pytest.warns(UserWarning, match="2 images"):
        lfa = LayerFactorAnalysis(model, model.relu2).fit(x300[:2], n_factors=2, progress=False)
    assert lfa.n_images_ == 2
    assert "too_few_images" in [c["kind"] for c in lfa.report()["cautions"]]


class _Duplicated(nn.Module):
    """A SmallCNN whose layer output gets extra channels: a copy of channel 3 and ch1 + ch2."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()
        self.out = nn.Identity()

    def forward(self, x):
        h = self.net.relu2(self.net.conv2(self.net.relu1(self.net.conv1(x))))
        h = torch.cat([h, h[:, 3:4], h[:, 1:2] + h[:, 2:3]], 1)
        return self.out(h).mean((2, 3))


def test_collinear_channels_left_out_not_garbage(x300):
    model = _Duplicated().eval()
    with pytest.warns(UserWarning, match="linear combinations"):
        lfa = LayerFactorAnalysis(model, model.out).fit(x300, n_factors=3, progress=False)
    # the later channel of each dependent set is the one left out: the copy and the sum
    assert lfa.collinear_channels_.tolist() == [16, 17]
    a = lfa.adequacy_
    assert 0.0 < a.kmo < 1.0 and np.isfinite(a.bartlett_chi2)
    assert lfa.loadings_[lfa.collinear_channels_].abs().sum() == 0


class _Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net, self.scale, self.out = _model(), scale, nn.Identity()

    def forward(self, x):
        h = self.net.relu2(self.net.conv2(self.net.relu1(self.net.conv1(x)))).double() * self.scale
        return self.out(h).mean((2, 3))


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_scale_of_the_layer_changes_nothing_but_the_scale(x300, scale):
    ref_model, model = _Scaled(1.0).eval(), _Scaled(scale).eval()
    ref = _fit(ref_model, x300, ref_model.out, n_factors=3, rotation="varimax", batch_size=300)
    got = _fit(model, x300, model.out, n_factors=3, rotation="varimax", batch_size=300)
    torch.testing.assert_close(got.correlation_, ref.correlation_, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.loadings_, ref.loadings_, rtol=1e-6, atol=1e-8)
    assert got.dead_channels_.tolist() == ref.dead_channels_.tolist()
    torch.testing.assert_close(got.std_, ref.std_ * scale, rtol=1e-9, atol=0)


def test_n_factors_above_the_ledermann_bound_is_an_error(x300):
    model = _model()
    # 16 channels: dof = ((16 - k)^2 - (16 + k)) / 2 >= 0 holds up to k = 10
    with pytest.raises(CaptumElfaError, match="Ledermann"):
        LayerFactorAnalysis(model, model.relu2).fit(x300, n_factors=11, progress=False)
    _fit(model, x300, n_factors=10)


def test_not_converged_warns_with_convergence_warning(x300, monkeypatch):
    import captum_elfa.stats.pipeline as pipeline

    real = pipeline.factor_solution

    def unconverged(*a, **k):
        sol = real(*a, **k)
        sol.ml_converged = False
        return sol

    monkeypatch.setattr(pipeline, "factor_solution", unconverged)
    model = _model()
    with pytest.warns(ConvergenceWarning, match="projected gradient"):
        lfa = LayerFactorAnalysis(model, model.relu2).fit(x300, n_factors=3, progress=False)
    assert lfa.converged_ is False and lfa.report()["converged"] is False


def test_stability_on_digits(x300):
    model = _model()
    lfa = _fit(model, x300, n_factors=3, stability=True)
    st = lfa.stability_
    assert st is not None and st.congruence.shape == (3,)
    assert st.n_images_a + st.n_images_b == 300 and abs(st.n_images_a - st.n_images_b) <= 1
    assert "stability" in lfa.summary() and lfa.report()["stability"] is not None
    plain = _fit(model, x300, n_factors=3)
    torch.testing.assert_close(lfa.loadings_, plain.loadings_, rtol=1e-6, atol=1e-8)


# -- save / load that refuses damage -----------------------------------------------------------
@pytest.fixture(scope="module")
def saved(x300, tmp_path_factory):
    model = _model()
    lfa = _fit(model, x300, n_factors=3, rotation="oblimin", stability=True)
    path = tmp_path_factory.mktemp("lfa") / "lfa.pt"
    lfa.save(path)
    return model, lfa, path


def test_oblique_save_load_roundtrip(saved, x300):
    model, lfa, path = saved
    back = LayerFactorAnalysis.load(path, model, model.relu2)
    torch.testing.assert_close(back.phi_, lfa.phi_)
    torch.testing.assert_close(back.attribute(x300[:4]), lfa.attribute(x300[:4]))
    assert back.report() == lfa.report()


def _tamper(path, tmp_path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    out = tmp_path / "tampered.pt"
    torch.save(state, out)
    return out


def _set(key, value):
    def edit(state):
        state["result"][key] = value(state["result"][key]) if callable(value) else value

    return edit


def _nan_first(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("uniquenesses", _nan_first), "uniquenesses.*NaN"),
        (_set("uniquenesses", lambda t: -t), r"\[0, 1\]"),
        (_set("loadings", lambda t: t[:, :2].clone()), "loadings.*shape"),
        (_set("phi", lambda t: t * 2), "phi"),
        (_set("n_factors", 7), "shape|n_factors"),
        (lambda s: s["result"].pop("stability"), "missing fields"),
        (lambda s: s["result"].__setitem__("extra", 1), "unexpected fields"),
        (lambda s: s.__setitem__("version", 1), "version 1"),
        (lambda s: s.__setitem__("version", 4), "version 4"),
        (lambda s: s.pop("layout"), "keys"),
        (lambda s: s["layout"].__setitem__("drop_tokens", -1), "layout.*drop_tokens"),
        (lambda s: s["layout"].__setitem__("token_grid", [0, 3]), "layout.*token_grid"),
        (lambda s: s["layout"].pop("channel_dim"), "layout.*keys"),
        (lambda s: s.__setitem__("activation_shape", [16, -1, 8]), "activation_shape"),
        (lambda s: s.__setitem__("surprise", 0), "keys"),
        (_set("live_channels", lambda t: t[:-1].clone()), "partition|shape"),
    ],
)
def test_tampered_files_are_refused(saved, tmp_path, edit, match):
    model, _, path = saved
    bad = _tamper(path, tmp_path, edit)
    with pytest.raises(CaptumElfaError, match=match):
        LayerFactorAnalysis.load(bad, model, model.relu2)


def test_v3_file_restores_its_layout_and_refuses_another(x300, tmp_path):
    """Format 3 saves the layout: load restores it; a conflicting layout argument is refused."""
    model = _model()
    lfa = LayerFactorAnalysis(model, model.relu2, channel_dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lfa.fit(x300, n_factors=3, progress=False)
    path = tmp_path / "v3.pt"
    lfa.save(path)
    state = torch.load(path, weights_only=True)
    assert state["version"] == 3 and state["layout"]["channel_dim"] == 1
    assert state["layout"]["call_index"] == lfa.layout.call_index
    back = LayerFactorAnalysis.load(path, model, model.relu2)
    assert back.layout == lfa.layout and back.layout.channel_dim == 1
    torch.testing.assert_close(back.attribute(x300[:4]), lfa.attribute(x300[:4]))
    same = LayerFactorAnalysis.load(path, model, model.relu2, channel_dim=1)  # equal to the saved one: fine
    assert same.layout == lfa.layout
    with pytest.raises(CaptumElfaError, match="channel_dim=1 but load was given channel_dim=-1"):
        LayerFactorAnalysis.load(path, model, model.relu2, channel_dim=-1)
    with pytest.raises(CaptumElfaError, match="drop_tokens=0 but load was given drop_tokens=2"):
        LayerFactorAnalysis.load(path, model, model.relu2, drop_tokens=2)


def test_v2_file_loads_with_the_layout_passed(saved, x300, tmp_path):
    """A format-2 file (written before the layout was saved) still loads, with the arguments' layout."""
    model, lfa, path = saved
    state = torch.load(path, weights_only=True)
    state.pop("layout")
    state["version"] = 2
    v2 = tmp_path / "v2.pt"
    torch.save(state, v2)
    back = LayerFactorAnalysis.load(v2, model, model.relu2)
    assert back.layout == LayerFactorAnalysis(model, model.relu2).layout  # the constructor's defaults
    assert back.report() == lfa.report()
    torch.testing.assert_close(back.attribute(x300[:4]), lfa.attribute(x300[:4]))
    given = LayerFactorAnalysis.load(v2, model, model.relu2, channel_dim=1)
    assert given.layout.channel_dim == 1
    state["layout"] = {"channel_dim": 1, "token_grid": None, "drop_tokens": 0, "call_index": -1}
    torch.save(state, v2)  # a version-2 file with a layout is not a file this package wrote
    with pytest.raises(CaptumElfaError, match="keys"):
        LayerFactorAnalysis.load(v2, model, model.relu2)


def test_fitted_attributes_are_views_of_one_state(saved):
    """Every public fitted attribute is the field of the one fitted state (nothing copied by hand)."""
    from dataclasses import fields

    from captum_elfa.stats.pipeline import ELFAResult

    _, lfa, _ = saved
    for f in fields(ELFAResult):
        assert getattr(lfa, f.name + "_") is getattr(lfa.fitted_.result, f.name)
    assert lfa.result_ is lfa.fitted_.result and lfa.layer_name_ == lfa.fitted_.layer_name == "relu2"
    assert lfa.activation_shape_ == lfa.fitted_.activation_shape and lfa.fitted_.layout is lfa.layout
    fresh = LayerFactorAnalysis(_model(), _model().relu2)
    assert not hasattr(fresh, "loadings_") and not hasattr(fresh, "fitted_")


def test_loading_onto_another_layer_says_so(saved):
    model, _, path = saved
    with pytest.raises(CaptumElfaError, match="'relu2'.*'relu1'"):
        LayerFactorAnalysis.load(path, model, model.relu1)
    with pytest.raises(CaptumElfaError, match="16 channels.*12"):
        LayerFactorAnalysis.load(path, lambda x: model(x), model.conv1)


def test_standardised_data_oracle_still_matches_sklearn(x300):
    """Orthogonal case: the factor scores are scikit-learn's transform of the standardised pixels."""
    from sklearn.decomposition import FactorAnalysis

    model = _model()
    lfa = _fit(model, x300, n_factors=3, rotation=None)
    z = standardise(layer_matrix(model, model.relu2, x300))
    fa = FactorAnalysis(n_components=3)
    fa.components_ = lfa.loadings_.numpy().T.copy()
    fa.noise_variance_ = lfa.uniquenesses_.numpy().copy()
    fa.mean_ = np.zeros(16)
    fa.n_features_in_ = 16
    got = lfa.factor_scores(x300[:3]).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np.testing.assert_allclose(got, fa.transform(z[: 3 * 64]), rtol=1e-6, atol=1e-6)
