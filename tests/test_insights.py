"""captum_elfa.insights: our methods in Captum Insights' menu (captum < 0.9), computed through
Insights' own attribution path, and a clear ImportError where captum >= 0.9 has no Insights."""

from __future__ import annotations

import importlib
import sys

import captum
import pytest
import torch
from captum.attr import LayerAttribution

import captum_elfa
from captum_elfa import LayerFactorAnalysis
from helpers import SmallCNN


def _captum_at_least_09() -> bool:
    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in captum.__version__.split(".")[:2])
    return (major, minor) >= (0, 9)


@pytest.mark.skipif(not _captum_at_least_09(), reason="captum < 0.9 has Insights")
def test_import_on_captum_09_raises_clear_error():
    sys.modules.pop("captum_elfa.insights", None)
    with pytest.raises(ImportError, match=r"captum<0\.9") as info:
        importlib.import_module("captum_elfa.insights")
    assert "captum-elfa[insights]" in str(info.value)
    assert captum.__version__ in str(info.value)


@pytest.fixture
def ins():
    pytest.importorskip("captum.insights")
    mod = importlib.import_module("captum_elfa.insights")
    yield mod
    mod.unregister()


@pytest.fixture
def setup(ins, digits):
    x, y = digits
    model = SmallCNN().eval()
    lfa = LayerFactorAnalysis(model, model.conv2).fit(x[:300], progress=False)
    wrapped = ins.GrayscaleToRGB(model)
    x3 = x[:4].repeat(1, 3, 1, 1)
    vis = ins.AttributionVisualizer(
        models=[wrapped],
        classes=[str(i) for i in range(10)],
        features=[ins.ImageFeature("Digit", baseline_transforms=None, input_transforms=None)],
        dataset=[ins.Batch(x3, y[:4])],
    )
    return model, lfa, wrapped, x3, vis


def _config():
    from captum.insights.attr_vis import config

    return config


def _select(vis, name, **overrides):
    """What the frontend's Fetch posts: the method and its arguments' current values."""
    params = _config().ATTRIBUTION_METHOD_CONFIG[name].params
    args = {k: v.value for k, v in params.items()}
    args.update(overrides)
    vis._update_config({"attribution_method": name, "arguments": args, "prediction": "all", "classes": []})


def _insights_attribution(vis, x3, target, name, **overrides):
    """Insights' own AttributionCalculation.calculate_attribution, as /fetch and /attribute use."""
    _select(vis, name, **overrides)
    calc = vis.attribution_calculation
    _, baselines, transformed = calc.calculate_predicted_scores((x3[:1],), None, vis.models[0])
    return calc.calculate_attribution(
        baselines,
        transformed,
        None,
        torch.tensor([target]),
        name,
        dict(vis._config.attribution_arguments),
        vis.models[0],
    )


def test_register_adds_methods_and_unregister_restores(ins, setup):
    model, lfa, wrapped, x3, vis = setup
    cfg = _config()
    before = (dict(cfg.ATTRIBUTION_NAMES_TO_METHODS), dict(cfg.ATTRIBUTION_METHOD_CONFIG))
    names = ins.register(lfa, model=wrapped)
    assert names == [ins.EFAM_NAME, ins.GRADCAM_NAME, ins.SMOOTHGRAD_NAME]
    again = ins.register(lfa, model=wrapped)  # idempotent
    assert again == names and ins.registered_methods() == names
    conf = vis.get_insights_config()
    for name in names:
        assert name in conf["methods"]
        assert name in conf["method_arguments"]
    assert "Integrated Gradients" in conf["methods"]  # Captum's own methods stay
    assert conf["method_arguments"][ins.EFAM_NAME]["factor"]["limit"] == ["combined"] + [
        str(i) for i in range(lfa.loadings_.shape[1])
    ]
    assert conf["method_arguments"][ins.SMOOTHGRAD_NAME]["n"]["type"] == "number"
    ins.unregister()
    assert (dict(cfg.ATTRIBUTION_NAMES_TO_METHODS), dict(cfg.ATTRIBUTION_METHOD_CONFIG)) == before
    assert ins.registered_methods() == []
    # a pre-existing entry of the same name is restored, not deleted
    sentinel = cfg.ATTRIBUTION_NAMES_TO_METHODS["Saliency"]
    cfg.ATTRIBUTION_NAMES_TO_METHODS[ins.SMOOTHGRAD_NAME] = sentinel
    try:
        ins.register(smoothgrad=True)
        assert cfg.ATTRIBUTION_NAMES_TO_METHODS[ins.SMOOTHGRAD_NAME] is ins.InsightsSmoothGrad
        ins.unregister()
        assert cfg.ATTRIBUTION_NAMES_TO_METHODS[ins.SMOOTHGRAD_NAME] is sentinel
    finally:
        cfg.ATTRIBUTION_NAMES_TO_METHODS.pop(ins.SMOOTHGRAD_NAME, None)


def test_efam_through_insights_equals_lfa_attribute_upsampled(ins, setup):
    model, lfa, wrapped, x3, vis = setup
    ins.register(lfa, model=wrapped)
    x1 = x3[:1, :1]
    (attr,) = _insights_attribution(vis, x3, 2, ins.EFAM_NAME)
    expected = LayerAttribution.interpolate(lfa.attribute(x1), tuple(x1.shape[2:]), "bilinear")
    assert attr.shape == x3[:1].shape  # drawn as an RGB attribution
    for c in range(3):
        torch.testing.assert_close(attr[:, c : c + 1], expected)
    # a factor chosen in the UI ("2" as the select sends it) and another normalisation
    (attr,) = _insights_attribution(vis, x3, 2, ins.EFAM_NAME, factor="2", normalize="relu")
    expected = LayerAttribution.interpolate(
        lfa.attribute(x1, factors=[2], normalize="relu"), tuple(x1.shape[2:]), "bilinear"
    )
    torch.testing.assert_close(attr[:, :1], expected)


def test_gradcam_and_smoothgrad_through_insights_equal_direct(ins, setup):
    model, lfa, wrapped, x3, vis = setup
    ins.register(lfa, model=wrapped)
    (attr,) = _insights_attribution(vis, x3, 5, ins.GRADCAM_NAME, relu_attributions="False")
    direct = captum_elfa.analyze(x3[:1], captum_elfa.GradCAM(wrapped, model.conv2, relu_attributions=False), 5)
    torch.testing.assert_close(attr, direct.val.expand(-1, 3, -1, -1))
    torch.manual_seed(0)
    (attr,) = _insights_attribution(vis, x3, 5, ins.SMOOTHGRAD_NAME, n=8, std="0.2")
    torch.manual_seed(0)
    direct = captum_elfa.analyze(x3[:1], captum_elfa.SmoothGrad(wrapped, n=8, std=0.2), 5)
    torch.testing.assert_close(attr, direct.val)
    assert attr.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:It looks like that the attribution")
def test_fetch_path_serves_our_methods(ins, setup):
    """visualize() (/fetch) and _calculate_attribution_from_cache (/attribute) with our methods."""
    from captum.insights.attr_vis.server import namedtuple_to_dict

    model, lfa, wrapped, x3, vis = setup
    ins.register(lfa, model=wrapped)
    for name in ins.registered_methods():
        _select(vis, name, n=4) if name == ins.SMOOTHGRAD_NAME else _select(vis, name)
        out = vis.visualize()
        assert len(out) == 4
        feature = namedtuple_to_dict(out)[0][0]["feature_outputs"][0]
        assert feature["type"] == "image" and len(feature["modified"]) > 100
        one = vis._calculate_attribution_from_cache(0, 0, 7)
        assert int(one.active_index) == 7
    # the EFAM shown for the first example is lfa.attribute of that example, upsampled
    _select(vis, ins.EFAM_NAME)
    vis.visualize()
    cache = vis._outputs[0][1]
    attr = vis.attribution_calculation.calculate_attribution(
        None,
        cache.inputs,
        None,
        torch.tensor([0]),
        ins.EFAM_NAME,
        dict(vis._config.attribution_arguments),
        wrapped,
    )[0]
    xg = cache.inputs[0][:, :1]
    torch.testing.assert_close(
        attr[:, :1], LayerAttribution.interpolate(lfa.attribute(xg), tuple(xg.shape[2:]), "bilinear")
    )


def test_register_options_and_errors(ins, setup):
    model, lfa, wrapped, x3, vis = setup
    cfg = _config()
    assert ins.register(model=wrapped, smoothgrad=False) == [ins.GRADCAM_NAME]  # last Conv2d
    assert cfg.ATTRIBUTION_NAMES_TO_METHODS[ins.GRADCAM_NAME].layer is model.conv2
    assert ins.register(gradcam_layer="model.conv1", model=wrapped, smoothgrad=False) == [ins.GRADCAM_NAME]
    (attr,) = _insights_attribution(vis, x3, 1, ins.GRADCAM_NAME)
    direct = captum_elfa.analyze(x3[:1], captum_elfa.GradCAM(wrapped, model.conv1), 1)
    torch.testing.assert_close(attr[:, :1], direct.val)
    assert ins.register(lfa, gradcam_layer=False, smoothgrad=False) == [ins.EFAM_NAME]
    assert ins.GRADCAM_NAME not in cfg.ATTRIBUTION_NAMES_TO_METHODS
    with pytest.raises(captum_elfa.CaptumElfaError, match="fitted"):
        ins.register(LayerFactorAnalysis(model, model.conv2))
    with pytest.raises(captum_elfa.CaptumElfaError, match="does not contain"):
        ins.register(lfa, model=SmallCNN())
    # EFAM on a model without the fitted layer: a clear error at Fetch time
    ins.register(lfa, smoothgrad=False)
    other = ins.GrayscaleToRGB(SmallCNN().eval())
    vis.models[0] = other
    with pytest.raises(captum_elfa.CaptumElfaError, match="does not contain the layer"):
        _insights_attribution(vis, x3, 1, ins.EFAM_NAME)


def test_grayscale_wrapper(ins, digits):
    x, _ = digits
    model = SmallCNN().eval()
    x3 = x[:5].repeat(1, 3, 1, 1)
    torch.testing.assert_close(ins.GrayscaleToRGB(model)(x3), model(x[:5]))
    torch.testing.assert_close(ins.GrayscaleToRGB(model, reduce=1)(x3), model(x[:5]))
    assert not ins.GrayscaleToRGB(model).training


def _vit_visualizer(ins, vit, x):
    return ins.AttributionVisualizer(
        models=[vit],
        classes=[str(i) for i in range(4)],
        features=[ins.ImageFeature("Image", baseline_transforms=None, input_transforms=None)],
        dataset=[ins.Batch(x[:2], torch.tensor([0, 1]))],
    )


@pytest.mark.filterwarnings("ignore:layer 'encoder.layers.encoder_layer_1'")
def test_token_layer_of_a_vit_through_insights(ins):
    """A factor model of a ViT block (tokens on their grid): Insights' EFAM and Grad-CAM read the
    block with the factor model's layout and equal the direct computation; a layout that pools every
    call is refused for Grad-CAM with the option to pass."""
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    ).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at 0: a constant score
    layer = vit.encoder.layers[1]  # not the last block: the patch tokens' gradient is not 0
    x = torch.rand(60, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lfa = LayerFactorAnalysis(vit, layer, channel_dim=-1, drop_tokens=1, token_grid="auto")
    lfa.fit(x, n_factors=2, progress=False)
    # without the factor model's layout Grad-CAM refuses the token output and names channel_dim
    with pytest.raises(captum_elfa.CaptumElfaError, match="channel_dim"):
        captum_elfa.analyze(x[:1], captum_elfa.GradCAM(vit, layer), 1)
    assert ins.register(lfa, model=vit) == [ins.EFAM_NAME, ins.GRADCAM_NAME, ins.SMOOTHGRAD_NAME]
    vis = _vit_visualizer(ins, vit, x)
    (attr,) = _insights_attribution(vis, x, 1, ins.EFAM_NAME)
    expected = LayerAttribution.interpolate(lfa.attribute(x[:1]), (32, 32), "bilinear")
    assert lfa.attribute(x[:1]).shape == (1, 1, 4, 4)  # the 16 patch tokens on their 4 x 4 grid
    for c in range(3):
        torch.testing.assert_close(attr[:, c : c + 1], expected)
    (attr,) = _insights_attribution(vis, x, 1, ins.GRADCAM_NAME, relu_attributions="False")
    direct = captum_elfa.analyze(
        x[:1], captum_elfa.GradCAM(vit, layer, relu_attributions=False, **lfa.layout.kwargs()), 1
    )
    assert direct.val.shape == (1, 1, 32, 32)
    torch.testing.assert_close(attr, direct.val.expand(-1, 3, -1, -1))
    assert attr.abs().sum() > 0
    # an explicit layout for another layer; bad layouts are named
    ins.register(lfa, gradcam_layer=vit.encoder.layers[0], gradcam_layout=lfa.layout.kwargs())
    (attr,) = _insights_attribution(vis, x, 1, ins.GRADCAM_NAME)
    direct = captum_elfa.analyze(x[:1], captum_elfa.GradCAM(vit, vit.encoder.layers[0], **lfa.layout.kwargs()), 1)
    torch.testing.assert_close(attr, direct.val.expand(-1, 3, -1, -1))
    with pytest.raises(captum_elfa.CaptumElfaError, match=r"unknown keys \['grid'\]"):
        ins.register(lfa, gradcam_layout={"grid": (4, 4)})
    with pytest.raises(captum_elfa.CaptumElfaError, match="token_grid=5"):
        ins.register(lfa, gradcam_layout={"channel_dim": -1, "token_grid": 5})
    pooled = LayerFactorAnalysis(vit, layer, channel_dim=-1, drop_tokens=1, token_grid="auto", call_index="all")
    pooled.fit(x, n_factors=2, progress=False)
    with pytest.raises(captum_elfa.CaptumElfaError, match="call_index='all'.*gradcam_layer=False"):
        ins.register(pooled)
    assert ins.register(pooled, gradcam_layer=False) == [ins.EFAM_NAME, ins.SMOOTHGRAD_NAME]


@pytest.mark.filterwarnings("ignore:layer 'features.1.0.block.3'")
def test_channels_last_convnext_layer_through_insights(ins):
    """ConvNeXt-tiny's Linear on NHWC data: EFAM and Grad-CAM in Insights read it channels-last."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None, num_classes=4).eval()
    layer = model.features[1][0].block[3]  # Linear(96, 384) on (N, H, W, 96)
    x = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    lfa = LayerFactorAnalysis(model, layer, channel_dim=-1).fit(x, n_factors=3, progress=False, batch_size=6)
    ins.register(lfa, model=model, smoothgrad=False)
    vis = _vit_visualizer(ins, model, x)
    (attr,) = _insights_attribution(vis, x, 2, ins.EFAM_NAME)
    maps = lfa.attribute(x[:1])
    assert maps.shape == (1, 1, 16, 16)
    torch.testing.assert_close(attr[:, :1], LayerAttribution.interpolate(maps, (64, 64), "bilinear"))
    (attr,) = _insights_attribution(vis, x, 2, ins.GRADCAM_NAME)
    direct = captum_elfa.analyze(x[:1], captum_elfa.GradCAM(model, layer, channel_dim=-1), 2)
    torch.testing.assert_close(attr, direct.val.expand(-1, 3, -1, -1))
