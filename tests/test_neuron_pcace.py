"""NeuronPCACE against the authors' recipe (scikit-learn StandardScaler + PCA, then the ``ace``
package per channel, |corr(phi, theta)|), its conveniences, its errors, and model hygiene."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from captum_elfa._validation import CaptumElfaError, NotFittedError
from captum_elfa.attr.neuron_pcace import NeuronPCACE
from helpers import require

ace_pkg = require("ace.ace")
PCA = require("sklearn.decomposition").PCA
StandardScaler = require("sklearn.preprocessing").StandardScaler

DEAD, CONSTANT = 0, 1  # channels of conv2 forced dead (all 0 after ReLU) and constant (0.7)


class TinyCNN(nn.Module):
    """conv -> ReLU -> pool to ``side x side`` -> conv -> ReLU -> global pool -> linear(5)."""

    def __init__(self, side: int, channels: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.conv2 = nn.Conv2d(8, channels, 3, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.pool(self.act1(self.conv1(x))))))


def make_net(side: int, seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    net = TinyCNN(side)
    with torch.no_grad():
        net.conv2.weight[DEAD].zero_()
        net.conv2.bias[DEAD] = -1.0
        net.conv2.weight[CONSTANT].zero_()
        net.conv2.bias[CONSTANT] = 0.7
        # sparse channels: many exact zeros, some all-zero maps (ties), some dead
        net.conv2.bias[2:6] -= torch.tensor([0.02, 0.05, 0.08, 0.12])
    return net.eval()


def layer_outputs(net: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        handle.remove()
    return store["a"].numpy(), out


def recipe(
    acts: np.ndarray, y: np.ndarray, k: int, svd_solver: str = "auto", ranges: Optional[Dict[int, tuple]] = None
) -> np.ndarray:
    """The authors' pcace_resnet_18.py per channel; NaN where the package fails (constant maps).

    Where it fails on a varying channel in the canonical order, the channel's score is NaN and
    ``ranges[channel]`` the range of its scores over other orders (``ranges`` must be given)."""
    n = acts.shape[0]
    scores = []
    for c in range(acts.shape[1]):
        x = acts[:, c].reshape(n, -1).astype(np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # PCA of a constant channel
            comp = PCA(n_components=k, svd_solver=svd_solver).fit_transform(StandardScaler().fit_transform(x.tolist()))
        # ties (identical maps): the package's result depends on the order of the images; ours
        # is the package's on the images sorted lexicographically by (components..., y)
        order = np.lexsort([np.asarray(y, dtype=np.float64)] + [comp[:, j] for j in reversed(range(k))])
        score = _package_ace(comp[order], np.asarray(y)[order])
        if np.isnan(score) and np.isfinite(comp).all() and np.ptp(comp, axis=0).max() > 0:
            # the package can also fail on a varying component: its initial scaling of the
            # x-transforms divides 0 by 0 for some orders of tied samples (seen on a 2-component
            # channel with 53 all-zero maps of 100). Then the range of its scores over seeded
            # orders of the images is returned as (low, high), our canonical score must lie in it
            rng = np.random.default_rng(c)
            tries = [rng.permutation(n) for _ in range(8)]
            found = [_package_ace(comp[o], np.asarray(y)[o]) for o in tries]
            found = [f for f in found if np.isfinite(f)]
            assert found, f"the package fails on channel {c} in every order"
            assert ranges is not None, f"the package fails on varying channel {c}"
            ranges[c] = (min(found), max(found))
        scores.append(score)
    return np.array(scores)


def _package_ace(comp: np.ndarray, y: np.ndarray) -> float:
    solver = ace_pkg.ACESolver()
    solver.specify_data_set(np.transpose(comp).tolist(), [float(v) for v in y])
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        solver.solve()
        return float(abs(np.corrcoef(np.sum(solver.x_transforms, axis=0), solver.y_transform)[0, 1]))


def all_zero_maps(acts: np.ndarray) -> np.ndarray:
    """Number of images whose whole map is 0, per channel (ties in the component)."""
    return (acts.reshape(acts.shape[0], acts.shape[1], -1).max(-1) == 0).sum(0)


def assert_agree(ours: np.ndarray, ref: np.ndarray, channels: np.ndarray) -> None:
    diff = np.abs(ours[channels] - ref[channels])
    assert diff.max() <= 0.02, f"max |delta| {diff.max():.4f} on channels {channels[diff > 0.02].tolist()}"
    rho = spearmanr(ours[channels], ref[channels]).statistic
    assert rho >= 0.99, f"Spearman {rho:.4f}"


@pytest.mark.parametrize("k", [1, 2])
def test_matches_recipe_with_dead_channels_and_relu_ties(k: int) -> None:
    # 3x3 maps and 100 images: scikit-learn's PCA uses its covariance solver, whose scores keep
    # identical (all-zero) maps exactly tied, as ours do
    net = make_net(side=3)
    x = torch.randn(100, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    acts, out = layer_outputs(net, net.act2, x)
    zero_maps = all_zero_maps(acts)
    assert ((zero_maps >= 10) & (zero_maps < 90)).sum() >= 3  # the data do exercise ReLU ties
    assert (acts == 0).mean() > 0.3 and (zero_maps == 100).any()  # many exact zeros, dead channels
    pc = NeuronPCACE(net, net.act2)
    ours = pc.attribute(x, target=2, n_components=k, progress=False).numpy()
    ranges: Dict[int, tuple] = {}
    ref = recipe(acts, out[:, 2].numpy(), k, ranges=ranges)
    # the package fails (NaN) on the channels we list as constant, and we score them 0
    failed = [c for c in np.flatnonzero(np.isnan(ref)).tolist() if c not in ranges]
    assert pc.constant_channels_.tolist() == failed
    # where it fails on a varying channel in our order, our score is one it gives in another order
    for c, (lo, hi) in ranges.items():
        assert lo - 1e-9 <= ours[c] <= hi + 1e-9, (c, ours[c], lo, hi)
    assert {DEAD, CONSTANT} <= set(pc.constant_channels_.tolist())
    assert np.all(ours[pc.constant_channels_.numpy()] == 0) and np.isfinite(ours).all()
    assert np.all((ours >= 0) & (ours <= 1))
    assert_agree(ours, ref, np.flatnonzero(~np.isnan(ref)))


def test_matches_recipe_on_larger_maps() -> None:
    # 4x4 maps, 80 images: scikit-learn's default PCA is a full SVD, whose scores of identical
    # maps differ by rounding noise, so that the package sees near-ties in a random order and
    # bypasses its tie rule; channels without such maps are compared with the recipe verbatim,
    # all channels with the recipe using scikit-learn's covariance PCA solver (exact ties)
    net = make_net(side=4, seed=3)
    x = torch.randn(80, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    acts, out = layer_outputs(net, net.act2, x)
    y = out[:, 3].numpy()
    pc = NeuronPCACE(net, net.act2)
    ours = pc.attribute(x, target=3, progress=False).numpy()
    live = np.setdiff1d(np.arange(acts.shape[1]), pc.constant_channels_.numpy())
    no_ties = live[all_zero_maps(acts)[live] <= 1]
    assert no_ties.size >= 5
    ref = np.full(acts.shape[1], np.nan)
    ref[no_ties] = recipe(acts[:, no_ties], y, 1)
    assert_agree(ours, ref, no_ties)
    exact = recipe(acts, y, 1, svd_solver="covariance_eigh")
    assert_agree(ours, exact, live)


def test_conv_output_before_inplace_relu_and_linear_layer() -> None:
    net = make_net(side=3, seed=4)
    x = torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    # conv2's output is changed in place by the ReLU after it: the capture must copy it first
    acts, out = layer_outputs(net, net.conv2, x)
    ours = NeuronPCACE(net, net.conv2).attribute(x, target=1, progress=False).numpy()
    assert_agree(ours, recipe(acts, out[:, 1].numpy(), 1), np.arange(2, acts.shape[1]))

    # an (N, C) layer is H = W = 1
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 1)).eval()
    xm = torch.randn(70, 6)
    acts, out = layer_outputs(mlp, mlp[1], xm)
    pc = NeuronPCACE(mlp, mlp[1])
    ours = pc.attribute(xm, target=None, progress=False).numpy()  # scalar output: regression
    ref = recipe(acts, out[:, 0].numpy(), 1)
    live = np.flatnonzero(~np.isnan(ref))
    assert pc.activation_shape_ == (10, 1, 1)
    assert_agree(ours, ref, live)


def test_targets_inputs_and_conveniences() -> None:
    net = make_net(side=3, seed=6)
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    pc = NeuronPCACE(net, net.act2)
    by_index = pc.attribute(x, target=4, progress=False, batch_size=7)
    by_callable = pc.attribute(x, target=lambda out: out[:, 4], progress=False)
    torch.testing.assert_close(by_index, by_callable, atol=1e-12, rtol=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(40)), batch_size=16)
    from_loader = pc.attribute(loader, target=4, progress=False)
    torch.testing.assert_close(by_index, from_loader, atol=1e-12, rtol=0)
    assert from_loader.dtype == torch.float64 and from_loader.shape == (12,)
    assert pc.activation_bytes_ == 12 * 40 * 9 * 4  # float32, one copy

    channels, scores = pc.rank_channels()
    assert torch.all(scores[:-1] >= scores[1:])
    torch.testing.assert_close(from_loader[channels], scores)
    n_const = pc.constant_channels_.numel()
    assert {DEAD, CONSTANT} <= set(channels[-n_const:].tolist()) == set(pc.constant_channels_.tolist())
    assert torch.all(scores[-n_const:] == 0) and torch.all(scores[:-n_const] > 0)

    best = int(channels[0])
    t = pc.ace_transforms(best)
    assert t.phi.shape == (1, 40) and t.component.shape == (1, 40) and t.theta.shape == (40,)
    assert t.score == pytest.approx(float(scores[0]))
    corr = np.corrcoef(t.phi.sum(0).numpy(), t.theta.numpy())[0, 1]
    assert abs(corr) == pytest.approx(t.score, abs=1e-10)
    torch.testing.assert_close(t.target, layer_outputs(net, net.act2, x)[1][:, 4].double())
    with pytest.raises(CaptumElfaError, match="constant"):
        pc.ace_transforms(DEAD)
    with pytest.raises(CaptumElfaError, match=r"channel=12 .*\[0, 11\]"):
        pc.ace_transforms(12)
    with pytest.raises(CaptumElfaError, match=r"channel=1.5 is not valid"):
        pc.ace_transforms(1.5)
    assert pc.ace_transforms(channels[0]).channel == best  # a 0-d LongTensor works too


@pytest.mark.slow
def test_chunked_statistics_give_the_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    import captum_elfa.stats.pcace as module  # the statistics moved there (issue 11)

    net = make_net(side=3, seed=6)
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    whole = NeuronPCACE(net, net.act2).attribute(x, target=4, n_components=2, progress=False)
    monkeypatch.setattr(module, "_CHUNK_BYTES", 8 * 40 * 40 * 3 // 4)  # 3 ACE rows, 1 channel per PCA chunk
    pc = NeuronPCACE(net, net.act2)
    chunked = pc.attribute(x, target=4, n_components=2, progress=False)
    torch.testing.assert_close(whole, chunked, atol=1e-12, rtol=0)
    best = int(pc.rank_channels().channels[0])
    assert pc.ace_transforms(best).phi.shape == (2, 40)


def test_not_fitted() -> None:
    net = make_net(side=2)
    with pytest.raises(NotFittedError):
        NeuronPCACE(net, net.act2).rank_channels()


class ConstantHead(nn.Module):
    """Outputs (N, 3): class 0 constant, classes 1-2 depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean((2, 3))
        return torch.cat([torch.full((x.shape[0], 1), 2.5), self.fc(h)], dim=1)


@pytest.mark.parametrize(
    "kwargs,n_images,pattern",
    [
        (dict(target=0), 20, r"constant .*2\.5"),
        (dict(target=1), 9, r"at least 10 images, got 9"),
        (dict(target=3), 20, r"target=3 is out of range .* \[0, 2\]"),
        (dict(target=-1), 20, r"target=-1 is out of range"),
        (dict(target=None), 20, r"target=None .*shape \(8, 3\)"),
        (dict(target="cat"), 20, r"target='cat' is not valid"),
        (dict(target=1.0), 20, r"target=1.0 is not valid"),
        (dict(target=lambda o: o), 20, r"callable returned shape \(8, 3\)"),
        (dict(target=1, n_components=0), 20, r"n_components=0 is not valid"),
        (dict(target=1, n_components=True), 20, r"n_components=True is not valid"),
        (dict(target=1, n_components=37), 20, r"n_components=37 .*36 pixels"),
        (dict(target=1, n_components=21), 20, r"n_components=21 .*number of images \(20\)"),
    ],
)
def test_bad_input_errors(kwargs: dict, n_images: int, pattern: str) -> None:
    torch.manual_seed(0)
    net = ConstantHead().eval()
    x = torch.randn(n_images, 3, 8, 8)
    pc = NeuronPCACE(net, net.body[1])
    with pytest.raises(CaptumElfaError, match=pattern):
        pc.attribute(x, progress=False, batch_size=8, **kwargs)
    assert not net.body[1]._forward_hooks


def test_non_finite_target_or_activations() -> None:
    torch.manual_seed(0)
    net = ConstantHead().eval()
    x = torch.randn(20, 3, 8, 8)
    pc = NeuronPCACE(net, net.body[1])
    with pytest.raises(CaptumElfaError, match=r"target scores contain NaN or Inf \(images \[0, 10\]\)"):
        pc.attribute(
            x, target=lambda o: torch.cat([torch.tensor([float("nan")]), o[1:, 1]]), progress=False, batch_size=10
        )
    x[3, :, 2:4, 2:4] = float("inf")
    with pytest.raises(CaptumElfaError, match=r"NaN or Inf activations in channels \[0, 1, 2, 3\]"):
        pc.attribute(x, target=lambda o: torch.linspace(0, 1, o.shape[0]), progress=False)


def test_too_few_images_from_an_iterable() -> None:
    net = make_net(side=2)
    batches = [torch.randn(4, 3, 8, 8), torch.randn(5, 3, 8, 8)]
    with pytest.raises(CaptumElfaError, match="at least 10 images, got 9"):
        NeuronPCACE(net, net.act2).attribute(batches, target=0, progress=False)


def _snapshot(net: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in net.state_dict().items()},
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
    )


@pytest.mark.parametrize("target", [2, 7])  # 7 fails inside the capture: the model must still be restored
def test_model_left_unchanged(target: int) -> None:
    net = make_net(side=2)
    net.train()
    net.conv1.weight.requires_grad_(False)
    net.head[2].train(False)
    before = _snapshot(net)
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    pc = NeuronPCACE(net, net.act2)
    with pytest.warns(UserWarning, match="training mode"), contextlib.ExitStack() as stack:
        if target == 7:
            stack.enter_context(pytest.raises(CaptumElfaError, match="out of range"))
        pc.attribute(x, target=target, progress=False)
    after = _snapshot(net)
    assert before[1] == after[1] and before[2] == after[2]
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(p.grad is None for p in net.parameters())
