"""ELFA and PCACE end to end on torchvision's DeepLabV3 (ResNet-50), whose output is a dict.

The model is randomly initialised (``weights=None, weights_backbone=None``: no download) and run
on 12 random 48x48 images; the hooked layer is the ASPP module ``classifier[0]`` (256 channels,
6x6 at output stride 8: 432 samples).
"""

from __future__ import annotations

import json

import pytest
import torch
from captum.attr import LayerAttribution

from captum_elfa import CaptumElfaError, LayerFactorAnalysis, NeuronPCACE
from captum_elfa.attr.compare_layers import compare_layers
from helpers import assert_same_state, model_state, require

torchvision = require("torchvision")

pytestmark = pytest.mark.filterwarnings("ignore:Heywood case:RuntimeWarning")


def class_mean(c: int):
    """PCACE target of a segmentation network: class ``c``'s mean logit over the pixels."""
    return lambda out: out["out"][:, c].mean(dim=(1, 2))


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = torch.rand(12, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x[:1])
    assert isinstance(out, dict) and out["out"].shape == (1, 3, 48, 48)
    return model, x


@pytest.fixture(scope="module")
def fitted(deeplab):
    model, x = deeplab
    before = model_state(model)
    lfa = LayerFactorAnalysis(model, model.classifier[0]).fit(x, n_factors=8, progress=False)
    assert_same_state(before, model_state(model))
    return lfa


def test_elfa_fit_attribute_report(deeplab, fitted):
    model, x = deeplab
    lfa = fitted
    assert lfa.layer_name_ == "classifier.0" and lfa.activation_shape_ == (256, 6, 6)
    assert lfa.n_samples_ == 12 * 6 * 6 and lfa.n_channels_ == 256
    assert lfa.n_factors_ == 8 and lfa.converged_
    assert 0.0 < lfa.adequacy_.kmo <= 1.0 and 0.0 < lfa.metrics_.r2 <= 1.0
    before = model_state(model)
    efam = lfa.attribute(x[:4])
    assert_same_state(before, model_state(model))
    assert efam.shape == (4, 1, 6, 6) and bool(torch.isfinite(efam).all())
    assert float(efam.min()) == 0.0 and float(efam.max()) == pytest.approx(1.0)
    up = LayerAttribution.interpolate(efam, x.shape[2:])
    assert up.shape == (4, 1, 48, 48)
    per_factor = lfa.attribute(x[:2], factors=[0, 1])
    assert per_factor.shape == (2, 2, 6, 6)
    rep = lfa.report()
    json.dumps(rep)
    assert rep["layer"] == "classifier.0" and rep["n_factors"] == lfa.n_factors_
    assert "KMO" in lfa.summary()


def test_pcace_with_callable_target_and_compare_layers(deeplab, fitted):
    model, x = deeplab
    pc = NeuronPCACE(model, model.classifier[0])
    scores = pc.attribute(x, target=class_mean(1), progress=False)
    assert scores.shape == (256,) and bool(((scores >= 0) & (scores <= 1 + 1e-9)).all())
    assert float(scores.max()) > 0.5
    assert len(pc.constant_channels_) == len(fitted.dead_channels_)
    with pytest.raises(CaptumElfaError, match="callable"):
        NeuronPCACE(model, model.classifier[0]).attribute(x, target=1, progress=False, batch_size=2)

    cmp = compare_layers(model, {"aspp": model.classifier[0]}, x, target=class_mean(1), n_factors=8, progress=False)
    torch.testing.assert_close(cmp.pcace["aspp"], scores, rtol=0, atol=1e-8)
    torch.testing.assert_close(cmp.elfa["aspp"].loadings_, fitted.loadings_, rtol=0, atol=1e-8)
    assert cmp.rows[0]["n_factors"] == fitted.n_factors_
