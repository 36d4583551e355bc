"""captum_elfa._captum_compat on the installed captum (the suite runs on captum 0.8 and 0.9).

Each wrapper is compared with Captum's own private function when the installed version has it,
and the local fallbacks (used when a later Captum drops or changes a name) are compared with
Captum's too, so that a fallback that drifts fails here before it is ever needed.
"""

from __future__ import annotations

import captum
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from captum_elfa import _captum_compat as compat


def test_private_api_found_on_supported_versions():
    major, minor = (int(v) for v in captum.__version__.split(".")[:2])
    if (major, minor) >= (0, 8):  # the versions the suite supports have every private name
        assert compat.CAPTUM_PRIVATE_API == {"expand": True, "approximation_methods": True}
        assert compat.noise_tunnel_override_supported()


@pytest.mark.parametrize(
    "target",
    [None, 3, [1, 2, 0], torch.tensor([2, 0, 1]), torch.tensor(1), [(0, 1), (1, 0), (2, 2)]],
)
@pytest.mark.parametrize("n", [1, 4])
def test_expand_target_matches_captum(target, n):
    from captum._utils.common import _expand_target

    ours, ref, local = (
        compat.expand_target(target, n),
        _expand_target(target, n),
        compat._local_expand_target(target, n),
    )
    for got in (ours, local):
        if isinstance(ref, torch.Tensor):
            assert torch.equal(got, ref)
        else:
            assert got == ref


@pytest.mark.parametrize("n", [1, 3])
def test_expand_additional_forward_args_matches_captum(n):
    from captum._utils.common import _expand_additional_forward_args

    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 3, generator=g), 5, "mode", torch.randn(2, generator=g), torch.tensor(0.5))
    ref = _expand_additional_forward_args(args, n)
    for got in (compat.expand_additional_forward_args(args, n), compat._local_expand_args(args, n)):
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b
    assert compat.expand_additional_forward_args(None, n) is None and compat._local_expand_args(None, n) is None


@pytest.mark.parametrize(
    "method", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
@pytest.mark.parametrize("n", [2, 5, 17])
def test_approximation_parameters_match_captum(method, n):
    from captum.attr._utils.approximation_methods import approximation_parameters

    assert method in compat.SUPPORTED_METHODS
    ref_steps, ref_alphas = (f(n) for f in approximation_parameters(method))
    for steps_fn, alphas_fn in (
        compat.approximation_parameters(method),
        compat._local_approximation_parameters(method),
    ):
        assert torch.allclose(
            torch.tensor(list(steps_fn(n)), dtype=torch.float64),
            torch.tensor(list(ref_steps), dtype=torch.float64),
            atol=1e-12,
        )
        assert torch.allclose(
            torch.tensor(list(alphas_fn(n)), dtype=torch.float64),
            torch.tensor(list(ref_alphas), dtype=torch.float64),
            atol=1e-12,
        )
    with pytest.raises(ValueError):
        compat._local_approximation_parameters("simpson")


def test_distribution_noise_tunnel_uses_the_sampler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    shift = torch.randn(4)
    calls = []

    def sample(shape, like):
        calls.append(tuple(shape))
        return shift.expand(shape).to(like)

    got = compat.DistributionNoiseTunnel(Saliency(model), sample).attribute(
        x, nt_type="smoothgrad", nt_samples=3, target=1, abs=False
    )
    # constant noise: every noisy copy is x + shift, so the average is the gradient there
    ref = Saliency(model).attribute(x + shift, target=1, abs=False)
    assert torch.allclose(got, ref, atol=1e-6)
    assert calls == [(15, 4)]
    assert isinstance(compat.DistributionNoiseTunnel(Saliency(model), sample), NoiseTunnel)
