"""Deletion / insertion curves and their AUC on cases whose answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_elfa import CaptumElfaError
from captum_elfa.metrics import auc, deletion_curve, insertion_curve
from helpers import SmallCNN, assert_same_state, model_state


class Linear(nn.Module):
    """logits[:, 0] = <w, x>, logits[:, 1] = 0: the contribution of pixel p is w_p x_p."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.drop = nn.Dropout(0.5)  # must be off (eval mode) during the curves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (self.drop(x).flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def logit0(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class-0 logit in eval mode (dropout off), the model's mode restored."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)[:, 0].double()
    model.train(was)
    return out


@pytest.fixture(scope="module")
def linear_case():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 1, 8, 8, generator=g)
    x = torch.rand(12, 1, 8, 8, generator=g) + 0.1
    return Linear(w), x, w


def test_exact_deletion_curve_of_linear_model(linear_case):
    model, x, w = linear_case
    true = x * w  # exact contributions
    f, s = deletion_curve(model, x, true, target=0, steps=8, score="logit")
    assert f.shape == (9,) and s.shape == (12, 9)
    torch.testing.assert_close(f, torch.linspace(0, 1, 9, dtype=torch.float64))
    contrib = true.flatten(1).double()
    sorted_c = contrib.sort(1, descending=True).values
    for j in range(9):
        k = round(j / 8 * 64)
        expected = sorted_c[:, k:].sum(1)
        torch.testing.assert_close(s[:, j], expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(s[:, -1], torch.zeros(12, dtype=torch.float64))


def test_true_map_beats_random_and_inverse_maps(linear_case):
    model, x, w = linear_case
    true = x * w
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    for score in ("logit", "prob"):
        d = {
            name: auc(*deletion_curve(model, x, m, target=0, steps=16, score=score))
            for name, m in (("true", true), ("random", rand), ("inverse", -true))
        }
        i = {
            name: auc(*insertion_curve(model, x, m, target=0, steps=16, baseline=0.0, score=score))
            for name, m in (("true", true), ("random", rand), ("inverse", -true))
        }
        # removing the biggest contributions first is optimal for a linear model, image by image
        assert bool((d["true"] <= d["random"] + 1e-9).all()) and bool((d["random"] <= d["inverse"] + 1e-9).all())
        assert bool((i["true"] >= i["random"] - 1e-9).all()) and bool((i["random"] >= i["inverse"] - 1e-9).all())
        assert d["true"].mean() < 0.9 * d["random"].mean()
        assert i["true"].mean() > i["random"].mean()


def test_low_resolution_map_is_upsampled(linear_case):
    model, x, w = linear_case
    coarse = torch.zeros(12, 1, 2, 2)
    coarse[:, :, 0, 0] = 1.0  # the top-left quadrant first
    f, s = deletion_curve(model, x, coarse, target=0, steps=4, score="logit")
    contrib = (x * w).double()
    removed_tl = contrib.sum((1, 2, 3)) - contrib[:, :, :4, :4].sum((1, 2, 3))
    torch.testing.assert_close(s[:, 1], removed_tl, rtol=1e-5, atol=1e-5)


def test_baselines_and_batching(linear_case):
    model, x, w = linear_case
    m = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _, a = deletion_curve(model, x, m, target=0, steps=5, baseline="mean", score="logit", batch_size=64)
    _, b = deletion_curve(model, x, m, target=[0] * 12, steps=5, baseline="mean", score="logit", batch_size=5)
    torch.testing.assert_close(a, b)
    mean_img = x.mean((2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(a[:, -1], logit0(model, mean_img), rtol=1e-5, atol=1e-5)
    _, c = insertion_curve(model, x, m, target=0, steps=5, baseline="blur", score="logit")
    torch.testing.assert_close(c[:, -1], logit0(model, x), rtol=1e-5, atol=1e-5)
    # the blurred image keeps the mean roughly but is not the image itself
    assert not torch.allclose(c[:, 0], c[:, -1])
    _, d = insertion_curve(model, x, m, target=0, steps=5, baseline=torch.ones(1, 1, 1, 1), score="logit")
    torch.testing.assert_close(d[:, 0], logit0(model, torch.ones_like(x)), rtol=1e-5, atol=1e-5)
    # probabilities of the default target (argmax) are in [0, 1]; callable target
    _, e = deletion_curve(model, x, m, steps=3)
    assert bool(((e >= 0) & (e <= 1)).all())
    _, g = deletion_curve(model, x, m, target=lambda o: o[:, 0] * 2, steps=3)
    _, h = deletion_curve(model, x, m, target=0, steps=3, score="logit")
    torch.testing.assert_close(g, 2 * h)


def test_model_state_restored_and_forward_calls(digits):
    model = SmallCNN(seed=1)
    model.train()
    model.conv1.weight.requires_grad_(False)
    x = digits[0][:20]
    maps = torch.rand(20, 1, 8, 8)
    calls = []
    model.register_forward_pre_hook(lambda mod, inp: calls.append(inp[0].shape[0]))
    before = model_state(model)
    f, s = deletion_curve(model, x, maps, steps=4, batch_size=8)
    # 3 chunks x (1 unperturbed + 4 perturbed) forward passes, none with gradients
    assert len(calls) == 15 and max(calls) == 8
    assert_same_state(before, model_state(model))
    assert model.training
    assert not s.requires_grad


def test_auc_values_and_normalisation():
    f = torch.tensor([0.0, 0.5, 1.0])
    assert float(auc(f, torch.tensor([1.0, 0.5, 0.0]))) == pytest.approx(0.5)
    s = torch.tensor([[2.0, 1.0, 0.0], [4.0, 4.0, 4.0]])
    torch.testing.assert_close(auc(f, s), torch.tensor([1.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(auc(f, s, normalize="first"), torch.tensor([0.5, 1.0], dtype=torch.float64))
    r = auc(f, torch.tensor([0.0, 1.0, 2.0]), normalize="last")
    assert float(r) == pytest.approx(0.5)
    with pytest.raises(CaptumElfaError):
        auc(f, torch.ones(4))
    with pytest.raises(CaptumElfaError):
        auc(f, torch.ones(3), normalize="both")


def test_errors(linear_case):
    model, x, _ = linear_case
    m = torch.rand(12, 1, 8, 8)
    with pytest.raises(CaptumElfaError, match="maps"):
        deletion_curve(model, x, m[:3], target=0)
    with pytest.raises(CaptumElfaError, match="maps"):
        deletion_curve(model, x, torch.rand(12, 3, 8, 8), target=0)
    with pytest.raises(CaptumElfaError, match="steps"):
        deletion_curve(model, x, m, steps=0)
    with pytest.raises(CaptumElfaError, match="baseline"):
        deletion_curve(model, x, m, baseline="zero")
    with pytest.raises(CaptumElfaError, match="outside"):
        deletion_curve(model, x, m, target=5)
    with pytest.raises(CaptumElfaError, match="one class index per image"):
        deletion_curve(model, x, m, target=[0, 1])
    with pytest.raises(CaptumElfaError, match="score"):
        deletion_curve(model, x, m, score="softmax")
    with pytest.raises(CaptumElfaError, match="NaN"):
        deletion_curve(model, x, m * float("nan"))
