"""The compiled (numba) statistics kernels against the batched torch code they replace on the CPU,
and against LAPACK: ACE (:mod:`captum_elfa.stats._ace_kernel`), the two leading eigenpairs
(:mod:`captum_elfa.stats._eigen_kernel`) and PCACE's per-channel preprocessing
(:mod:`captum_elfa.stats._pca_kernel`), on scans of generated data: sparse ReLU maps with ties,
Gaussian maps, shared and per-row targets, tied targets, constant rows, degenerate matrices."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import lapack

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats import _numba

pytest.importorskip("numba")  # a dependency; the kernels' modules compile with it

from captum_elfa.stats import _ace_kernel, _eigen_kernel  # noqa: E402
from captum_elfa.stats.ace import ace  # noqa: E402
from captum_elfa.stats.pcace import _standardized_components_chunked, pcace_fit  # noqa: E402

pytestmark = pytest.mark.skipif(not _numba.load(), reason="numba kernels not enabled")


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch):
    """A context in which the kernels are switched off (the batched torch code runs)."""
    context = monkeypatch.context()

    class Switch:
        def __enter__(self) -> None:
            context.__enter__().setattr(_numba, "ENABLED", False)
            assert not _numba.load()

        def __exit__(self, *exc: object) -> None:
            context.__exit__(*exc)
            assert _numba.load()

    return Switch()


def _predictors(kind: str, rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    if kind == "relu":  # sparse: many exact zeros (ties)
        x = (x - 0.4).clamp_min(0.0)
    elif kind == "rounded":  # few distinct values (long runs of ties)
        x = torch.round(x * 2) / 2
    x[0] = 1.5  # a constant predictor
    x[1, : n // 2] = 0.0  # half tied at one value
    return x


@pytest.mark.parametrize("n", [10, 47, 300])
@pytest.mark.parametrize("kind", ["gauss", "relu", "rounded"])
@pytest.mark.parametrize("target", ["shared", "shared_tied", "per_row"])
def test_ace_kernel_equals_the_torch_ace(n: int, kind: str, target: str, torch_only) -> None:
    gen = torch.Generator().manual_seed(n + len(kind) + len(target))
    rows = 40
    x = _predictors(kind, rows, n, gen)
    signal = torch.tanh(x[2:3]) + 0.5 * torch.randn(1, n, generator=gen, dtype=torch.float64)
    if target == "shared":
        y = signal[0]
    elif target == "shared_tied":
        y = torch.round(signal[0] * 3) / 3
    else:  # one permutation of the target per row, as the permutation null
        y = torch.stack([signal[0][torch.randperm(n, generator=gen)] for _ in range(rows)])
        y[3] = torch.sort(y[3]).values  # a sorted one
    compiled = ace(x, y)
    with torch_only:
        reference = ace(x, y)
    assert torch.equal(compiled.outer_iterations, reference.outer_iterations)
    torch.testing.assert_close(compiled.correlation, reference.correlation, rtol=0, atol=1e-10)
    torch.testing.assert_close(compiled.x_transforms, reference.x_transforms, rtol=0, atol=1e-9)
    torch.testing.assert_close(compiled.y_transform, reference.y_transform, rtol=0, atol=1e-9)
    torch.testing.assert_close(compiled.rsq, reference.rsq, rtol=0, atol=1e-10)


def test_ace_kernel_rows_do_not_depend_on_the_thread_split() -> None:
    gen = torch.Generator().manual_seed(7)
    x = _predictors("relu", 97, 120, gen)
    y = torch.randn(120, generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(ace(x, y))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert torch.equal(r.x_transforms, results[0].x_transforms)
        assert torch.equal(r.correlation, results[0].correlation)


def test_the_kernel_is_used_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = _ace_kernel.ace_one_predictor
    monkeypatch.setattr(_ace_kernel, "ace_one_predictor", lambda *a, **k: calls.append(1) or original(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 30, generator=gen), torch.randn(30, generator=gen)
    ace(x, y)
    assert len(calls) == 1
    ace(torch.randn(4, 2, 30, generator=gen), y)  # two predictors: torch
    ace(x, y, bass_enhancement=3.0)  # bass enhancement: torch
    monkeypatch.setattr(_numba, "ENABLED", False)
    ace(x, y)
    assert len(calls) == 1


def test_environment_variable_turns_the_kernels_off() -> None:
    env = dict(os.environ, CAPTUM_ELFA_NO_NUMBA="1")
    code = "from captum_elfa.stats import _numba; print(_numba.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# eigenpairs
# ---------------------------------------------------------------------------------------------
def _test_matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    mats = []
    for d in (1, 2, 3, 9, 49, 64):
        a = rng.normal(size=(d, 3 * d + 5))
        mats.append(a @ a.T)  # a Gram matrix
        b = rng.normal(size=(d, d))
        mats.append(b + b.T)  # indefinite
    v = rng.normal(size=(20, 1))
    mats.append(v @ v.T)  # rank one
    mats.append(np.zeros((7, 7)))
    mats.append(np.diag([3.0, 1.0, 3.0, 2.0, 0.0]))  # repeated top eigenvalue, diagonal
    g = rng.normal(size=(12, 40))
    g[[2, 7]] = 0.0  # constant columns: zero rows and columns (the tridiagonal matrix splits)
    mats.append(g @ g.T)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    ev = np.linspace(0.1, 1.0, 30)
    ev[-2] = 1.0 - 1e-10  # a nearly degenerate leading pair
    mats.append((q * ev) @ q.T)
    ev = np.concatenate([rng.uniform(0, 1, 28), [4.0, 5.0]])
    mats.append((q * ev) @ q.T)  # a clear gap
    return mats


def test_top_pair_eigenvalues_and_vector_agree_with_lapack() -> None:
    for a in _test_matrices():
        d = a.shape[0]
        evals, evecs, info = _eigen_kernel.leading_eigenpairs(a[None], min(d, 2), 1, vectors=1)
        assert info[0] == 0
        norm = max(np.abs(np.linalg.eigvalsh(a)).max(), 1e-300)
        ref = np.linalg.eigvalsh(a)[::-1]
        assert abs(evals[0, 0] - ref[0]) <= 1e-13 * d * norm, (d, evals[0], ref[:2])
        if d > 1:
            assert abs(evals[0, 1] - ref[1]) <= 1e-13 * d * norm, (d, evals[0], ref[:2])
        v = evecs[0, :, 0]
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-12)
        assert np.linalg.norm(a @ v - evals[0, 0] * v) <= 1e-12 * d * norm
        if d > 1 and ref[0] - ref[1] >= 1e-3 * norm:
            w, z, *_ = lapack.dsyevr(a, compute_v=1, range="I", il=d, iu=d)
            assert abs(abs(z[:, 0] @ v) - 1.0) <= 1e-12


def test_eigenpair_requests_are_checked() -> None:
    with pytest.raises(ValueError, match="k=2, vectors=1 for d=1"):
        _eigen_kernel.leading_eigenpairs(np.ones((1, 1, 1)), 2, vectors=1)


def test_dsyevr_kernel_is_scipys_call_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 11, 30))
    mats = a @ a.transpose(0, 2, 1)
    evals, evecs, info = _eigen_kernel.leading_eigenpairs(mats, 3, 2)
    for i in range(6):
        w, v, *_ = lapack.dsyevr(mats[i], compute_v=1, range="I", il=9, iu=11)
        np.testing.assert_array_equal(evals[i], w[:3][::-1])
        np.testing.assert_array_equal(evecs[i], v[:, ::-1])


# ---------------------------------------------------------------------------------------------
# PCACE preprocessing
# ---------------------------------------------------------------------------------------------
def _layer_maps(gen: torch.Generator, c: int, n: int, p: int) -> torch.Tensor:
    """Channels with a clear leading component (a shared spatial pattern of random strength),
    ReLU-sparse halves, a constant channel, a constant pixel and duplicated maps."""
    pattern = torch.randn(c, 1, p, generator=gen)
    strength = torch.randn(c, n, 1, generator=gen)
    acts = 3 * strength * pattern + torch.randn(c, n, p, generator=gen)
    acts[c // 2 :] = (acts[c // 2 :] - 1.0).clamp_min(0.0)
    acts[1] = 2.5  # constant channel
    acts[2, :, 0] = -1.0  # one constant pixel position
    acts[3, 1::2] = acts[3, 0::2][: acts[3, 1::2].shape[0]]  # every other map repeated
    return acts


@pytest.mark.parametrize(
    "c, n, p, dtype",
    [(24, 60, 9, torch.float32), (13, 300, 49, torch.float32), (9, 40, 1, torch.float64), (7, 16, 16, torch.float32)],
)
@pytest.mark.parametrize("index", ["none", "order", "resample"])
def test_channel_kernel_equals_the_torch_preprocessing(
    c: int, n: int, p: int, dtype: torch.dtype, index: str, torch_only
) -> None:
    gen = torch.Generator().manual_seed(c + n + p)
    acts = _layer_maps(gen, c, n, p).to(dtype)
    idx = {
        "none": None,
        "order": torch.randperm(n, generator=gen),
        "resample": torch.randint(0, n, (max(p, n // 2),), generator=gen),
    }[index]
    compiled = _standardized_components_chunked(acts, 1, "conv", index=idx, n_eigenvalues=2)
    with torch_only:
        reference = _standardized_components_chunked(acts, 1, "conv", index=idx, n_eigenvalues=2)
    comps, constant, evals, total, zeros = compiled
    assert torch.equal(constant, reference[1]) and bool(constant[1])
    torch.testing.assert_close(zeros, reference[4], rtol=0, atol=0)
    torch.testing.assert_close(total, reference[3], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(evals, reference[2], rtol=1e-10, atol=1e-9)
    # PC1 itself where it is determined (a clear gap); everywhere its scores' ties are exact
    gap = evals[:, 0] >= 1.05 * evals[:, 1]
    assert int(gap.sum()) >= c // 2
    torch.testing.assert_close(comps[gap], reference[0][gap], rtol=0, atol=1e-9)
    if index == "none":
        assert torch.equal(comps[3, 0, 0::2][: comps[3, 0, 1::2].shape[0]], comps[3, 0, 1::2])


def test_channel_kernel_names_non_finite_channels() -> None:
    acts = torch.randn(6, 30, 4)
    acts[4, 7, 2] = float("nan")
    acts[2, 0, 0] = float("inf")
    with pytest.raises(CaptumElfaError, match=r"layer 'conv'.*channels \[2, 4\]"):
        _standardized_components_chunked(acts, 1, "conv", n_eigenvalues=2)


def test_pcace_fit_equal_with_and_without_the_kernels(torch_only) -> None:
    gen = torch.Generator().manual_seed(5)
    acts = _layer_maps(gen, 32, 150, 16)
    y = acts[5:8].mean((0, 2)).double() + 0.3 * torch.randn(150, generator=gen, dtype=torch.float64)
    fit = pcace_fit(acts, y)
    with torch_only:
        ref = pcace_fit(acts, y)
    well = ~ref.diagnostics.ill_defined & ~ref.constant
    assert int(well.sum()) >= 10
    torch.testing.assert_close(fit.scores[well], ref.scores[well], rtol=0, atol=1e-9)
    for name in ("eigengap", "explained_variance", "tied_fraction", "zero_fraction"):
        torch.testing.assert_close(
            getattr(fit.diagnostics, name), getattr(ref.diagnostics, name), rtol=1e-9, atol=1e-12, equal_nan=True
        )
    assert torch.equal(fit.diagnostics.ill_defined, ref.diagnostics.ill_defined)
