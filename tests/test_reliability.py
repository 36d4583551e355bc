"""The bad-input table of issue 7, row by row, plus mixed precision and torchvision ResNets.

Each row asserts a clear error (what was wrong, what is valid) or the documented behaviour, and
that the model is unchanged afterwards. Rows already covered elsewhere are named in comments:
NaN/Inf activations, all channels dead, fewer samples than channels, bad n_factors, unknown
rotation/normalisation, layer not in the model / never called / called twice, empty DataLoader,
a batch that raises midway, attribute/save before fit, loading foreign/truncated/newer/pickled
files, train mode (tests/test_layer_factor_analysis.py); PCACE bad targets, fewer than 10 images
(tests/test_neuron_pcace.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from captum.attr import LayerActivation
from torch import nn

from captum_elfa import CaptumElfaError, LayerFactorAnalysis, NeuronPCACE
from helpers import SmallCNN, assert_same_state, model_state


def test_one_sample_of_a_conv_layer_is_enough_pixels(digits):
    """ELFA's samples are pixels: one 8x8 image gives 64 samples for 16 channels (documented)."""
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    before = model_state(model)
    lfa = LayerFactorAnalysis(model, model.relu2).fit(digits[0][:1], n_factors=2, progress=False)
    assert lfa.n_samples_ == 64
    assert_same_state(before, model_state(model))


def test_one_sample_of_a_linear_layer_is_an_error():
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh()).eval()
    before = model_state(model)
    with pytest.raises(CaptumElfaError, match=r"1 samples .* 8 channels"):
        LayerFactorAnalysis(model, model[1]).fit(torch.randn(1, 5), progress=False)
    assert_same_state(before, model_state(model))


def test_pcace_with_one_image():
    model = SmallCNN(c1=4, c2=6).eval()
    with pytest.raises(CaptumElfaError, match="at least 10 images, got 1"):
        NeuronPCACE(model, model.relu2).attribute(torch.rand(1, 1, 8, 8), target=0, progress=False)
    assert not model.relu2._forward_hooks


def test_batches_of_different_spatial_size(digits):
    """Fit accepts them (every pixel is a sample); attribute cannot stack them and says so."""
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    x = digits[0][:60]
    big = nn.functional.interpolate(x[30:], size=(12, 12), mode="bilinear", align_corners=False)
    lfa = LayerFactorAnalysis(model, model.relu2).fit([x[:30], big], n_factors=2, progress=False)
    assert lfa.n_samples_ == 30 * 64 + 30 * 144
    assert lfa.attribute(big[:2]).shape == (2, 1, 12, 12)
    with pytest.raises(CaptumElfaError, match=r"different sizes \[\(8, 8\), \(12, 12\)\]"):
        lfa.attribute([x[:2], big[:2]])


def test_attribute_on_another_layer_width(digits):
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    lfa = LayerFactorAnalysis(model, model.relu2).fit(digits[0][:50], n_factors=2, progress=False)
    lfa.layer = model.relu1
    with pytest.raises(CaptumElfaError, match="12 channels but the model was fitted on 16"):
        lfa.attribute(digits[0][:2])


def test_inplace_ops_in_torchvision_resnet():
    """In a BasicBlock, bn2's output is changed in place by `out += identity` and ReLU(inplace):
    the statistics must be those of bn2's own output, and bn1's before its in-place ReLU."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(6, 3, 64, 64)
    seen = {}

    def keep(name):
        return lambda m, i, o: seen.__setitem__(name, o.detach().clone())

    for layer, name in ((model.layer1[0].bn2, "bn2"), (model.bn1, "bn1")):
        h = layer.register_forward_hook(keep(name))
        with torch.no_grad():
            model(x)
        h.remove()
        before = model_state(model)
        lfa = LayerFactorAnalysis(model, layer).fit(x, n_factors=3, progress=False)
        assert_same_state(before, model_state(model))
        true_mean = seen[name].double().mean((0, 2, 3))
        assert float(true_mean.min()) < 0  # a post-ReLU tensor would have no negative means
        torch.testing.assert_close(lfa.mean_, true_mean, rtol=1e-5, atol=1e-7)
    # BasicBlock.relu runs twice per forward pass: refused by default (naming call_index), the last
    # call with call_index=-1 (Captum's LayerGradCam uses the last call), the first with
    # call_index=0; each before later in-place changes
    calls = []
    h = model.layer1[0].relu.register_forward_hook(lambda m, i, o: calls.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    assert len(calls) == 2
    with pytest.raises(CaptumElfaError, match="call_index"):
        LayerFactorAnalysis(model, model.layer1[0].relu).fit(x, n_factors=3, progress=False, batch_size=4)
    for kw, ref in (({"call_index": -1}, calls[1]), ({"call_index": 0}, calls[0])):
        before = model_state(model)
        lfa = LayerFactorAnalysis(model, model.layer1[0].relu, **kw).fit(x, n_factors=3, progress=False, batch_size=4)
        assert_same_state(before, model_state(model))
        torch.testing.assert_close(lfa.mean_, ref.double().mean((0, 2, 3)), rtol=1e-5, atol=1e-7)
    # Captum's layer methods (LayerGradCam's machinery) read the last call too
    torch.testing.assert_close(LayerActivation(model, model.layer1[0].relu).attribute(x), calls[1], rtol=0, atol=0)
    with pytest.raises(CaptumElfaError, match="call_index=2 is not valid"):
        LayerFactorAnalysis(model, model.layer1[0].relu, call_index=2).fit(x, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_activations_accumulate_in_float64(digits, dtype):
    """A half-precision layer: the statistics are those of its (rounded) activations, in float64."""
    model = SmallCNN(c1=12, c2=16, seed=2).eval()
    x = digits[0][:120]
    half = nn.Sequential(model.conv1, model.relu1, model.conv2, model.relu2).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lfa = LayerFactorAnalysis(half, half[3]).fit(x.to(dtype), n_factors=2, progress=False, batch_size=17)
    with torch.no_grad():
        a = half(x.to(dtype)).double()
    flat = a.permute(0, 2, 3, 1).reshape(-1, 16)
    torch.testing.assert_close(lfa.mean_, flat.mean(0), rtol=1e-9, atol=1e-12)
    live = lfa.live_channels_
    torch.testing.assert_close(lfa.correlation_, torch.corrcoef(flat[:, live].T), rtol=1e-7, atol=1e-9)
    assert lfa.mean_.dtype == torch.float64
    assert torch.isfinite(lfa.attribute(x[:3].to(dtype))).all()


def _bad_calls():
    """Every ELFA bad-input row that raises: (name, call(model, x), expected error)."""
    from torch.utils.data import DataLoader, TensorDataset

    def fit(**kw):
        return lambda m, x: LayerFactorAnalysis(m, m.relu2).fit(x, progress=False, **kw)

    def nan_input(m, x):
        x = x.clone()
        x[5] = float("nan")
        LayerFactorAnalysis(m, m.relu2).fit(x, progress=False)

    def raising_loader(m, x):
        def gen():
            yield x[:20]
            raise RuntimeError("corrupt image")

        LayerFactorAnalysis(m, m.relu2).fit(gen(), progress=False)

    def fitted_then(call):
        def run(m, x):
            lfa = LayerFactorAnalysis(m, m.relu2).fit(x, n_factors=2, progress=False)
            call(lfa, x)

        return run

    return [
        ("nan", nan_input, CaptumElfaError),
        ("n_factors=0", fit(n_factors=0), CaptumElfaError),
        ("n_factors=-2", fit(n_factors=-2), CaptumElfaError),
        ("n_factors>=live", fit(n_factors=16), CaptumElfaError),
        ("n_factors='bad'", fit(n_factors="bad"), CaptumElfaError),
        ("rotation", fit(rotation="equamax"), CaptumElfaError),
        (
            "empty loader",
            lambda m, x: LayerFactorAnalysis(m, m.relu2).fit(
                DataLoader(TensorDataset(x[:0]), batch_size=4), progress=False
            ),
            CaptumElfaError,
        ),
        ("not in model", lambda m, x: LayerFactorAnalysis(m, nn.ReLU()).fit(x, progress=False), CaptumElfaError),
        ("raises midway", raising_loader, RuntimeError),
        ("normalize", fitted_then(lambda lfa, x: lfa.attribute(x[:2], normalize="sigmoid")), CaptumElfaError),
        ("factor index", fitted_then(lambda lfa, x: lfa.attribute(x[:2], factors=[9])), CaptumElfaError),
    ]


@pytest.mark.parametrize("name,call,error", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_bad_input_leaves_the_model_unchanged(digits, name, call, error):
    model = SmallCNN(c1=12, c2=16, seed=2).train()
    model.conv2.bias.requires_grad_(False)
    before = model_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error):
            call(model, digits[0][:60])
    assert_same_state(before, model_state(model))
