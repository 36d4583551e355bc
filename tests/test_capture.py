"""The capture layer (captum_elfa._capture): model state, layouts, repeated calls, batches, bad input.

Every entry point that runs the user's model goes through ``model_guard``/``LayerCapture``; the
tests run each on a train-mode model with BatchNorm and Dropout (as an nn.Module and through a
lambda) and compare everything the model holds afterwards. Layout tests compare the results on
channels-last and token layers with the same computation done by hand after permuting the
activations to (N, C, ...).
"""

from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from captum_elfa import CaptumElfaError, LayerFactorAnalysis, NeuronPCACE
from captum_elfa._capture import (
    LayerCapture,
    find_model,
    iter_batches,
    iter_batches_with_args,
    model_guard,
    resolve_channel_dim,
    to_nchw,
)
from captum_elfa.attr.analyze import (
    EFAM,
    GradCAM,
    Gradient,
    InputTimesGradient,
    IntegratedGradients,
    InterpolationAugmentation,
    NoiseAugmentation,
    SmoothGrad,
    analyze,
)
from captum_elfa.attr.compare_layers import compare_layers
from captum_elfa.metrics.faithfulness import deletion_curve, insertion_curve
from captum_elfa.optim import invert_factor, maximize_channels
from captum_elfa.stats.moments import RunningMoments


# -- models ------------------------------------------------------------------------------------------
class BNNet(nn.Module):
    """conv -> BN -> ReLU -> Dropout -> conv -> BN -> ReLU -> pool -> linear(5)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(8, 10, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(10, 5)
        self.fail_at: int = -1  # raise on this forward call (counted from 0); -1: never
        self.interrupt = False
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            if self.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError("batch failed on purpose")
        h = self.drop(self.relu1(self.bn1(self.conv1(x))))
        h = self.relu2(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def _state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": {k: b.detach().clone() for k, b in model.named_buffers()},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def _assert_state(before: dict, model: nn.Module) -> None:
    after = _state(model)
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)
    assert before["buffers"].keys() == after["buffers"].keys()
    for k in before["buffers"]:
        assert torch.equal(before["buffers"][k], after["buffers"][k]), k
    assert all(p.grad is None for p in model.parameters())


def _train_mode_net() -> BNNet:
    net = BNNet()
    with torch.no_grad():  # non-trivial running statistics
        net.train()
        for _ in range(3):
            net(torch.randn(32, 1, 8, 8))
    net.calls = 0
    net.train()
    net.conv1.weight.requires_grad_(False)  # a mixed state to restore
    net.drop.eval()
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images[:120], dtype=torch.float32)[:, None] / 16.0


# -- the model-state guarantee -----------------------------------------------------------------------
def _entry_points(fwd, net: BNNet, x: torch.Tensor, lfa: LayerFactorAnalysis):
    """Every entry point that runs the model, as zero-argument callables."""
    xs = x[:4]
    maps = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return {
        "fit": lambda: LayerFactorAnalysis(fwd, net.relu2).fit(x, n_factors=2, progress=False, batch_size=50),
        "attribute": lambda: lfa.attribute(xs),
        "pcace": lambda: NeuronPCACE(fwd, net.relu2).attribute(x[:40], target=1, progress=False, batch_size=16),
        "compare_layers": lambda: compare_layers(
            fwd, {"r1": net.relu1, "r2": net.relu2}, x[:40], target=1, n_factors=2, progress=False, batch_size=16
        ),
        "deletion": lambda: deletion_curve(fwd, xs, maps, steps=3, batch_size=2),
        "insertion": lambda: insertion_curve(fwd, xs, maps, steps=3, batch_size=2),
        "inversion": lambda: invert_factor(lfa, 0, (1, 8, 8), steps=2, progress=False),
        "activation_max": lambda: maximize_channels(fwd, net.relu2, [0, 1], (1, 8, 8), steps=2, progress=False),
        **{
            f"analyze-{type(a).__name__}": (lambda a=a: analyze(xs, a))
            for a in (
                Gradient(fwd),
                InputTimesGradient(fwd),
                SmoothGrad(fwd, 2, 0.1),
                IntegratedGradients(fwd, 3),
                GradCAM(fwd, net.conv2),
                EFAM(lfa),
                NoiseAugmentation(GradCAM(fwd, net.conv2), 2, 0.1),
                InterpolationAugmentation(InputTimesGradient(fwd), 3),
            )
        },
    }


@pytest.mark.parametrize("through", ["module", "lambda"])
def test_every_entry_point_leaves_the_model_as_it_was(images, through):
    net = _train_mode_net()
    fwd = net if through == "module" else (lambda z: net(z))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lfa = LayerFactorAnalysis(fwd, net.relu2).fit(images, n_factors=2, progress=False)
    before = _state(net)
    for name, call in _entry_points(fwd, net, images, lfa).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        _assert_state(before, net)
        # the lambda's model is found in its closure: it runs in eval mode like the module
        assert any("training mode" in str(w.message) for w in caught), name
        assert not any("cannot find the model" in str(w.message) for w in caught), name


def test_eval_mode_during_the_run_and_bn_statistics_unchanged(images):
    """analyze(x, Gradient(model.train())): explained in eval mode, back in train mode afterwards."""
    net = _train_mode_net()
    seen = []
    h = net.bn1.register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        with pytest.warns(UserWarning, match="is in training mode; analyze runs it in eval mode"):
            expl = analyze(images[:4], Gradient(net))
    finally:
        h.remove()
    assert seen and not any(seen)
    assert net.training and net.bn1.training
    with torch.no_grad():
        net.eval()
        ref = net(images[:4])
        net.train()
    torch.testing.assert_close(expl.output, ref)


@pytest.mark.parametrize("interrupt", [False, True])
@pytest.mark.parametrize("through", ["module", "lambda"])
def test_state_restored_when_a_batch_raises(images, interrupt, through):
    net = _train_mode_net()
    fwd = net if through == "module" else (lambda z: net(z))
    before = _state(net)
    err = KeyboardInterrupt if interrupt else RuntimeError
    calls = {
        "fit": lambda: LayerFactorAnalysis(fwd, net.relu2).fit(images, progress=False, batch_size=16),
        "pcace": lambda: NeuronPCACE(fwd, net.relu2).attribute(images, target=1, progress=False, batch_size=16),
        "compare": lambda: compare_layers(fwd, [net.relu1, net.relu2], images, target=1, progress=False, batch_size=16),
        "deletion": lambda: deletion_curve(fwd, images[:4], torch.rand(4, 1, 8, 8), steps=4, batch_size=2),
        "analyze": lambda: analyze(images[:4], SmoothGrad(fwd, 3, 0.1)),
    }
    for name, call in calls.items():
        net.calls, net.fail_at, net.interrupt = 0, 1 if name == "analyze" else 2, interrupt
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(err):
                call()
        _assert_state(before, net)


def test_buffers_restored_even_if_a_forward_ran_in_train_mode(images):
    """A model the guard cannot find (hidden behind an object): a warning says what to pass; the
    modules it does guard (the layer's) are restored, the others are not protected (as it warns)."""

    class Hidden:
        def __init__(self, m):
            self.m = m

        def __call__(self, z):
            return self.m(z)

    net = _train_mode_net()
    hidden = Hidden(net)
    block = nn.Sequential(net.conv1, net.bn1)  # the layer: its own BN runs in eval mode
    before = _state(net)
    with pytest.warns(UserWarning, match="cannot find the model.*Pass the model itself"):
        with model_guard(hidden, [block]):
            assert not net.bn1.training and net.bn2.training
            with torch.no_grad():
                hidden(images[:16])  # bn2 is in train mode: its running stats move
                net.bn1.running_mean.add_(1.0)  # a guarded buffer changed in place is put back too
    after = _state(net)
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]
    for k in ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(after["buffers"][k], before["buffers"][k])
    assert not torch.equal(after["buffers"]["bn2.running_mean"], before["buffers"]["bn2.running_mean"])
    assert find_model(lambda z: net(z), [net.conv2]) is net
    assert find_model(net.forward) is net


def test_freeze_grad_and_nested_guards(images):
    net = _train_mode_net()
    before = _state(net)
    with model_guard(net, freeze_grad=True, what="outer") as mods:
        assert not any(p.requires_grad for p in net.parameters()) and not net.training
        with model_guard(net):
            pass
        assert not net.training and len(mods) == len(list(net.modules()))
    _assert_state(before, net)


# -- layouts ------------------------------------------------------------------------------------------
class NHWCNet(nn.Module):
    """conv (NCHW) -> permute to NHWC -> LayerNorm -> Linear(6 -> 9) -> GELU -> back to NCHW, as
    a ConvNeXt block; ``back`` exposes the Linear's output as channels-first for the oracle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.lin = nn.Linear(6, 9)
        self.act = nn.GELU()
        self.back = nn.Identity()
        self.fc = nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(self.norm(self.conv(x).permute(0, 2, 3, 1)))
        h = self.back(self.act(h).permute(0, 3, 1, 2))
        return self.fc(h.mean((2, 3)))


def _fit(model, layer, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LayerFactorAnalysis(model, layer, **kw).fit(x, n_factors=2, progress=False, batch_size=40)


def test_channels_last_refused_without_channel_dim_and_right_with_it(images):
    net = NHWCNet().eval()
    with pytest.raises(CaptumElfaError, match=r"nn.Linear.*\(120, 8, 8, 9\).*channel_dim=-1"):
        LayerFactorAnalysis(net, net.lin).fit(images, progress=False, batch_size=120)
    with pytest.raises(CaptumElfaError, match=r"looks channels-last.*channel_dim=-1"):
        LayerFactorAnalysis(net, net.act).fit(images, progress=False)
    got = _fit(net, net.act, images, channel_dim=-1)
    # the oracle: the same activations, permuted to NCHW by the model itself
    seen = []
    h = net.act.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        net(images)
    h.remove()
    acc = RunningMoments()
    acc.update(seen[0].permute(0, 3, 1, 2), 0)
    ref = LayerFactorAnalysis(net, net.back)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit_moments(acc.moments, n_factors=2, n_images=acc.images)
    assert got.activation_shape_ == (9, 8, 8) and got.n_channels_ == 9
    torch.testing.assert_close(got.mean_, ref.mean_, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.loadings_, ref.loadings_, rtol=1e-4, atol=1e-6)
    maps = got.attribute(images[:3])
    assert maps.shape == (3, 1, 8, 8)
    # and the channels-first layer after the permute back reads the same numbers without options
    back = _fit(net, net.back, images)
    torch.testing.assert_close(back.loadings_, got.loadings_, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(back.attribute(images[:3]), maps, rtol=1e-5, atol=1e-6)


def test_convnext_tiny_linear_layer():
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None).eval()
    layer = model.features[5][0].block[3]  # Linear on NHWC data
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(CaptumElfaError, match=r"\(2, 4, 4, 1536\).*channel_dim=-1"):
        with LayerCapture(model, layer, lambda a, i: None) as cap:
            cap.run(x, 0)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    got, raw = [], []
    h = layer.register_forward_hook(lambda m, i, o: raw.append(o.detach().clone()))
    with LayerCapture(model, layer, lambda a, i: got.append(a.clone()), channel_dim=-1) as cap:
        cap.run(x, 0)
    h.remove()
    assert got[0].shape == (2, 1536, 4, 4)
    assert torch.equal(got[0], raw[0].permute(0, 3, 1, 2))
    # the channels-first block output (after the Permute back) needs no option
    with LayerCapture(model, model.features[5][0], lambda a, i: got.append(a)) as cap:
        cap.run(x, 0)
    assert got[1].shape == (2, 384, 4, 4)


def test_layout_rules():
    conv, lin, ln = nn.Conv1d(3, 4, 1), nn.Linear(3, 64), nn.LayerNorm(64)
    assert resolve_channel_dim((5, 7)) == 1
    assert resolve_channel_dim((5, 4, 100), module=conv) == 1
    assert resolve_channel_dim((5, 64, 7, 7)) == 1
    assert resolve_channel_dim((5, 3, 224, 224)) == 1  # an image-like NCHW output is not flagged
    assert resolve_channel_dim((5, 7, 7, 64), channel_dim=-1) == 3
    assert resolve_channel_dim((5, 7, 7, 64), channel_dim=1) == 1  # the user's word is taken
    for shape, module, match in (
        ((5, 7, 7, 64), None, "looks channels-last"),
        ((5, 7, 7, 64), lin, "nn.Linear"),
        ((5, 197, 64), ln, r"tokens \(N, L, C\).*channel_dim=-1"),
        ((5, 197, 64), None, "ambiguous.*channel_dim=1.*channel_dim=-1"),
        ((5, 4, 4, 4, 32), None, "looks channels-last"),
        ((5,), None, "expected"),
    ):
        with pytest.raises(CaptumElfaError, match=match):
            resolve_channel_dim(shape, module=module)
    with pytest.raises(CaptumElfaError, match="batch dimension"):
        resolve_channel_dim((5, 3, 4), channel_dim=0)
    a = torch.randn(2, 5, 3, 4, 6)  # (N, C, D, H, W) -> (N, C, D*H, W)
    assert torch.equal(to_nchw(a, 1), a.reshape(2, 5, 12, 6))
    t = torch.randn(2, 10, 8)  # 1 CLS + 3x3 tokens, 8 channels
    assert torch.equal(to_nchw(t, -1, "auto", 1), t[:, 1:].permute(0, 2, 1).reshape(2, 8, 3, 3))
    assert torch.equal(to_nchw(t, -1, (9, 1), 1), to_nchw(t, -1, None, 1))
    with pytest.raises(CaptumElfaError, match="drop_tokens=1"):
        to_nchw(t, -1, "auto")
    with pytest.raises(CaptumElfaError, match=r"token_grid=\(2, 2\) holds 4 tokens"):
        to_nchw(t, -1, (2, 2), 1)
    with pytest.raises(CaptumElfaError, match="complex"):
        to_nchw(torch.randn(2, 3, 4, 4, dtype=torch.complex64))


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    ).eval()


def test_vit_block_tokens_on_their_grid():
    vit = _vit()
    layer = vit.encoder.layers[1]
    x = torch.randn(120, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(CaptumElfaError, match=r"\(40, 17, 16\) is ambiguous.*channel_dim=-1"):
        LayerFactorAnalysis(vit, layer).fit(x, progress=False, batch_size=40)
    with pytest.raises(CaptumElfaError, match="17 tokens.*drop_tokens=1"):
        LayerFactorAnalysis(vit, layer, channel_dim=-1, token_grid="auto").fit(x, progress=False)
    got = _fit(vit, layer, x, channel_dim=-1, drop_tokens=1, token_grid="auto")
    seen = []
    h = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        vit(x)
    h.remove()
    patches = seen[0][:, 1:]  # the CLS token is left out; every patch token is a sample
    acc = RunningMoments()
    acc.update(patches.permute(0, 2, 1).reshape(120, 16, 4, 4), 0)
    ref = LayerFactorAnalysis(vit, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit_moments(acc.moments, n_factors=2, n_images=acc.images)
    assert got.activation_shape_ == (16, 4, 4) and got.n_samples_ == 120 * 16
    torch.testing.assert_close(got.mean_, patches.double().mean((0, 1)), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got.loadings_, ref.loadings_, rtol=1e-4, atol=1e-6)
    maps = got.attribute(x[:3])
    assert maps.shape == (3, 1, 4, 4)
    # EFAM of the ViT block, upsampled onto the input like a conv map
    expl = analyze(x[:3], EFAM(got))
    assert expl.val.shape == (3, 1, 32, 32)
    torch.testing.assert_close(expl.extras["layer_attribution"], maps)
    # without a grid the tokens are a sequence (N, C, L, 1): the same statistics
    seq = _fit(vit, layer, x, channel_dim=-1, drop_tokens=1)
    torch.testing.assert_close(seq.loadings_, got.loadings_, rtol=1e-4, atol=1e-6)
    assert seq.attribute(x[:2]).shape == (2, 1, 16, 1)


# -- modules called several times ----------------------------------------------------------------------
def test_call_index_and_changing_call_counts():
    act = nn.Tanh()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = act
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x, times: int = 2):
            for _ in range(times):
                x = self.act(self.conv(x))
            return x

    net = Net().eval()
    x = torch.randn(4, 2, 3, 3)
    for ci in (0, 1, -1, -2):
        got, ref = [], []
        h = act.register_forward_hook(lambda m, i, o, ref=ref: ref.append(o.detach().clone()))
        with LayerCapture(net, act, lambda a, i, got=got: got.append(a.clone()), call_index=ci) as cap:
            for b in range(2):
                cap.run(x, b)
        h.remove()
        assert len(got) == 2 and torch.equal(got[0], ref[ci % 2]) and torch.equal(got[1], ref[2 + ci % 2])
    with pytest.raises(CaptumElfaError, match="called 3 times in batch 1 but 2 times in the first batch"):
        with LayerCapture(net, act, lambda a, i: None, call_index=-1) as cap:
            cap.run(x, 0, 2)
            cap.run(x, 1, 3)
    assert len(act._forward_hooks) == 0


# -- batches and additional arguments ---------------------------------------------------------------------
class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x, scale, shift: float = 0.0):
        h = torch.tanh(self.conv(x * scale[:, None, None, None]) + shift)
        return self.fc(h.mean((2, 3)))


def test_per_sample_additional_args_split_with_the_batches(images):
    net = Scaled().eval()
    scale = torch.linspace(0.5, 2.0, images.shape[0])
    args = (scale, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = LayerFactorAnalysis(net, net.conv).fit(
            images, n_factors=2, progress=False, batch_size=images.shape[0], additional_forward_args=args
        )
        parts = LayerFactorAnalysis(net, net.conv).fit(
            images, n_factors=2, progress=False, batch_size=7, additional_forward_args=args
        )
    with torch.no_grad():
        ref = net.conv(images * scale[:, None, None, None])
    torch.testing.assert_close(parts.mean_, ref.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(parts.loadings_, whole.loadings_, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        parts.attribute(images, additional_forward_args=args, batch_size=5),
        whole.attribute(images, additional_forward_args=args, batch_size=200),
    )
    maps = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    a = deletion_curve(
        net, images[:12], maps, target=0, steps=4, batch_size=5, additional_forward_args=(scale[:12], 0.1)
    )
    b = deletion_curve(
        net, images[:12], maps, target=0, steps=4, batch_size=64, additional_forward_args=(scale[:12], 0.1)
    )
    torch.testing.assert_close(a[1], b[1])
    pairs = list(iter_batches_with_args(images[:10], 4, (scale[:10], scale)))
    assert [p[1][0].tolist() for p in pairs] == [scale[:10][i : i + 4].tolist() for i in (0, 4, 8)]
    assert all(p[1][1] is scale for p in pairs)  # not per-sample (first dim 120 != 10): unchanged


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(images):
    net = BNNet().eval()
    lfa = _fit(net, net.relu2, images)
    with pytest.raises(CaptumElfaError, match=r"uint8.*x.float\(\) / 255"):
        LayerFactorAnalysis(net, net.relu2).fit((images * 255).to(torch.uint8), progress=False)
    with pytest.raises(CaptumElfaError, match=r"numpy.*torch.from_numpy"):
        LayerFactorAnalysis(net, net.relu2).fit(images.numpy(), progress=False)
    with pytest.raises(CaptumElfaError, match=r"numpy.*torch.from_numpy"):
        analyze(images.numpy()[:2], Gradient(net))
    with pytest.raises(CaptumElfaError, match=r"uint8.*/ 255"):
        analyze((images[:2] * 255).to(torch.uint8), Gradient(net))
    for call in (
        lambda: LayerFactorAnalysis(net, net.relu2).fit(images, batch_size=0, progress=True),
        lambda: NeuronPCACE(net, net.relu2).attribute(images, target=1, batch_size=0, progress=True),
        lambda: compare_layers(net, [net.relu2], images, target=1, batch_size=0),
        lambda: deletion_curve(net, images[:2], torch.rand(2, 1, 8, 8), batch_size=0),
        lambda: lfa.attribute(images[:2], batch_size=0),
        lambda: iter_batches(images, 0),
    ):
        with pytest.raises(CaptumElfaError, match="batch_size"):
            call()
    with pytest.raises(CaptumElfaError, match="no positional argument after inputs.*factors="):
        lfa.attribute(images[:2], 1)
    assert lfa.attribute(images[:2], factors=1).shape == (2, 1, 8, 8)

    class Complex(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x)

    c = nn.Sequential(nn.Conv2d(1, 4, 3), Complex())
    with pytest.raises(CaptumElfaError, match="complex"):
        LayerFactorAnalysis(c, c[1]).fit(images, progress=False)


# -- distributed: a rank failing its checks must not leave the others waiting --------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RANK_CASES = (
    "n_factors",
    "layer",
    "batch_size",
    "pcace_target_type",
    "pcace_target_range",
    "interrupt_fit",
    "interrupt_pcace",
    "none",
)


def _rank_main(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        net = BNNet().eval()
        x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(rank))
        # rank 1 fails a cheap check (before any collective) or is interrupted in each case; the
        # last case is fine
        for case in _RANK_CASES:
            kw = {"n_factors": 2, "batch_size": 16}
            layer = net.relu2
            target: object = 1
            net.fail_at, net.interrupt, net.calls = -1, False, 0
            if rank == 1 and case == "n_factors":
                kw["n_factors"] = 0
            if rank == 1 and case == "layer":
                layer = nn.ReLU()
            if rank == 1 and case == "batch_size":
                kw["batch_size"] = 0
            if rank == 1 and case == "pcace_target_type":
                target = 2.0
            if rank == 1 and case == "pcace_target_range":
                target = 99  # 5 outputs: found at the first batch, inside the capture
            if rank == 1 and case.startswith("interrupt"):
                net.fail_at, net.interrupt = 1, True  # KeyboardInterrupt in the second batch
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if case.startswith("pcace") or case == "interrupt_pcace":
                        NeuronPCACE(net, net.relu2).attribute(x, target=target, progress=False, batch_size=16)
                    else:
                        LayerFactorAnalysis(net, layer).fit(x, progress=False, **kw)
                out[(rank, case)] = ("ok", "")
            except BaseException as e:  # KeyboardInterrupt included
                out[(rank, case)] = (type(e).__name__, str(e))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10-25 s on 2 busy cores
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_rank_failing_its_checks_does_not_block_the_others():
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_rank_main, args=(r, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(50)
        hung = [p.is_alive() for p in procs]  # a blocked rank would wait the group's 60 s per case
        for p in procs:
            if p.is_alive():
                p.kill()
        res = dict(out)
    assert not any(hung), res
    for case, match in (
        ("n_factors", "n_factors=0"),
        ("layer", "not a submodule"),
        ("batch_size", "batch_size"),
        ("pcace_target_type", "target="),
        ("pcace_target_range", "99"),
        ("interrupt_fit", ""),
        ("interrupt_pcace", ""),
    ):
        kind = "KeyboardInterrupt" if case.startswith("interrupt") else "CaptumElfaError"
        assert res[(1, case)][0] == kind and match in res[(1, case)][1], res[(1, case)]
        assert res[(0, case)][0] == "DistributedError", res[(0, case)]
    assert res[(0, "none")] == res[(1, "none")] == ("ok", "")  # the group is usable afterwards


def test_swin_block_is_channels_last():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    block = model.features[1][0]  # SwinTransformerBlock: (N, 16, 16, 96) at 64 px
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(CaptumElfaError, match=r"\(2, 16, 16, 96\) looks channels-last.*channel_dim=-1"):
        with LayerCapture(model, block, lambda a, i: None) as cap:
            cap.run(x, 0)
    got, raw = [], []
    h = block.register_forward_hook(lambda m, i, o: raw.append(o.detach().clone()))
    with LayerCapture(model, block, lambda a, i: got.append(a.clone()), channel_dim=-1) as cap:
        cap.run(x, 0)
    h.remove()
    assert torch.equal(got[0], raw[0].permute(0, 3, 1, 2))


class _Counting(nn.Module):
    """conv -> relu (called twice) -> head; counts the head's calls and swallows Exceptions
    around the body, as some user models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 2)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            h = self.relu(self.relu(self.conv(x)) - 0.1)
        except Exception:  # noqa: BLE001 - must not swallow the capture's stop
            raise AssertionError("the stop signal was caught as an Exception") from None
        self.head_calls += 1
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("call_index", [0, -1])
def test_stop_early_skips_the_rest_of_the_network_with_identical_activations(call_index: int) -> None:
    model = _Counting().eval()
    x = torch.randn(12, 3, 10, 10)
    runs = {}
    for stop in (False, True):
        got: list = []
        model.head_calls = 0
        with LayerCapture(
            model, model.relu, lambda a, i, got=got: got.append(a.clone()), call_index=call_index, stop_early=stop
        ) as cap:
            outs = [cap.run(b, i) for i, b in enumerate(torch.split(x, 4))]
        runs[stop] = (got, model.head_calls, outs)
    full, stopped = runs[False], runs[True]
    assert full[1] == 3 and stopped[1] == 1  # only the first batch runs to the end
    assert stopped[2][0] is not None and stopped[2][1] is None and stopped[2][2] is None
    assert len(stopped[0]) == 3 and all(torch.equal(a, b) for a, b in zip(full[0], stopped[0]))
    # LayerFactorAnalysis fits with the early stop: same moments as a full pass
    lfa = LayerFactorAnalysis(model, model.relu, call_index=call_index).fit(
        x, n_factors=2, batch_size=4, progress=False
    )
    assert model.training is False and lfa.n_images_ == 12
