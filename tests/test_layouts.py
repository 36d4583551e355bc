"""ELFA, EFAM and Grad-CAM on every layout of small real torchvision models, against the hand computation.

The oracle of each test is the same analysis done by hand: the layer's raw outputs are taken
with a plain forward hook, permuted to (N, C, H, W) in the test, and a LayerFactorAnalysis is
fitted on them through an identity model (channels first, no layout rule involved). Loadings
and maps must agree. Grad-CAM on channels-first layers is compared with Captum's LayerGradCam.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, List

import pytest
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from captum_elfa import CaptumElfaError, LayerFactorAnalysis
from captum_elfa._capture import LayerCapture
from captum_elfa.attr.analyzers import EFAM, GradCAM, analyze


def _raw_outputs(model: nn.Module, layer: nn.Module, x: Tensor, calls: Any = -1) -> List[Tensor]:
    """The layer's raw outputs, one per call (or the selected call), by a plain forward hook."""
    got: List[Tensor] = []
    h = layer.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return got if calls == "all" else [got[calls]]


def _oracle(acts_nchw: Tensor, n_factors: int = 2, batch_size: int = 8) -> LayerFactorAnalysis:
    """LayerFactorAnalysis fitted on hand-permuted (N, C, H, W) activations through an identity."""
    ident = nn.Sequential(nn.Identity()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LayerFactorAnalysis(ident, ident[0], channel_dim=1).fit(
            acts_nchw, n_factors=n_factors, batch_size=batch_size, progress=False
        )


def _fit(model: nn.Module, layer: nn.Module, x: Tensor, batch_size: int = 8, **layout: Any) -> LayerFactorAnalysis:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LayerFactorAnalysis(model, layer, **layout).fit(x, n_factors=2, batch_size=batch_size, progress=False)


def _same_fit(lfa: LayerFactorAnalysis, ref: LayerFactorAnalysis) -> None:
    assert lfa.n_channels_ == ref.n_channels_ and lfa.n_images_ == ref.n_images_
    assert torch.allclose(lfa.loadings_, ref.loadings_, atol=1e-6, rtol=1e-5)
    assert torch.allclose(lfa.uniquenesses_, ref.uniquenesses_, atol=1e-6, rtol=1e-5)


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


# -- ViT: tokens on their grid -------------------------------------------------------------------------
def _vit_with_head() -> nn.Module:
    m = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    nn.init.normal_(m.heads.head.weight)  # torchvision starts the head at 0: every gradient would be 0
    return m


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    # three blocks: block 1 is not the last, whose patch tokens never reach the head
    return _seeded(_vit_with_head)


def test_vit_token_layer_is_the_hand_permuted_grid(vit):
    torch.manual_seed(1)
    x = torch.randn(48, 3, 32, 32)
    block = vit.encoder.layers[1]
    lfa = _fit(vit, block, x, channel_dim=-1, drop_tokens=1, token_grid="auto")
    raw = _raw_outputs(vit, block, x)[0]  # (N, 17, 32): CLS + 4x4 patches
    assert raw.shape == (48, 17, 32)
    hand = raw[:, 1:, :].permute(0, 2, 1).reshape(48, 32, 4, 4)
    ref = _oracle(hand)
    _same_fit(lfa, ref)
    maps = lfa.attribute(x[:6])
    assert maps.shape == (6, 1, 4, 4)
    assert torch.allclose(maps, ref.attribute(hand[:6]), atol=1e-5)
    # without a grid the tokens are positions (N, C, 16, 1): the same fit
    _same_fit(_fit(vit, block, x, channel_dim=-1, drop_tokens=1), ref)


def test_efam_and_gradcam_of_a_vit_block_are_upsampled_to_the_input(vit):
    torch.manual_seed(2)
    x = torch.randn(40, 3, 32, 32)
    block = vit.encoder.layers[1]
    lfa = _fit(vit, block, x, channel_dim=-1, drop_tokens=1, token_grid="auto")
    expl = analyze(x[:4], EFAM(lfa))
    layer_map = lfa.attribute(x[:4])
    assert expl.extras["layer_attribution"].shape == (4, 1, 4, 4)
    assert torch.allclose(expl.extras["layer_attribution"], layer_map)
    assert expl.val.shape == (4, 1, 32, 32)
    assert torch.allclose(expl.val, LayerAttribution.interpolate(layer_map, (32, 32), "bilinear"))
    # Grad-CAM of the token block = Grad-CAM of the hand-permuted grid, computed here by autograd
    cam = analyze(
        x[:4], GradCAM(vit, block, relu_attributions=False, channel_dim=-1, drop_tokens=1, token_grid="auto"), 2
    )
    xs = x[:4].clone().requires_grad_()
    saved: List[Tensor] = []
    h = block.register_forward_hook(lambda m, i, o: saved.append(o))
    out = vit(xs)
    h.remove()
    (g,) = torch.autograd.grad(out[:, 2].sum(), saved[0])
    grid = lambda t: t[:, 1:, :].permute(0, 2, 1).reshape(4, 32, 4, 4)  # noqa: E731
    ref = (grid(g).mean((2, 3), keepdim=True) * grid(saved[0].detach())).sum(1, keepdim=True)
    assert ref.abs().amax((1, 2, 3)).gt(1e-3).all()  # every image has a map that is not 0
    assert torch.allclose(cam.extras["layer_attribution"], ref, atol=1e-5)
    assert cam.val.shape == (4, 1, 32, 32)
    # a token layer without a grid cannot be upsampled onto an image
    with pytest.raises(CaptumElfaError, match="token_grid"):
        analyze(x[:2], GradCAM(vit, block, channel_dim=-1, drop_tokens=1))
    # the last block's patch tokens never reach the head (only CLS does): a Grad-CAM of 0s is announced
    last = GradCAM(
        vit, vit.encoder.layers[2], relu_attributions=False, channel_dim=-1, drop_tokens=1, token_grid="auto"
    )
    with pytest.warns(UserWarning, match=r"encoder_layer_2' is 0 at every position .* for 2 of 2 input\(s\)"):
        zero = analyze(x[:2], last, 2)
    assert not zero.val.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an earlier block: no warning
        analyze(x[:2], GradCAM(vit, block, channel_dim=-1, drop_tokens=1, token_grid="auto"), 2)


# -- ConvNeXt: a Linear on channels-last data --------------------------------------------------------------
def test_convnext_linear_layer_is_the_hand_permuted_nchw():
    model = _seeded(lambda: torchvision.models.convnext_tiny(num_classes=4))
    torch.manual_seed(3)
    x = torch.randn(10, 3, 64, 64)
    layer = model.features[1][0].block[5]  # Linear(384, 96) on (N, 16, 16, 96)
    assert isinstance(layer, nn.Linear)
    lfa = _fit(model, layer, x, batch_size=4, channel_dim=-1)
    raw = _raw_outputs(model, layer, x)[0]
    assert raw.shape == (10, 16, 16, 96)
    hand = raw.permute(0, 3, 1, 2)
    ref = _oracle(hand, batch_size=4)
    _same_fit(lfa, ref)
    assert torch.allclose(lfa.attribute(x[:3]), ref.attribute(hand[:3]), atol=1e-5)
    # Grad-CAM refuses the channels-last output without channel_dim (never averages the wrong dims)
    with pytest.raises(CaptumElfaError, match="channel_dim=-1"):
        analyze(x[:2], GradCAM(model, layer))
    cam = analyze(x[:2], GradCAM(model, layer, channel_dim=-1))
    assert cam.extras["layer_attribution"].shape == (2, 1, 16, 16) and cam.val.shape == (2, 1, 64, 64)


# -- 1-D and 3-D convolutional nets ------------------------------------------------------------------------
class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 5)
        self.conv2 = nn.Conv1d(6, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(h.mean(2))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 5, 3, padding=1)
        self.conv2 = nn.Conv3d(5, 7, 3)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(h.mean((2, 3, 4)))


def test_conv1d_layer_fit_maps_and_gradcam():
    model = _seeded(Conv1dNet)
    torch.manual_seed(4)
    x = torch.randn(30, 3, 40)
    lfa = _fit(model, model.conv2, x)
    raw = _raw_outputs(model, model.conv2, x)[0]  # (N, 8, 34)
    ref = _oracle(raw[..., None])
    _same_fit(lfa, ref)
    expl = analyze(x[:5], EFAM(lfa))
    assert expl.extras["layer_attribution"].shape == (5, 1, 34)
    assert torch.allclose(expl.extras["layer_attribution"], ref.attribute(raw[:5, ..., None])[..., 0], atol=1e-5)
    assert expl.val.shape == (5, 1, 40)
    cam = analyze(x[:5], GradCAM(model, model.conv2, relu_attributions=False), 1)
    captum_map = LayerGradCam(model, model.conv2).attribute(x[:5], target=1)
    assert torch.allclose(cam.extras["layer_attribution"], captum_map, atol=1e-6)
    assert torch.allclose(cam.val, LayerAttribution.interpolate(captum_map, (40,), "linear"), atol=1e-6)


def test_conv3d_layer_fit_maps_and_gradcam():
    model = _seeded(Conv3dNet)
    torch.manual_seed(5)
    x = torch.randn(16, 2, 6, 7, 8)
    lfa = _fit(model, model.conv2, x)
    raw = _raw_outputs(model, model.conv2, x)[0]  # (N, 7, 4, 5, 6)
    assert raw.shape == (16, 7, 4, 5, 6)
    ref = _oracle(raw.reshape(16, 7, 20, 6))
    _same_fit(lfa, ref)
    expl = analyze(x[:3], EFAM(lfa))
    hand_map = ref.attribute(raw[:3].reshape(3, 7, 20, 6)).reshape(3, 1, 4, 5, 6)
    assert torch.allclose(expl.extras["layer_attribution"], hand_map, atol=1e-5)
    assert expl.val.shape == (3, 1, 6, 7, 8)
    cam = analyze(x[:3], GradCAM(model, model.conv2), 0)
    captum_map = LayerGradCam(model, model.conv2).attribute(x[:3], target=0, relu_attributions=True)
    assert torch.allclose(cam.extras["layer_attribution"], captum_map, atol=1e-6)


# -- modules called several times: ResNet's BasicBlock.relu ---------------------------------------------------
@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _seeded(lambda: torchvision.models.resnet18(num_classes=4))


def test_basicblock_relu_call_index(resnet):
    torch.manual_seed(6)
    x = torch.randn(24, 3, 32, 32)
    relu = resnet.layer1[0].relu
    msg = (
        r"layer 'layer1.0.relu' is called 2 times per forward pass \(inside 'layer1.0', a BasicBlock\); "
        r"pass call_index=0..1, -1 for the last call"
    )
    with pytest.raises(CaptumElfaError, match=msg):  # the default of the capture layer
        _fit(resnet, relu, x, call_index=None)
    with pytest.raises(CaptumElfaError, match=msg):
        analyze(x[:2], GradCAM(resnet, relu))
    with pytest.raises(CaptumElfaError, match=r"call_index=2 is not valid.*called 2 time\(s\)"):
        _fit(resnet, relu, x, call_index=2)
    with pytest.raises(CaptumElfaError, match="call_index='first' is not valid"):
        LayerFactorAnalysis(resnet, relu, call_index="first")
    calls = _raw_outputs(resnet, relu, x, "all")
    assert len(calls) == 2
    for ci, k in ((0, 0), (1, 1), (-1, 1), (-2, 0)):
        _same_fit(_fit(resnet, relu, x, call_index=ci), _oracle(calls[k]))
    # "all": every call's output is its own set of samples (n_images_ counts both calls)
    lfa_all = _fit(resnet, relu, x, call_index="all")
    ref = _oracle(torch.cat([torch.cat([calls[0][i : i + 8], calls[1][i : i + 8]]) for i in range(0, 24, 8)]))
    assert lfa_all.n_images_ == 48
    _same_fit(lfa_all, ref)
    # EFAM of an lfa fitted on every call maps the chosen call
    with pytest.raises(CaptumElfaError, match=r"pass EFAM\(lfa, call_index=k\)"):
        EFAM(lfa_all)
    with pytest.raises(CaptumElfaError, match="applies to a LayerFactorAnalysis built with call_index='all'"):
        EFAM(_fit(resnet, relu, x[:16], call_index=0), call_index=0)
    for k in (0, -1):
        expl = analyze(x[:3], EFAM(lfa_all, call_index=k))
        assert torch.allclose(expl.extras["layer_attribution"], ref.attribute(calls[k][:3]), atol=1e-5)
        assert expl.val.shape == (3, 1, 32, 32)
    # GradCAM with call_index=-1 is Captum's LayerGradCam (which uses the last call)
    cam = analyze(x[:3], GradCAM(resnet, relu, call_index=-1), 1)
    captum_map = LayerGradCam(resnet, relu).attribute(x[:3], target=1, relu_attributions=True)
    assert torch.allclose(cam.extras["layer_attribution"], captum_map, atol=1e-6)
    with pytest.raises(CaptumElfaError, match="call_index='all' is not available"):
        GradCAM(resnet, relu, call_index="all")


@pytest.mark.parametrize("call_index", [None, 0, 1, -1, -2, "all"])
def test_stop_early_with_every_call_index(call_index):
    """From the second batch on the forward pass ends at the layer; same activations as a full pass."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.Tanh()
            self.head = nn.Linear(4, 2)
            self.times = 1 if call_index is None else 2
            self.head_calls = 0

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x)
            for _ in range(self.times):
                h = self.act(h) * 1.5
            self.head_calls += 1
            return self.head(h.mean((2, 3)))

    model = _seeded(Twice)
    x = torch.randn(12, 3, 6, 6)
    runs = {}
    for stop in (False, True):
        got: List[Tensor] = []
        model.head_calls = 0
        with LayerCapture(
            model, model.act, lambda a, i, got=got: got.append(a.clone()), call_index=call_index, stop_early=stop
        ) as cap:
            outs = [cap.run(b, i) for i, b in enumerate(torch.split(x, 4))]
        runs[stop] = (got, model.head_calls, outs)
    (full, n_full, _), (stopped, n_stopped, outs) = runs[False], runs[True]
    assert n_full == 3 and n_stopped == 1 and outs[0] is not None and outs[1] is None and outs[2] is None
    assert len(stopped) == len(full) == (6 if call_index == "all" else 3)
    assert all(torch.equal(a, b) for a, b in zip(full, stopped))


# -- PCACE on the same layouts: the hand-permuted activations through pcace_statistics ------------------------
@pytest.mark.parametrize("case", ["vit", "conv1d", "conv3d"])
def test_pcace_token_1d_3d_layers_are_the_hand_permuted_computation(case: str, vit) -> None:
    from captum_elfa import NeuronPCACE
    from captum_elfa.attr.neuron_pcace import pcace_statistics

    torch.manual_seed(7)
    if case == "vit":
        model = copy.deepcopy(vit)
        nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at 0: a constant score
        layer, layout = model.encoder.layers[1], {"channel_dim": -1, "drop_tokens": 1, "token_grid": "auto"}
        x = torch.randn(40, 3, 32, 32)
    elif case == "conv1d":
        model, layout = _seeded(Conv1dNet), {}
        layer, x = model.conv2, torch.randn(40, 3, 40)
    else:
        model, layout = _seeded(Conv3dNet), {}
        layer, x = model.conv2, torch.randn(40, 2, 6, 7, 8)
    raw = _raw_outputs(model, layer, x)[0]
    if case == "vit":  # (N, 17, C): drop CLS, channels first, the 4x4 grid
        hand = raw[:, 1:, :].permute(0, 2, 1)
    else:
        hand = raw
    c = hand.shape[1]
    acts = hand.reshape(40, c, -1).permute(1, 0, 2).contiguous()  # [C, N, positions]
    with torch.no_grad():
        y = model.eval()(x)[:, 1].double()
    pc = NeuronPCACE(model, layer, **layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40 images: below the reliable count
        scores = pc.attribute(x, target=1, progress=False, n_permutations=0, batch_size=16)
    ref = pcace_statistics(acts, y)[0]
    assert scores.shape == (c,)
    assert torch.allclose(scores, ref, atol=1e-6)
    assert pc.components_.shape == (c, 1, 40)
