"""analyze / Explanation / analyzers against the raw Captum calls (captum 0.8 and 0.9)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from captum.attr import InputXGradient, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from captum.attr import IntegratedGradients as CaptumIG
from torch import nn

from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.analyze import (
    EFAM,
    Explanation,
    GradCAM,
    Gradient,
    InputTimesGradient,
    IntegratedGradients,
    InterpolationAugmentation,
    NoiseAugmentation,
    SmoothGrad,
    analyze,
)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        out = self.fc(h.flatten(1))
        return out if scale is None else out * scale[:, None]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the tensors are tiny: torch's thread pool only adds contention on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 8, 8, generator=g)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# -- every analyzer against Captum -------------------------------------------------------------
def test_gradient_is_signed_saliency_with_argmax_target(model, x):
    expl = analyze(x, Gradient(model))
    top = model(x).argmax(dim=1)
    _close(expl.val, Saliency(model).attribute(_leaf(x), target=top, abs=False))
    assert torch.equal(expl.target, top)
    assert (expl.val < 0).any()  # signed, not abs
    assert expl.method == "Gradient" and expl.heatmap == "sensitivity"


def test_input_times_gradient_matches_captum(model, x):
    expl = analyze(x, InputTimesGradient(model), target=4)
    _close(expl.val, InputXGradient(model).attribute(_leaf(x), target=4))
    assert expl.target.tolist() == [4, 4, 4]
    assert expl.method == "InputTimesGradient" and expl.heatmap == "attribution"


@pytest.mark.parametrize("batch_size", [None, 2])
def test_smoothgrad_matches_noise_tunnel_saliency(model, x, batch_size):
    torch.manual_seed(11)
    expl = analyze(x, SmoothGrad(model, n=5, std=0.3, batch_size=batch_size), target=[1, 2, 3])
    torch.manual_seed(11)
    ref = NoiseTunnel(Saliency(model)).attribute(
        _leaf(x),
        nt_type="smoothgrad",
        nt_samples=5,
        nt_samples_batch_size=batch_size,
        stdevs=0.3,
        target=torch.tensor([1, 2, 3]),
        abs=False,
    )
    _close(expl.val, ref)
    assert expl.method == "SmoothGrad" and expl.heatmap == "sensitivity"
    assert not torch.allclose(expl.val, analyze(x, Gradient(model), target=[1, 2, 3]).val)


def test_integrated_gradients_matches_captum(model, x):
    expl = analyze(x, IntegratedGradients(model, n=8))
    top = model(x).argmax(dim=1)
    ref, delta = CaptumIG(model).attribute(x, target=top, n_steps=8, return_convergence_delta=True)
    _close(expl.val, ref)
    _close(expl.extras["convergence_delta"], delta)
    assert expl.method == "IntegratedGradients" and expl.heatmap == "attribution"


def test_integrated_gradients_with_per_sample_baseline(model, x):
    base = 0.1 * torch.arange(3.0)[:, None, None, None].expand(3, 1, 8, 8)
    expl = analyze(x, IntegratedGradients(model, n=6, baseline=base, method="riemann_trapezoid"), 2)
    ref = CaptumIG(model).attribute(x, baselines=base, target=2, n_steps=6, method="riemann_trapezoid")
    _close(expl.val, ref)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_is_upsampled_layer_gradcam(model, x, relu):
    expl = analyze(x, GradCAM(model, model.conv2, relu_attributions=relu), target=7)
    layer = LayerGradCam(model, model.conv2).attribute(x, target=7, relu_attributions=relu)
    _close(expl.extras["layer_attribution"], layer)
    _close(expl.val, LayerAttribution.interpolate(layer, (8, 8), "bilinear"))
    assert layer.shape == (3, 1, 4, 4) and expl.val.shape == (3, 1, 8, 8)
    assert expl.method == "GradCAM" and expl.heatmap == "cam"
    assert (expl.val >= 0).all() if relu else (layer < 0).any()


def test_noise_augmentation_of_input_times_gradient(model, x):
    torch.manual_seed(5)
    expl = analyze(x, NoiseAugmentation(InputTimesGradient(model), 4, 0.2), target=0)
    torch.manual_seed(5)
    ref = NoiseTunnel(InputXGradient(model)).attribute(_leaf(x), nt_samples=4, stdevs=0.2, target=0)
    _close(expl.val, ref)
    assert expl.method == "NoiseAugmentation(InputTimesGradient)" and expl.heatmap == "attribution"


def test_noise_augmentation_with_distribution_and_callable(model, x):
    dist = torch.distributions.Uniform(-0.5, 0.5)
    torch.manual_seed(3)
    expl = analyze(x, NoiseAugmentation(Gradient(model), 3, dist), target=1)
    torch.manual_seed(3)
    noisy = x.repeat_interleave(3, dim=0) + dist.sample(torch.Size((9, 1, 8, 8)))
    grads = Saliency(model).attribute(_leaf(noisy), target=1, abs=False)
    _close(expl.val, grads.view(3, 3, 1, 8, 8).mean(dim=1))
    # zero noise from a callable: the average of identical gradients is the gradient
    zero = analyze(x, NoiseAugmentation(Gradient(model), 4, lambda shape: torch.zeros(shape)), 1)
    _close(zero.val, analyze(x, Gradient(model), 1).val)


@pytest.mark.parametrize(
    "method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
def test_interpolation_of_gradient_is_captum_ig(model, x, method):
    aug = InterpolationAugmentation(Gradient(model), 7, baseline=0.25, method=method, batch_size=5)
    expl = analyze(x, aug, target=3)
    _close(expl.val, CaptumIG(model).attribute(x, baselines=0.25, target=3, n_steps=7, method=method))
    assert expl.method == "InterpolationAugmentation(Gradient)" and expl.heatmap == "attribution"


def test_interpolation_linspace_is_explainableai_definition(model, x):
    n, base = 4, torch.full((1, 8, 8), -0.5)
    expl = analyze(x, InterpolationAugmentation(InputTimesGradient(model), n, base, "linspace"), 6)
    ref = torch.zeros_like(x)
    for i in range(n):
        point = base + (i / (n - 1)) * (x - base)
        ref += InputXGradient(model).attribute(_leaf(point), target=6) / n
    _close(expl.val, ref * (x - base))


def test_nested_augmentations_match_noise_tunnel_of_ig(model, x):
    base = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    inner = InterpolationAugmentation(Gradient(model), 5, baseline=base, method="riemann_right")
    torch.manual_seed(2)
    expl = analyze(x, NoiseAugmentation(inner, 4, 0.2), target=[0, 5, 9])
    torch.manual_seed(2)
    ref = NoiseTunnel(CaptumIG(model)).attribute(
        x,
        nt_samples=4,
        stdevs=0.2,
        baselines=base,
        target=torch.tensor([0, 5, 9]),
        n_steps=5,
        method="riemann_right",
    )
    _close(expl.val, ref)


def test_additional_forward_args_reach_the_model(model, x):
    scale = torch.tensor([1.0, -2.0, 0.5])
    expl = analyze(x, SmoothGrad(model, 3, 0.0), target=2, additional_forward_args=scale)
    ref = Saliency(model).attribute(_leaf(x), target=2, abs=False, additional_forward_args=(scale,))
    _close(expl.val, ref)
    _close(expl.output, model(x, scale))


# -- raw Captum objects, callables, targets, Explanation -----------------------------------------
def test_raw_captum_attributions(model, x):
    top = model(x).argmax(dim=1)
    expl = analyze(x, Saliency(model))
    _close(expl.val, Saliency(model).attribute(_leaf(x), target=top))
    assert (expl.method, expl.heatmap) == ("Saliency", "sensitivity")
    cam = analyze(x, LayerGradCam(model, model.conv2), target=1)
    assert (cam.method, cam.heatmap, cam.val.shape) == ("LayerGradCam", "cam", (3, 1, 4, 4))
    assert analyze(x, CaptumIG(model), n_steps=4).heatmap == "attribution"
    torch.manual_seed(8)
    tunnel = analyze(x, NoiseTunnel(Saliency(model)), nt_samples=3, stdevs=0.1, abs=False)
    torch.manual_seed(8)
    ref = NoiseTunnel(Saliency(model)).attribute(_leaf(x), nt_samples=3, stdevs=0.1, abs=False, target=top)
    _close(tunnel.val, ref)
    assert (tunnel.method, tunnel.heatmap) == ("NoiseTunnel(Saliency)", "sensitivity")


def test_analyzers_are_callable(model, x):
    a = InputTimesGradient(model)
    assert torch.equal(a(x, 5).val, analyze(x, a, 5).val)
    assert a(x).target.tolist() == model(x).argmax(1).tolist()


def test_targets_and_explanation_fields(model, x):
    out = model(x)
    expl = analyze(x, Gradient(model), target=torch.tensor([9, 0, 4]))
    assert isinstance(expl, Explanation)
    assert expl.target.dtype == torch.long and expl.target.tolist() == [9, 0, 4]
    _close(expl.output, out)
    assert expl.val.shape == x.shape and not expl.val.requires_grad
    assert expl.extras == {}
    assert analyze(x, Gradient(model), target=[9, 0, 4]).target.tolist() == [9, 0, 4]
    assert analyze(x, Gradient(model), target=torch.tensor(2)).target.tolist() == [2, 2, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        expl.method = "other"  # type: ignore[misc]
    assert "Gradient" in repr(expl)


def test_scalar_output_model():
    torch.manual_seed(0)
    reg = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    x = torch.randn(2, 1, 2, 2)
    expl = analyze(x, Gradient(reg))
    assert expl.target is None and expl.output.shape == (2,)
    _close(expl.val, Saliency(reg).attribute(_leaf(x), abs=False))
    with pytest.raises(CaptumElfaError, match="one output per sample"):
        analyze(x, Gradient(reg), target=0)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,count", [(float("nan"), "1 NaN"), (float("inf"), "1 Inf")])
def test_non_finite_inputs(model, x, bad, count):
    y = x.clone()
    y[1, 0, 2, 3] = bad
    with pytest.raises(CaptumElfaError, match=rf"{count}.*\(1, 0, 2, 3\)"):
        analyze(y, Gradient(model))


@pytest.mark.parametrize(
    "target,match",
    [
        (10, r"target=10 is outside.*0\.\.9"),
        (-1, r"target=-1 is outside"),
        (torch.tensor([1, 12, 0]), r"target\[1\]=12 is outside.*0\.\.9"),
        ([1, 2], r"shape \(2,\).*3 samples"),
        (torch.tensor([[1, 2, 3]]), r"shape \(1, 3\)"),
        (torch.tensor([1.0, 2.0, 3.0]), "dtype torch.float32"),
        (True, "target=True"),
        ("cat", "got str"),
    ],
)
def test_bad_targets(model, x, target, match):
    with pytest.raises(CaptumElfaError, match=match):
        analyze(x, Gradient(model), target=target)


def test_bad_analyzers_and_arguments(model, x):
    for bad in ("Gradient", model, lambda t: t):
        with pytest.raises(CaptumElfaError, match="analyzer must be one of"):
            analyze(x, bad)
    with pytest.raises(CaptumElfaError, match=r"n=0 .*>= 1"):
        SmoothGrad(model, n=0)
    with pytest.raises(CaptumElfaError, match=r"n=2.5"):
        IntegratedGradients(model, n=2.5)
    with pytest.raises(CaptumElfaError, match=r"n=True"):
        NoiseAugmentation(Gradient(model), True)
    with pytest.raises(CaptumElfaError, match=r"std=-0.1 .*>= 0"):
        SmoothGrad(model, std=-0.1)
    with pytest.raises(CaptumElfaError, match=r"std=nan"):
        NoiseAugmentation(Gradient(model), 3, float("nan"))
    with pytest.raises(CaptumElfaError, match=r"n=1 .*>= 2"):
        InterpolationAugmentation(Gradient(model), 1, method="linspace")
    with pytest.raises(CaptumElfaError, match=r"method='simpson'.*riemann_middle"):
        InterpolationAugmentation(Gradient(model), 4, method="simpson")
    with pytest.raises(CaptumElfaError, match="takes the model"):
        SmoothGrad(Gradient(model))
    with pytest.raises(CaptumElfaError, match=r"interpolate_mode='cubic'.*'bilinear'"):
        GradCAM(model, model.conv2, interpolate_mode="cubic")
    assert SmoothGrad(model, 2, torch.tensor(0.5)).std == 0.5
    with pytest.raises(CaptumElfaError, match="not a submodule"):
        GradCAM(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(CaptumElfaError, match="needs a fitted"):
        EFAM(model)
    with pytest.raises(CaptumElfaError, match=r"baseline has shape \(2, 1, 8, 8\)"):
        analyze(x, IntegratedGradients(model, 4, baseline=torch.zeros(2, 1, 8, 8)))
    with pytest.raises(CaptumElfaError, match="only to raw Captum"):
        analyze(x, Gradient(model), nt_samples=3)
    with pytest.raises(CaptumElfaError, match=r"distribution has shape \(2,\)"):
        analyze(x, NoiseAugmentation(Gradient(model), 2, torch.distributions.Normal(torch.zeros(2), 1.0)))
    with pytest.raises(CaptumElfaError, match="dtype torch.int64"):
        analyze(torch.ones(2, 1, 8, 8, dtype=torch.long), Gradient(model))
    with pytest.raises(CaptumElfaError, match=r"numpy ndarray; convert it, e.g. torch.from_numpy\(x\).float\(\)"):
        analyze(x.numpy(), Gradient(model))
    with pytest.raises(CaptumElfaError, match="must be a torch.Tensor"):
        analyze([[0.0]], Gradient(model))
    with pytest.raises(CaptumElfaError, match="layer map has shape"):
        analyze(x, GradCAM(model, model.fc))


# -- the model and the inputs are left as they were ------------------------------------------------
def _hooks(m: nn.Module) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) + len(mod._backward_hooks) for mod in m.modules())


def test_model_and_inputs_unchanged(x):
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    model.conv1.eval()
    model.conv1.weight.requires_grad_(False)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training) for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    hooks = _hooks(model)
    y = x.clone()
    z = x.clone().requires_grad_()
    analyzers = [
        Gradient(model),
        InputTimesGradient(model),
        SmoothGrad(model, 2, 0.1),
        IntegratedGradients(model, 3),
        GradCAM(model, model.conv2),
        NoiseAugmentation(GradCAM(model, model.conv2), 2, 0.1),
        InterpolationAugmentation(InputTimesGradient(model), 3),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no "did not already require gradients" warning either
        for a in analyzers + [Saliency(model)]:
            for inp in (y, z):
                analyze(inp, a)
    # the train-mode model is explained in eval mode, and says so; no other warning
    assert caught and all("is in training mode; analyze runs it in eval mode" in str(w.message) for w in caught)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert _hooks(model) == hooks == 0
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert not y.requires_grad and y.grad is None and torch.equal(y, x)
    assert z.requires_grad and z.grad is None and torch.equal(z.detach(), x)


def test_flags_restored_when_the_analyzer_fails(x):
    model = SmallCNN().eval()
    p = model.fc.weight

    class Failing(Gradient):
        def _attribute(self, inputs, target, afa, rows, extras):
            model.train()
            p.requires_grad_(False)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        analyze(x, Failing(model))
    assert not model.training and p.requires_grad


# -- EFAM over a fitted LayerFactorAnalysis ----------------------------------------------------------
def test_efam_is_upsampled_lfa_map(model, x):
    from captum_elfa.attr.layer_factor_analysis import LayerFactorAnalysis

    data = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    lfa = LayerFactorAnalysis(model, model.conv2).fit(data, n_factors=1, progress=False)
    expl = analyze(x, EFAM(lfa))
    layer = lfa.attribute(x)
    _close(expl.extras["layer_attribution"], layer)
    _close(expl.val, LayerAttribution.interpolate(layer, (8, 8), "bilinear"))
    assert (expl.method, expl.heatmap, expl.val.shape) == ("EFAM", "cam", (3, 1, 8, 8))
    assert torch.equal(expl.target, model(x).argmax(dim=1))
    per_factor = analyze(x, EFAM(lfa, factors="all", normalize="max"), target=0)
    _close(per_factor.extras["layer_attribution"], lfa.attribute(x, factors="all", normalize="max"))
    assert per_factor.val.shape == (3, 1, 8, 8) and per_factor.target.tolist() == [0, 0, 0]
    with pytest.raises(CaptumElfaError, match=r"EFAM\(lfa\)"):
        analyze(x, lfa)
    with pytest.raises(CaptumElfaError, match="fit"):
        EFAM(LayerFactorAnalysis(model, model.conv2))
