"""Channel screening (dead, collinear), the identification bound, the factor-count table, min_images.

Each problem of issue 10 item 3 with the input that triggered it: duplicated and exactly
collinear (float32) channels made KMO 0.0 / 0.42 / 0.44 and Bartlett's chi2 infinite; activations
scaled by 1e-16 were all "dead"; n_factors above the Ledermann bound went through; the scree
count disagreed with Kaiser without comment. The oracles are factor_analyzer (KMO, Bartlett) and
elfa (the standard-error scree), run here on generated data.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.adequacy import adequacy
from captum_elfa.stats.factor_model import fit_factor_model
from captum_elfa.stats.moments import RunningMoments
from captum_elfa.stats.nfactors import (
    VARIANCE_FRACTIONS,
    check_identified,
    degrees_of_freedom,
    factor_count_criteria,
    kaiser,
    ledermann_bound,
    parallel_analysis,
    se_scree,
    variance_fraction,
)
from captum_elfa.stats.screening import (
    COLLINEAR_RTOL,
    ChannelScreen,
    dead_tolerance,
    min_images,
    screen_channels,
)
from helpers import require

fa = require("factor_analyzer.factor_analyzer")


# -- data ---------------------------------------------------------------------------------------
def factor_data(n: int, c: int, k: int, seed: int, relu: bool = True) -> torch.Tensor:
    """float32 [n, c]: ``k`` common factors plus noise, through a ReLU (like a conv layer's output)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(k, c, generator=g, dtype=torch.float64)
    x = z @ w + 0.7 * torch.randn(n, c, generator=g, dtype=torch.float64) + 0.3
    return (torch.relu(x) if relu else x).float()


def streamed(x: torch.Tensor, batch: int = 997) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, covariance, n) streamed in float64 batches as LayerFactorAnalysis does."""
    acc = RunningMoments()
    for i, b in enumerate(x.split(batch)):
        acc.update(b, i)
    m = acc.moments
    assert m is not None
    return m.mean, m.covariance, m.n


def screen(x: torch.Tensor, **kw) -> ChannelScreen:
    mean, cov, n = streamed(x)
    return screen_channels(mean, cov, n, **kw)


def sets(s: ChannelScreen) -> tuple[list, list, list]:
    return s.live.tolist(), s.dead.tolist(), s.collinear.tolist()


def fa_adequacy(x: np.ndarray) -> tuple[float, float]:
    """factor_analyzer's overall KMO and Bartlett chi2 on the data matrix (columns standardised)."""
    z = (x - x.mean(0)) / x.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chi2, _ = fa.calculate_bartlett_sphericity(z)
        _, kmo = fa.calculate_kmo(z)
    return float(kmo), float(chi2)


def assert_usable(s: ChannelScreen, n: int, x_kept: np.ndarray, k: int = 2, require_converged: bool = True) -> None:
    """The kept channels give finite, oracle-matching KMO and Bartlett, and a converged ML fit."""
    a = adequacy(s.correlation, n)
    assert 0.0 < a.kmo < 1.0 and math.isfinite(a.bartlett_chi2) and math.isfinite(a.log_det)
    kmo_ref, chi2_ref = fa_adequacy(x_kept)
    assert a.kmo == pytest.approx(kmo_ref, rel=1e-6)
    assert a.bartlett_chi2 == pytest.approx(chi2_ref, rel=1e-6)
    # every kept channel leaves more than rtol unexplained, so lambda_min >= 1 / tr(R^-1) >= rtol / C
    assert float(torch.linalg.eigvalsh(s.correlation)[0]) >= COLLINEAR_RTOL / s.live.numel()
    model = fit_factor_model(s.correlation, k, rotation="varimax")
    assert torch.isfinite(model.loadings).all() and torch.isfinite(model.uniquenesses).all()
    assert math.isfinite(model.loglike)
    if require_converged:
        assert model.converged


# -- collinear channels ---------------------------------------------------------------------------
def test_duplicated_channel_is_left_out_and_kmo_bartlett_become_meaningful():
    x = factor_data(6000, 10, 3, seed=0)
    x = torch.cat([x, x[:, 4:5]], 1)  # channel 10 is an exact copy of 4
    mean, cov, n = streamed(x)
    # the problem: the unscreened correlation matrix is singular, Bartlett's ln det R is garbage
    sd = torch.sqrt(torch.diagonal(cov))
    r_full = cov / torch.outer(sd, sd)
    bad = adequacy(0.5 * (r_full + r_full.T), n)
    assert not math.isfinite(bad.bartlett_chi2) or bad.log_det < -25
    s = screen_channels(mean, cov, n)
    assert s.collinear.tolist() == [10] and s.collinear_with == {10: [4]}
    assert s.dead.tolist() == [] and s.live.tolist() == list(range(10))
    assert float(s.residual[0]) <= COLLINEAR_RTOL
    assert "10 ~ [4]" in s.describe_collinear() and "channel 10" in s.message()
    assert_usable(s, n, x[:, s.live].double().numpy())


def test_exact_sum_in_float32_is_collinear():
    x = factor_data(8000, 9, 3, seed=1)
    a = x[:, 2] + x[:, 6]  # a = b + c computed in float32: exact only up to float32 rounding
    x = torch.cat([x[:, :5], a[:, None], x[:, 5:]], 1)  # a at index 5; b = 2, c = 7 after the shift
    s = screen(x)
    # of the dependent set {2, 5, 7} the highest index is left out: 7 = 5 - 2
    assert s.collinear.tolist() == [7]
    assert sorted(s.collinear_with[7]) == [2, 5]
    assert 0 < float(s.residual[0]) <= COLLINEAR_RTOL  # float32 rounding leaves a trace, below the line
    assert_usable(s, x.shape[0], x[:, s.live].double().numpy())


@pytest.mark.parametrize("seed", range(8))
def test_scan_inserted_combinations_are_exactly_the_collinear_ones(seed):
    """Random layers with copies, sums and scaled combinations of channels inserted at random places."""
    rng = np.random.default_rng(seed)
    c0, n = int(rng.integers(6, 25)), int(rng.integers(2000, 5000))
    x = factor_data(n, c0, int(rng.integers(1, 5)), seed=100 + seed)
    cols = [x[:, j] for j in range(c0)]
    expected = []
    for _ in range(int(rng.integers(1, 4))):
        m = int(rng.integers(1, 4))
        src = rng.choice(len(cols), size=m, replace=False)
        coef = rng.choice([1.0, -1.0, 0.5, 2.0, 0.3], size=m)
        new = sum(float(w) * cols[int(j)] for w, j in zip(coef, src))  # float32 arithmetic
        cols.append(new.float())
        expected.append(len(cols) - 1)
    x = torch.stack(cols, 1)
    # each combination comes after its sources: it is the highest index of its dependent set
    s = screen(x)
    assert s.collinear.tolist() == expected, (seed, s.collinear.tolist(), s.residual.tolist())
    assert float(s.residual.max()) < 1e-13  # float32 rounding of the combinations: far below the line
    assert s.dead.numel() == 0
    assert_usable(s, n, x[:, s.live].double().numpy())


def near_collinear_data() -> torch.Tensor:
    """8 channels of 2 factors and a 9th: channel 1 plus a little independent noise (r = 0.999999)."""
    g = torch.Generator().manual_seed(3)
    x = factor_data(20000, 8, 2, seed=3, relu=False).double()
    near = x[:, 1] + 1.4e-3 * torch.randn(x.shape[0], generator=g, dtype=torch.float64) * x[:, 1].std()
    return torch.cat([x, near[:, None]], 1).float()


def test_genuinely_near_collinear_channels_are_kept():
    """Correlation 0.999999 from real (sampled) data is information, not rounding: it stays."""
    x = near_collinear_data()
    r01 = float(torch.corrcoef(x.double().T)[1, 8])
    assert 0.999998 < r01 < 0.9999995
    s = screen(x)
    assert s.collinear.numel() == 0 and s.live.tolist() == list(range(9))
    a = adequacy(s.correlation, x.shape[0])
    assert 0.0 < a.kmo < 1.0 and math.isfinite(a.bartlett_chi2)
    kmo_ref, chi2_ref = fa_adequacy(x.double().numpy())
    assert a.kmo == pytest.approx(kmo_ref, rel=1e-6) and a.bartlett_chi2 == pytest.approx(chi2_ref, rel=1e-6)


@pytest.mark.slow
def test_near_collinear_channels_kept_give_a_working_ml_fit():
    """2 common factors + the near-duplicate pair's own: 3 factors fit, the pair's uniquenesses ~0 (~20 s).

    Whether the fit is flagged converged here depends on the KKT test at uniquenesses ~1e-6 (seen
    both ways), which is the ML module's business; the fit itself must be finite and find the pair.
    """
    x = near_collinear_data()
    s = screen(x)
    assert_usable(s, x.shape[0], x.double().numpy(), k=3, require_converged=False)
    model = fit_factor_model(s.correlation, 3, rotation="varimax")
    assert float(model.uniquenesses[[1, 8]].max()) < 1e-3 < float(model.uniquenesses[[0, 2, 3]].min())


# -- dead channels and scale invariance --------------------------------------------------------
def test_constant_channels_with_offsets_are_dead_whatever_the_batches():
    x = factor_data(5000, 6, 2, seed=4)
    consts = torch.tensor([0.0, 3.0, 1e5 + 1.0 / 3.0, -7.1e-3, 2.5e30], dtype=torch.float32)
    x = torch.cat([x, consts.expand(x.shape[0], -1)], 1)
    for batch in (1, 7, 997, 5000):
        mean, cov, n = streamed(x, batch)
        s = screen_channels(mean, cov, n)
        assert s.dead.tolist() == [6, 7, 8, 9, 10], batch
        assert s.live.tolist() == list(range(6))
    assert dead_tolerance(10**7) < 1e-16 and dead_tolerance(10**12) == pytest.approx(1e-12)


def test_a_real_but_tiny_channel_is_live():
    """A channel 1e-12 times smaller than the others varies: it is live (its correlations are exact)."""
    x = factor_data(5000, 6, 2, seed=5).double()
    x[:, 3] *= 1e-12
    s = screen(x)
    assert s.dead.numel() == 0 and s.live.tolist() == list(range(6))
    assert s.layer_scale / float(s.scale[3]) > 1e11


@pytest.mark.parametrize("scale", [1e-16, 1e-20, 1e20])
def test_scaling_every_activation_changes_nothing(scale):
    base = factor_data(6000, 12, 3, seed=6)
    base = torch.cat([base, base[:, 2:3], base[:, 0:1] + base[:, 5:6], torch.zeros(6000, 1)], 1).double()
    ref = screen(base)
    got = screen(base * scale)
    assert sets(got) == sets(ref) == (list(range(12)), [14], [12, 13])
    assert got.collinear_with == ref.collinear_with
    torch.testing.assert_close(got.correlation, ref.correlation, rtol=1e-12, atol=1e-12)
    assert got.layer_scale == pytest.approx(ref.layer_scale * scale, rel=1e-12)


def test_float32_activations_scaled_by_1e_16_are_not_dead():
    """The input that the former absolute floor (1e-30) called 'all channels dead'."""
    x = (factor_data(6000, 12, 3, seed=7).double() * 1e-16).float()
    s = screen(x)
    assert s.dead.numel() == 0 and s.live.tolist() == list(range(12))
    old_dead = torch.diagonal(streamed(x)[1]) <= torch.clamp(1e-12 * streamed(x)[0] ** 2, min=1e-30)
    assert bool(old_dead.all())  # the former rule on the same input


@pytest.mark.parametrize("seed", range(6))
def test_per_channel_affine_rescale_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    base = factor_data(6000, 10, 3, seed=20 + seed).double()
    base = torch.cat([base, base[:, 1:2] - base[:, 7:8]], 1)
    sd = base.std(0)
    a = torch.from_numpy(rng.choice([-1.0, 1.0], 11) * 10.0 ** rng.uniform(-6, 6, 11))
    b = torch.from_numpy(rng.uniform(-20, 20, 11)) * sd * a
    ref, got = screen(base), screen(base * a + b)
    assert sets(got) == sets(ref) == (list(range(10)), [], [10])
    sign = torch.sign(a[:10])
    torch.testing.assert_close(got.correlation, ref.correlation * torch.outer(sign, sign), rtol=1e-9, atol=1e-10)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_arguments_are_errors():
    mean, cov = torch.zeros(3), torch.eye(3)
    with pytest.raises(CaptumElfaError, match=r"\(3, 3\)"):
        screen_channels(mean, torch.eye(4), 10)
    with pytest.raises(CaptumElfaError, match="n=1"):
        screen_channels(mean, cov, 1)
    with pytest.raises(CaptumElfaError, match="rtol"):
        screen_channels(mean, cov, 10, rtol=1.5)
    s = screen_channels(torch.ones(3), torch.zeros(3, 3), 10)
    assert s.dead.tolist() == [0, 1, 2] and s.live.numel() == 0
    nan = torch.eye(3)
    nan[1, 1] = float("nan")
    assert screen_channels(mean, nan, 10).dead.tolist() == [1]


# -- identification bound ------------------------------------------------------------------------
def test_ledermann_bound_against_brute_force():
    for c in range(1, 400):
        brute = max([k for k in range(0, c + 1) if ((c - k) ** 2 - (c + k)) >= 0 and k < c], default=0)
        assert ledermann_bound(c) == brute, c
        # dof counts: correlations C(C-1)/2 minus free parameters Ck + C - k(k-1)/2 - C
        for k in {1, brute, brute + 1}:
            if k < c:
                assert degrees_of_freedom(c, k) == c * (c - 1) // 2 - (c * k - k * (k - 1) // 2)
    assert (ledermann_bound(16), ledermann_bound(256)) == (10, 233)
    check_identified(10, 16)
    with pytest.raises(CaptumElfaError, match=r"Ledermann\) bound 10 for 16"):
        check_identified(11, 16)


# -- factor-count criteria -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_criteria_table_is_the_single_criteria_side_by_side(seed):
    x = factor_data(3000 + 500 * seed, 15 + 3 * seed, 2 + seed, seed=40 + seed, relu=False).double()
    r = torch.corrcoef(x.T)
    ev = torch.linalg.eigvalsh(r).flip(0)
    n = x.shape[0]
    t = factor_count_criteria(ev, n, random_state=0, n_images=50)
    assert t["kaiser"] == kaiser(ev)
    assert t["scree"] == se_scree(ev, n)
    assert t["parallel"] == parallel_analysis(ev, n, random_state=0)[0]
    assert t["parallel_images"] == parallel_analysis(ev, 50, random_state=0)[0]
    for m in VARIANCE_FRACTIONS:
        assert t[f"variance_{round(100 * m)}"] == variance_fraction(ev, m)
    assert t["variance_50"] <= t["variance_80"] <= t["variance_90"] <= ev.numel()
    assert t["ledermann_bound"] == ledermann_bound(ev.numel())
    assert t["agree"] == (t["kaiser"] == t["parallel"] == t["scree"])
    # the shuffled order of the eigenvalues and a precomputed threshold change nothing
    _, thr = parallel_analysis(ev, n, random_state=0)
    assert factor_count_criteria(ev[torch.randperm(ev.numel())], n, parallel_threshold=thr, n_images=50) == t
    import json

    json.dumps(t)


def test_scree_matches_elfa_on_resnet18_layer3():
    """The scree's count on a random-init ResNet-18 layer3 is the reference's on the same data."""
    elfa_criteria = require("elfa.criteria")
    torchvision = require("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    acts = []
    h = model.layer3.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            model(torch.randn(10, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    finally:
        h.remove()
    a = acts[0]  # [10, 256, 8, 8]: 640 samples of 256 channels
    flat = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])
    s = screen(flat)
    assert s.collinear.numel() == 0
    z = flat[:, s.live].double().numpy()
    z = (z - z.mean(0)) / z.std(0)
    ev = torch.linalg.eigvalsh(s.correlation).flip(0)
    n = z.shape[0]
    t = factor_count_criteria(ev, n)
    assert t["scree"] == elfa_criteria.standard_error_scree_criterion(z)
    # the reference's Kaiser count on the same data, for the side-by-side table
    assert t["kaiser"] == elfa_criteria.eigenvalues_criterion(z)[1]
    assert t["scree"] != t["kaiser"] and not t["agree"]


# -- image count ---------------------------------------------------------------------------------
def test_min_images_rule():
    for c in (3, 16, 64, 256, 512):
        assert min_images(c) >= c
        assert min_images(c, 1) == min_images(c, c - 1) == min_images(c)
        assert min_images(c + 1) >= min_images(c)
    with pytest.raises(CaptumElfaError, match="n_channels=0"):
        min_images(0)
    with pytest.raises(CaptumElfaError, match="n_factors=0"):
        min_images(10, 0)


@pytest.mark.slow
@pytest.mark.parametrize("c,k", [(192, 12), (400, 30)])
def test_fewer_parallel_draws_on_wide_layers_keep_the_count(c: int, k: int) -> None:
    """Above 128 channels parallel analysis draws fewer random matrices: the retained count must
    equal the one from 100 draws, on the spectrum of a generated factor model (k strong factors
    and a tail of weaker ones, sampled with 20,000 samples)."""
    from captum_elfa.stats.nfactors import default_parallel_draws

    g = np.random.default_rng(c)
    w = g.normal(size=(c, k)) * np.linspace(1.0, 0.15, k)[None, :]
    a = g.normal(size=(20000, k)) @ w.T + g.normal(size=(20000, c))
    ev = torch.from_numpy(np.linalg.eigvalsh(np.corrcoef(a, rowvar=False))[::-1].copy())
    assert default_parallel_draws(c) < 100
    few = parallel_analysis(ev, 20000, random_state=0)[0]
    full = parallel_analysis(ev, 20000, n_iter=100, random_state=0)[0]
    assert few == full
