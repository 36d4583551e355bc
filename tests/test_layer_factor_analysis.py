"""LayerFactorAnalysis: streaming, input forms, shapes, persistence, bad input, model hygiene."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from factor_analyzer.factor_analyzer import calculate_kmo
from sklearn.decomposition import FactorAnalysis
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_elfa import CaptumElfaError, LayerFactorAnalysis, NotFittedError
from captum_elfa.stats.moments import RunningMoments
from helpers import SmallCNN, assert_same_state, layer_matrix, model_state, standardise


@pytest.fixture(scope="module")
def x200(digits):
    return digits[0][:200]


@pytest.fixture(scope="module")
def lfa_fitted(x200):
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    return LayerFactorAnalysis(model, model.relu2).fit(x200, n_factors=3, progress=False)


def test_is_a_captum_layer_attribution(lfa_fitted, x200):
    assert isinstance(lfa_fitted, LayerAttribution)
    efam = lfa_fitted.attribute(x200[:4])
    up = LayerAttribution.interpolate(efam, (32, 32))
    assert up.shape == (4, 1, 32, 32)
    assert efam.dtype == torch.float32
    assert "n_factors=3" in repr(lfa_fitted) and "KMO" in lfa_fitted.summary()


def test_same_result_whatever_the_batching(x200):
    """Tensor chunks, a DataLoader of (x, y) pairs and a list of uneven batches agree."""
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    y = torch.zeros(200, dtype=torch.long)
    a = LayerFactorAnalysis(model, model.relu2).fit(x200, n_factors=3, progress=False, batch_size=200)
    b = LayerFactorAnalysis(model, model.relu2).fit(
        DataLoader(TensorDataset(x200, y), batch_size=23), n_factors=3, progress=False
    )
    c = LayerFactorAnalysis(model, model.relu2).fit([x200[:1], x200[1:120], x200[120:]], n_factors=3, progress=False)
    # float32 convolutions may round differently with another batch size: ~1e-7 relative
    for o in (b, c):
        torch.testing.assert_close(o.mean_, a.mean_, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(o.correlation_, a.correlation_, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(o.loadings_, a.loadings_, rtol=1e-4, atol=1e-5)
        assert o.n_samples_ == a.n_samples_ == 200 * 64


def test_streamed_moments_equal_numpy(x200):
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    a = layer_matrix(model, model.relu2, x200)
    acc = RunningMoments()
    acts = torch.from_numpy(a).float()
    for i, chunk in enumerate(torch.split(acts, 999)):
        acc.update(chunk, i)
    np.testing.assert_allclose(acc.moments.mean.numpy(), a.mean(0), rtol=1e-6)
    np.testing.assert_allclose(acc.moments.covariance.numpy(), np.cov(a, rowvar=False, ddof=0), rtol=1e-5, atol=1e-9)


def test_linear_layer_output(digits):
    """An (N, C) output is the case H = W = 1."""
    x = digits[0].flatten(1)  # 1797 x 64
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)).eval()
    lfa = LayerFactorAnalysis(model, model[1]).fit(x, n_factors=3, progress=False)
    assert lfa.n_samples_ == 1797
    assert lfa.attribute(x[:5]).shape == (5, 1, 1, 1)
    assert lfa.factor_scores(x[:5]).shape == (5, 3, 1, 1)
    z = standardise(layer_matrix(model, model[1], x))
    assert lfa.adequacy_.kmo == pytest.approx(calculate_kmo(z)[1], rel=1e-8)


@pytest.mark.slow
def test_layer_of_512_channels(digits):
    """A 512-channel layer: KMO equals factor_analyzer, Bartlett and R2 stay finite through
    log-determinants (the reference's determinant underflows), and scikit-learn's own EM step
    started at our solution finds nothing better."""
    x = digits[0][:100]  # 6,400 samples
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.Tanh(), nn.Conv2d(24, 512, 1), nn.Tanh()).eval()
    with torch.no_grad():
        model[2].weight.add_(0.05 * torch.randn_like(model[2].weight))
    lfa = LayerFactorAnalysis(model, model[3]).fit(x, n_factors=10, progress=False)
    z = standardise(layer_matrix(model, model[3], x))
    assert z.shape == (6400, 512)
    kmo_per, kmo_all = calculate_kmo(z)
    assert lfa.adequacy_.kmo == pytest.approx(kmo_all, rel=1e-6)
    np.testing.assert_allclose(lfa.adequacy_.kmo_per_channel.numpy(), kmo_per, rtol=1e-5)
    r = np.corrcoef(z, rowvar=False)
    sign, logdet = np.linalg.slogdet(r)
    assert np.linalg.det(r) == 0.0 or not np.isfinite(np.log(np.linalg.det(r)))  # why log-dets are needed
    chi2 = -(6400 - 1 - (2 * 512 + 5) / 6) * logdet
    assert lfa.adequacy_.bartlett_chi2 == pytest.approx(chi2, rel=1e-6)
    w = lfa.loadings_.numpy()
    psi = lfa.uniquenesses_.numpy()
    v = w @ w.T + np.diag(psi)
    r2 = 1 - np.exp((np.log(psi).sum() - np.linalg.slogdet(v)[1]) / 512)
    assert np.isfinite(lfa.metrics_.r2) and lfa.metrics_.r2 == pytest.approx(r2, rel=1e-8)
    fa = FactorAnalysis(10, svd_method="lapack", noise_variance_init=psi, max_iter=3, tol=0.0).fit(z)
    assert fa.loglike_[-1] / 6400 <= lfa.metrics_.loglike + 1e-7
    assert fa.loglike_[0] / 6400 == pytest.approx(lfa.metrics_.loglike, rel=1e-8)


@pytest.mark.parametrize("spec", ["kaiser", "scree", "parallel", 0.6, 2])
def test_n_factors_specs(lfa_fitted, x200, spec):
    model = lfa_fitted.forward_func
    lfa = LayerFactorAnalysis(model, model.relu2).fit(x200, n_factors=spec, progress=False)
    assert 1 <= lfa.n_factors_ <= 15
    assert lfa.loadings_.shape == (16, lfa.n_factors_)
    assert lfa.eigenvalues_.shape == (16,)


def test_parallel_analysis_on_known_structure():
    """Three strong factors in 20 noisy variables: parallel analysis finds 3, with a fixed seed
    always the same threshold curve; pure noise gives 1 (the minimum)."""
    from captum_elfa.stats.nfactors import parallel_analysis

    rng = np.random.default_rng(0)
    n = 3000
    lo = rng.normal(size=(20, 3)) * 0.8
    data = rng.normal(size=(n, 3)) @ lo.T + rng.normal(size=(n, 20))
    ev = torch.from_numpy(np.linalg.eigvalsh(np.corrcoef(data, rowvar=False))[::-1].copy())
    k, thr = parallel_analysis(ev, n, random_state=1)
    k2, thr2 = parallel_analysis(ev, n, random_state=1)
    assert k == 3 and torch.equal(thr, thr2)
    noise = rng.normal(size=(n, 20))
    ev0 = torch.from_numpy(np.linalg.eigvalsh(np.corrcoef(noise, rowvar=False))[::-1].copy())
    assert parallel_analysis(ev0, n)[0] == 0


def test_save_load_roundtrip(lfa_fitted, x200, tmp_path):
    p = tmp_path / "lfa.pt"
    lfa_fitted.save(p)
    loaded = LayerFactorAnalysis.load(p, lfa_fitted.forward_func, lfa_fitted.layer)
    torch.testing.assert_close(loaded.attribute(x200[:8]), lfa_fitted.attribute(x200[:8]))
    assert loaded.report() == lfa_fitted.report()


def test_load_rejects_foreign_truncated_newer_and_pickles(lfa_fitted, tmp_path):
    model, layer = lfa_fitted.forward_func, lfa_fitted.layer
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CaptumElfaError, match="not a captum_elfa"):
        LayerFactorAnalysis.load(foreign, model, layer)
    good = tmp_path / "good.pt"
    lfa_fitted.save(good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CaptumElfaError, match="not a readable"):
        LayerFactorAnalysis.load(trunc, model, layer)
    newer = tmp_path / "newer.pt"
    state = torch.load(good, weights_only=True)
    state["version"] = 99
    torch.save(state, newer)
    with pytest.raises(CaptumElfaError, match="version 99"):
        LayerFactorAnalysis.load(newer, model, layer)

    evil = tmp_path / "evil.pt"
    torch.save({"format": "captum_elfa.LayerFactorAnalysis", "payload": _Boom()}, evil)
    _Boom.called = False
    with pytest.raises(CaptumElfaError):
        LayerFactorAnalysis.load(evil, model, layer)
    assert _Boom.called is False


class _Boom:
    called = False

    def __reduce__(self):
        return (_Boom._explode, ())

    @staticmethod
    def _explode():  # pragma: no cover - must never run
        _Boom.called = True
        return None


# -- bad input ---------------------------------------------------------------------------------
def _fresh(seed=2):
    return SmallCNN(c1=12, c2=16, seed=seed).eval()


def test_nan_activations_name_layer_and_batch(x200):
    model = _fresh()
    x = x200.clone()
    x[70] = float("nan")
    with pytest.raises(CaptumElfaError, match=r"relu2.*batch 2"):
        LayerFactorAnalysis(model, model.relu2).fit(x, progress=False, batch_size=32)


@pytest.mark.parametrize(
    "inputs, match",
    [
        (torch.zeros(0, 1, 8, 8), "empty"),
        ([], "no batch"),
        (DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8)), batch_size=4), "no batch"),
        ("images/", "must be a Tensor"),
    ],
)
def test_empty_or_wrong_inputs(inputs, match):
    model = _fresh()
    with pytest.raises(CaptumElfaError, match=match):
        LayerFactorAnalysis(model, model.relu2).fit(inputs, progress=False)


def test_layer_not_in_model_or_never_called(x200):
    model = _fresh()
    with pytest.raises(CaptumElfaError, match="not a submodule"):
        LayerFactorAnalysis(model, nn.ReLU()).fit(x200, progress=False)
    model.unused = nn.Conv2d(1, 3, 1)
    with pytest.raises(CaptumElfaError, match="never called"):
        LayerFactorAnalysis(model, model.unused).fit(x200, progress=False)


@pytest.mark.parametrize("bad", [0, -1, 16, 40, "elbow", 1.5, 0.0, True, None])
def test_bad_n_factors(x200, bad):
    model = _fresh()
    with pytest.raises(CaptumElfaError, match=r"n_factors"):
        LayerFactorAnalysis(model, model.relu2).fit(x200, n_factors=bad, progress=False)


def test_bad_rotation_and_normalize(lfa_fitted, x200):
    model = _fresh()
    with pytest.raises(CaptumElfaError, match=r"rotation='promaxx'.*varimax"):
        LayerFactorAnalysis(model, model.relu2).fit(x200, rotation="promaxx", progress=False)
    with pytest.raises(CaptumElfaError, match=r"normalize='minmax'.*max_min"):
        lfa_fitted.attribute(x200[:2], normalize="minmax")
    with pytest.raises(CaptumElfaError, match="factor index 7"):
        lfa_fitted.attribute(x200[:2], factors=[7])


def test_before_fit():
    model = _fresh()
    lfa = LayerFactorAnalysis(model, model.relu2)
    for call in (lambda: lfa.attribute(torch.zeros(1, 1, 8, 8)), lambda: lfa.save("x.pt"), lfa.report):
        with pytest.raises(NotFittedError, match="fit"):
            call()
    assert "not fitted" in repr(lfa)


def test_fewer_samples_than_channels():
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh()).eval()
    with pytest.raises(CaptumElfaError, match=r"20 samples .* 32 live channels"):
        LayerFactorAnalysis(model, model[1]).fit(torch.randn(20, 4), progress=False)


def test_all_channels_dead(x200):
    model = SmallCNN(c1=12, c2=16, n_dead=16).eval()
    with pytest.raises(CaptumElfaError, match="all 16 channels"):
        LayerFactorAnalysis(model, model.relu2).fit(x200, progress=False)


def test_model_restored_when_a_batch_raises(x200):
    model = _fresh()
    model.train()
    model.conv1.weight.requires_grad_(False)
    before = model_state(model)

    def batches():
        yield x200[:50]
        yield x200[50:100]
        raise RuntimeError("disk unplugged")

    lfa = LayerFactorAnalysis(model, model.relu2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(RuntimeError, match="disk unplugged"):
            lfa.fit(batches(), progress=False)
    assert_same_state(before, model_state(model))
    assert not hasattr(lfa, "loadings_")  # nothing half-fitted


def test_model_unchanged_after_fit_and_attribute(x200):
    model = _fresh()
    before = model_state(model)
    lfa = LayerFactorAnalysis(model, model.relu2).fit(x200, progress=False)
    lfa.attribute(x200[:3])
    assert_same_state(before, model_state(model))


def test_train_mode_warns_and_is_restored(x200):
    model = _fresh().train()
    with pytest.warns(UserWarning, match="training mode"):
        LayerFactorAnalysis(model, model.relu2).fit(x200, progress=False)
    assert model.training and all(m.training for m in model.modules())


def test_inplace_relu_sees_the_layer_output(x200):
    """Hooking a conv followed by ReLU(inplace=True): statistics are of the conv output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(10, 4, 3)).eval()
    lfa = LayerFactorAnalysis(model, model[0]).fit(x200, n_factors=2, progress=False)
    with torch.no_grad():
        conv_out = model[0](x200)
    assert float(lfa.mean_.min()) < 0  # a ReLU'd tensor would have no negative mean
    torch.testing.assert_close(lfa.mean_, conv_out.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-8)


def test_shared_module_called_twice(x200):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 6, 3)
            self.conv2 = nn.Conv2d(6, 6, 3)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.conv2(self.act(self.conv1(x))))

    model = Twice().eval()
    seen = []
    h = model.act.register_forward_hook(lambda m, i, o: seen.append(o.detach().double()))
    with torch.no_grad():
        model(x200)
    h.remove()
    assert len(seen) == 2
    for call_index, ref in ((-1, seen[1]), (1, seen[1]), (0, seen[0]), (-2, seen[0])):
        lfa = LayerFactorAnalysis(model, model.act, call_index=call_index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lfa.fit(x200, n_factors=1, progress=False, batch_size=64)
        assert lfa.activation_shape_ == tuple(ref.shape[1:])
        torch.testing.assert_close(lfa.mean_, ref.mean((0, 2, 3)), rtol=1e-6, atol=1e-8)
    # by default a module called several times is refused, naming the option and the calls
    with pytest.raises(CaptumElfaError, match=r"called 2 times per forward pass.*call_index=0\.\.1"):
        LayerFactorAnalysis(model, model.act).fit(x200, n_factors=1, progress=False)
    with pytest.raises(CaptumElfaError, match="call_index=2 is not valid.*called 2 time"):
        LayerFactorAnalysis(model, model.act, call_index=2).fit(x200, progress=False)


def test_progress_bar_goes_to_stderr_not_stdout(x200, capsys):
    model = _fresh()
    LayerFactorAnalysis(model, model.relu2).fit(x200, progress=True, batch_size=50)
    out, err = capsys.readouterr()
    assert out == ""
