"""Image synthesis (captum_elfa.optim): intrinsic features inversion and activation maximisation."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from captum_elfa import LayerFactorAnalysis
from captum_elfa._validation import CaptumElfaError, NotFittedError
from captum_elfa.attr.neuron_pcace import ChannelRanking
from captum_elfa.optim import (
    ActivationMaxResult,
    Compose,
    FFTImage,
    InversionResult,
    Jitter,
    RandomRotate,
    RandomScale,
    color_decorrelation_matrix,
    fft_image,
    invert_factor,
    maximize_channel,
    maximize_channels,
    pixel_image,
    standard_transforms,
)
from captum_elfa.optim.param import COLOR_CORRELATION_SVD_SQRT
from helpers import SmallCNN, assert_same_state, model_state

STEPS = 60


class RGBNet(nn.Module):
    """conv(3->8) -> ReLU(inplace) -> conv(8->12) -> ReLU(inplace) -> pool -> linear, on 3x32x32."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))


def smooth_rgb_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1] (upsampled noise), 3x32x32."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 8, 8), generator=g)
    return torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the images are tiny: torch's thread pool only adds contention on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_lfa(digits):
    x, _ = digits
    model = SmallCNN().eval()
    lfa = LayerFactorAnalysis(model, model.conv2).fit(x[:300], n_factors=3, progress=False)
    return model, lfa


@pytest.fixture(scope="module")
def rgb_lfa():
    model = RGBNet().eval()
    lfa = LayerFactorAnalysis(model, model.conv2).fit(smooth_rgb_images(64), n_factors=1, progress=False)
    return model, lfa


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# parameterisation and transforms
# ----------------------------------------------------------------------------------------------
def test_color_decorrelation_matrix():
    m = color_decorrelation_matrix(3).double()
    ref = COLOR_CORRELATION_SVD_SQRT / torch.linalg.norm(COLOR_CORRELATION_SVD_SQRT, dim=0).max()
    assert torch.allclose(m, ref, atol=1e-7)
    assert torch.linalg.norm(m, dim=0).max() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(color_decorrelation_matrix(1), torch.eye(1))


def test_fft_image_is_seeded_valid_and_decorrelated():
    a, b, c = fft_image((3, 16, 16), seed=1)(), fft_image((3, 16, 16), seed=1)(), fft_image((3, 16, 16), seed=2)()
    assert a.shape == (1, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() > 0 and a.max() < 1
    p = fft_image((2, 3, 16, 16), sd=0.5, seed=0, value_range=(-1.0, 1.0))
    img = p()
    assert img.shape == (2, 3, 16, 16) and img.min() > -1 and img.max() < 1
    # colour: the pre-sigmoid image is the decorrelation matrix applied to independent channels
    pd = fft_image((3, 16, 16), sd=0.5, seed=0, decorrelate=False)
    raw = torch.logit(pd().detach().double())
    mixed = torch.einsum("dc,nchw->ndhw", color_decorrelation_matrix(3).double(), raw)
    pc = fft_image((3, 16, 16), sd=0.5, seed=0)
    assert torch.allclose(torch.logit(pc().detach().double()), mixed, atol=1e-4)


def test_fft_image_is_an_inverse_fft():
    p = FFTImage((1, 6, 7), sd=0.3, decay_power=0.0, seed=3)  # decay 0: no frequency scaling
    spec = torch.view_as_complex(p.spectrum.detach())
    expected = torch.fft.irfft2(spec, s=(6, 7), norm="ortho") / 4.0
    assert torch.allclose(torch.logit(p().detach().double()), expected.double(), atol=1e-4)
    assert list(p.parameters()) == [p.spectrum]


def test_pixel_image_init_and_range():
    p = pixel_image((1, 4, 4), seed=0, value_range=(-1.0, 1.0))
    assert p().shape == (1, 1, 4, 4) and p().abs().max() < 0.1
    init = torch.linspace(-2, 2, 16).reshape(1, 4, 4)
    q = pixel_image((1, 4, 4), init=init, value_range=(-1.0, 1.0))
    assert torch.equal(q().detach(), init.clamp(-1, 1)[None])
    with pytest.raises(CaptumElfaError):
        pixel_image((1, 4, 4), init=torch.zeros(1, 5, 5))


def test_transforms_seeded_and_shape_preserving():
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    j = Jitter(2)(x, torch.Generator().manual_seed(5))
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(j, torch.roll(x, (dy, dx), (2, 3)))
    for t in (RandomScale([0.8]), RandomScale([1.3]), RandomRotate([10]), standard_transforms(12)):
        y1 = t(x, torch.Generator().manual_seed(1))
        y2 = t(x, torch.Generator().manual_seed(1))
        assert y1.shape == x.shape and torch.equal(y1, y2)
    assert torch.equal(RandomRotate([0])(x, torch.Generator()), x)
    assert torch.equal(RandomScale([1.0])(x, torch.Generator()), x)
    # a rotation by 90 degrees of a square image is a permutation of its pixels
    r = RandomRotate([90])(x, torch.Generator())
    assert torch.allclose(r, torch.rot90(x, 1, (2, 3)), atol=1e-5) or torch.allclose(
        r, torch.rot90(x, -1, (2, 3)), atol=1e-5
    )
    c = Compose([Jitter(1), RandomRotate([5, -5])])
    outs = {bytes(c(x, torch.Generator().manual_seed(s)).numpy().tobytes()) for s in range(6)}
    assert len(outs) > 1
    # gradients flow through every transform
    xg = x.clone().requires_grad_(True)
    standard_transforms(12)(xg, torch.Generator().manual_seed(0)).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    with pytest.raises(CaptumElfaError):
        Jitter(-1)
    with pytest.raises(CaptumElfaError):
        RandomScale([0.0])


# ----------------------------------------------------------------------------------------------
# intrinsic features inversion
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["fft", "pixel"])
@pytest.mark.parametrize("standardize", [True, False])
def test_inversion_improves_objective(digits_lfa, method, standardize):
    _, lfa = digits_lfa
    res = invert_factor(lfa, 1, (1, 8, 8), steps=STEPS, method=method, standardize=standardize, progress=False)
    assert isinstance(res, InversionResult)
    assert res.image.shape == (1, 1, 8, 8)
    assert res.image.min() >= 0 and res.image.max() <= 1
    assert len(res.losses) == STEPS and all(math.isfinite(v) for v in res.losses)
    assert res.final_loss < 0.85 * res.initial_loss
    assert res.losses[-1] < res.losses[0]


def test_inversion_loss_matches_definition(digits_lfa):
    model, lfa = digits_lfa
    res = invert_factor(lfa, 0, (1, 8, 8), steps=3, method="pixel", progress=False)
    acts = []
    h = model.conv2.register_forward_hook(lambda m, i, o: acts.append(o.detach().double()))
    with torch.no_grad():
        model(res.image)
    h.remove()
    a = acts[0]
    std = lfa.std_.clone()
    z = (a - lfa.mean_[None, :, None, None]) / torch.where(std > 0, std, torch.ones_like(std))[None, :, None, None]
    t = lfa.loadings_[:, 0][None, :, None, None].expand_as(z)
    expected = ((z - t) ** 2).sum() / ((t**2).sum() + 1e-8)
    assert res.final_loss == pytest.approx(float(expected), rel=1e-4)
    raw = invert_factor(lfa, 0, (1, 8, 8), steps=1, method="pixel", standardize=False, progress=False)
    acts.clear()
    h = model.conv2.register_forward_hook(lambda m, i, o: acts.append(o.detach().double()))
    with torch.no_grad():
        model(raw.image)
    h.remove()
    expected_raw = ((acts[0] - t) ** 2).sum() / ((t**2).sum() + 1e-8)
    assert raw.final_loss == pytest.approx(float(expected_raw), rel=1e-4)


def test_pixel_method_is_the_reference_step(digits_lfa):
    """One step of method='pixel' is x <- clip(x - lr * g / std(g)) on the reference's loss."""
    model, lfa = digits_lfa
    init = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    res = invert_factor(
        lfa, 2, (1, 8, 8), steps=1, lr=0.01, method="pixel", standardize=False, init=init, progress=False
    )
    x = init.clone().requires_grad_(True)
    acts = []
    h = model.conv2.register_forward_hook(lambda m, i, o: acts.append(o))
    model(x)
    h.remove()
    t = lfa.loadings_[:, 2].float()[None, :, None, None].expand_as(acts[0])
    loss = ((acts[0] - t) ** 2).sum() / ((t**2).sum() + 1e-8)
    (g,) = torch.autograd.grad(loss, x)
    loss = loss.detach()
    expected = (init - 0.01 * g / (g.std(unbiased=False) + 1e-8)).clamp(0, 1)
    assert torch.allclose(res.image, expected, atol=1e-6)
    assert res.losses[0] == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["fft", "pixel"])
def test_inversion_deterministic_under_seed(digits_lfa, method):
    _, lfa = digits_lfa
    rng = torch.get_rng_state()
    a = invert_factor(lfa, 0, (1, 8, 8), steps=10, method=method, seed=3, progress=False)
    b = invert_factor(lfa, 0, (1, 8, 8), steps=10, method=method, seed=3, progress=False)
    c = invert_factor(lfa, 0, (1, 8, 8), steps=10, method=method, seed=4, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    assert torch.equal(a.image, b.image) and a.losses == b.losses
    assert not torch.equal(a.image, c.image)


def test_inversion_rgb_leaves_model_unchanged(rgb_lfa):
    model, lfa = rgb_lfa
    model.conv1.weight.requires_grad_(False)  # a partly frozen model must stay as it was
    model.fc.train()
    try:
        before = model_state(model)
        res = invert_factor(lfa, 0, (3, 32, 32), steps=STEPS, seed=0, progress=False, device="cpu")
        assert_same_state(before, model_state(model))
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.conv1.weight.requires_grad_(True)
        model.fc.eval()
    assert res.image.shape == (1, 3, 32, 32)
    # the random transforms trade some of the exact objective for robust images ...
    assert res.final_loss < 0.9 * res.initial_loss
    # ... without them the objective falls much further
    plain = invert_factor(lfa, 0, (3, 32, 32), steps=STEPS, seed=0, transforms=None, progress=False)
    assert plain.final_loss < 0.5 * plain.initial_loss
    # colour images: the channels are not identical (decorrelated colour parameterisation)
    assert not torch.allclose(res.image[0, 0], res.image[0, 1])
    fig = res.figure()
    assert len(fig.axes) == 2 and len(_png(fig)) > 1000


def test_inversion_restores_model_on_error_and_training_mode(digits_lfa):
    model, lfa = digits_lfa
    model.train()
    try:
        before = model_state(model)
        with pytest.warns(UserWarning, match="training mode"):
            invert_factor(lfa, 0, (1, 8, 8), steps=2, progress=False)
        assert_same_state(before, model_state(model))
        with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="training mode"):
            invert_factor(lfa, 0, (2, 8, 8), steps=2, progress=False)  # 2 channels for a 1-channel net
        assert_same_state(before, model_state(model))
    finally:
        model.eval()


def test_inversion_of_a_loaded_model(digits_lfa, tmp_path):
    model, lfa = digits_lfa
    lfa.save(tmp_path / "lfa.pt")
    loaded = LayerFactorAnalysis.load(tmp_path / "lfa.pt", model, model.conv2)
    a = invert_factor(lfa, 2, (1, 8, 8), steps=5, method="pixel", progress=False)
    b = invert_factor(loaded, 2, (1, 8, 8), steps=5, method="pixel", progress=False)
    assert torch.equal(a.image, b.image)


def test_inversion_progress_bar(digits_lfa, capsys):
    _, lfa = digits_lfa
    invert_factor(lfa, 0, (1, 8, 8), steps=2, progress=True)
    assert "invert factor 0" in capsys.readouterr().err


def test_inversion_errors(digits_lfa):
    model, lfa = digits_lfa
    for bad in (-1, lfa.n_factors_, True, 1.0):
        with pytest.raises(CaptumElfaError, match="factor"):
            invert_factor(lfa, bad, (1, 8, 8), steps=2, progress=False)
    with pytest.raises(NotFittedError):
        invert_factor(LayerFactorAnalysis(model, model.conv2), 0, (1, 8, 8), steps=2, progress=False)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(CaptumElfaError, match="steps"):
            invert_factor(lfa, 0, (1, 8, 8), steps=steps, progress=False)
    for lr in (0, -0.1, float("nan"), float("inf"), "0.1"):
        with pytest.raises(CaptumElfaError, match="lr"):
            invert_factor(lfa, 0, (1, 8, 8), lr=lr, steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="method"):
        invert_factor(lfa, 0, (1, 8, 8), method="adam", steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="shape"):
        invert_factor(lfa, 0, (8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="shape"):
        invert_factor(lfa, 0, (2, 1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="value_range"):
        invert_factor(lfa, 0, (1, 8, 8), value_range=(1, 0), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="init"):
        invert_factor(lfa, 0, (1, 8, 8), init=torch.zeros(1, 1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="seed"):
        invert_factor(lfa, 0, (1, 8, 8), seed=None, steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="lfa"):
        invert_factor(object(), 0, (1, 8, 8), steps=2, progress=False)


# ----------------------------------------------------------------------------------------------
# activation maximisation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["fft", "pixel"])
def test_maximize_channel_increases_activation(method):
    model = SmallCNN().eval()
    before = model_state(model)
    res = maximize_channel(model, model.conv2, 4, (1, 8, 8), steps=STEPS, method=method, progress=False)
    assert_same_state(before, model_state(model))
    assert isinstance(res, ActivationMaxResult)
    assert res.image.shape == (1, 1, 8, 8) and res.images.shape == (1, 1, 8, 8) and res.channels == [4]
    assert float(res.final_activation[0]) > float(res.initial_activation[0]) + 0.2
    assert res.losses[-1] < res.losses[0]
    # the recorded activation is the channel's mean activation of the returned image
    acts = []
    h = model.conv2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad():
        model(res.image)
    h.remove()
    assert float(acts[0][0, 4].mean()) == pytest.approx(float(res.final_activation[0]), rel=1e-5)


def test_maximize_channels_batch_and_ranking():
    model = SmallCNN().eval()
    ranking = ChannelRanking(channels=torch.tensor([7, 2, 11, 0]), scores=torch.tensor([0.9, 0.8, 0.5, 0.1]))
    res = maximize_channels(model, model.conv2, ranking, (1, 8, 8), top_k=3, steps=STEPS, seed=1, progress=False)
    assert res.channels == [7, 2, 11] and torch.allclose(res.scores, torch.tensor([0.9, 0.8, 0.5]))
    assert res.images.shape == (3, 1, 8, 8)
    assert (res.final_activation > res.initial_activation).all()
    # each image maximises its own channel: image k excites channel c_k more than the others' images do
    acts = []
    h = model.conv2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad():
        model(res.images)
    h.remove()
    means = acts[0][:, res.channels].mean((2, 3))  # [image, channel]
    assert (means.diagonal() >= means.max(0).values - 1e-6).all()
    fig = res.figure()
    assert sum(ax.has_data() for ax in fig.axes) == 3 and len(_png(fig)) > 1000
    # deterministic under the seed, different under another; global RNG untouched
    rng = torch.get_rng_state()
    again = maximize_channels(model, model.conv2, [7, 2, 11], (1, 8, 8), steps=STEPS, seed=1, progress=False)
    other = maximize_channels(model, model.conv2, [7, 2, 11], (1, 8, 8), steps=STEPS, seed=2, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(again.images, res.images)
    assert not torch.equal(other.images, res.images)


def test_maximize_channels_rgb_and_linear_layer():
    model = RGBNet().eval()
    before = model_state(model)
    res = maximize_channels(model, model.conv2, torch.tensor([0, 5]), (3, 32, 32), steps=15, progress=False)
    assert res.images.shape == (2, 3, 32, 32)
    assert (res.final_activation > res.initial_activation).all()
    unit = maximize_channel(model, model.fc, 2, (3, 32, 32), steps=15, progress=False)
    assert float(unit.final_activation[0]) > float(unit.initial_activation[0])
    assert_same_state(before, model_state(model))
    assert len(_png(unit.figure())) > 500


def test_maximize_errors():
    model = SmallCNN().eval()
    before = model_state(model)
    for bad in (20, -1):
        with pytest.raises(CaptumElfaError, match="out of range"):
            maximize_channel(model, model.conv2, bad, (1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="channel"):
        maximize_channel(model, model.conv2, 1.5, (1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="out of range"):
        maximize_channels(model, model.conv2, [1, 99], (1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="empty"):
        maximize_channels(model, model.conv2, [], (1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="channels"):
        maximize_channels(model, model.conv2, "0,1", (1, 8, 8), steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="top_k"):
        maximize_channels(model, model.conv2, [0, 1], (1, 8, 8), top_k=0, steps=2, progress=False)
    with pytest.raises(CaptumElfaError, match="steps"):
        maximize_channel(model, model.conv2, 0, (1, 8, 8), steps=0, progress=False)
    with pytest.raises(CaptumElfaError, match="lr"):
        maximize_channel(model, model.conv2, 0, (1, 8, 8), lr=-1.0, progress=False)
    with pytest.raises(CaptumElfaError, match="submodule"):
        maximize_channel(model, nn.Conv2d(1, 2, 3), 0, (1, 8, 8), steps=2, progress=False)
    assert_same_state(before, model_state(model))
