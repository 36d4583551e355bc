"""Property-based tests of the streamed statistics: permuting the samples, splitting them into
other batches, or rescaling a channel does not change the correlation-based results."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_elfa.stats.adequacy import adequacy
from captum_elfa.stats.factor_model import fit_factor_model
from captum_elfa.stats.moments import RunningMoments

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def _data(seed: int, n: int, c: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    lo = g.normal(size=(c, 2))
    x = g.normal(size=(n, 2)) @ lo.T + g.normal(size=(n, c)) * g.uniform(0.3, 1.5, size=c)
    return torch.from_numpy(x * g.uniform(0.1, 50, size=c) + g.normal(size=c) * 10)


def _corr(x: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    acc = RunningMoments()
    for i, part in enumerate(torch.tensor_split(x, cuts)):
        if len(part):
            acc.update(part, i)
    m = acc.moments
    sd = torch.sqrt(torch.diagonal(m.comoment) / m.n)
    return m.comoment / m.n / torch.outer(sd, sd), m.mean, m.n


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(40, 300), c=st.integers(4, 9), data=st.data())
def test_batch_splits_and_permutations_do_not_matter(seed, n, c, data):
    x = _data(seed, n, c)
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=6, unique=True)))
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(n))
    r0, m0, n0 = _corr(x, [])
    r1, m1, n1 = _corr(x[perm], cuts)
    assert n0 == n1 == n
    torch.testing.assert_close(m1, m0, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(r1, r0, rtol=1e-9, atol=1e-10)
    a0, a1 = adequacy(r0, n), adequacy(r1, n)
    assert abs(a0.kmo - a1.kmo) < 1e-9 and abs(a0.bartlett_chi2 - a1.bartlett_chi2) < 1e-6 * max(1, a0.bartlett_chi2)


@SETTINGS
@given(seed=st.integers(0, 10_000), c=st.integers(5, 9), scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_rescaling_a_channel_does_not_change_correlation_results(seed, c, scale, shift):
    x = _data(seed, 400, c)
    y = x.clone()
    y[:, 0] = y[:, 0] * scale + shift
    r0, _, _ = _corr(x, [150])
    r1, _, _ = _corr(y, [150])
    torch.testing.assert_close(r1, r0, rtol=1e-8, atol=1e-9)
    f0 = fit_factor_model(r0, 1, rotation=None)
    f1 = fit_factor_model(r1, 1, rotation=None)
    # the optimiser's own precision (Heywood cases are flat in one direction): ~1e-5
    torch.testing.assert_close(f1.loadings, f0.loadings, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f1.uniquenesses, f0.uniquenesses, rtol=1e-4, atol=1e-4)
