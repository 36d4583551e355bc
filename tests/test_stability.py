"""Split-half replicability: the streamed halves, Tucker's congruence, Hungarian matching, and the
verdicts on generated data with and without a factor structure."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.factor_model import fit_factor_model
from captum_elfa.stats.moments import batch_moments
from captum_elfa.stats.stability import (
    SplitHalfMoments,
    Stability,
    congruence_label,
    match_factors,
    split_half_assignment,
    split_half_stability,
    tucker_congruence,
)


def _stream(x: torch.Tensor, batch_size: int, seed: int = 0) -> SplitHalfMoments:
    acc = SplitHalfMoments(random_state=seed)
    for i, s in enumerate(range(0, x.shape[0], batch_size)):
        acc.update(x[s : s + batch_size], i)
    return acc


def _np_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and co-moment of the pixels of images ``x`` (N, C, H, W) or rows of (N, C)."""
    flat = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.ndim == 4 else x
    mean = flat.mean(0)
    d = flat - mean
    return flat.shape[0], mean, d.T @ d


def _correlation(m) -> torch.Tensor:
    cov = m.comoment / m.n
    sd = torch.sqrt(torch.diagonal(cov))
    r = cov / torch.outer(sd, sd)
    r = 0.5 * (r + r.T)
    r.fill_diagonal_(1.0)
    return r


# ---------------------------------------------------------------------------------------------
# the halves


@pytest.mark.parametrize("n_images", [1, 2, 3, 64, 101, 200])
def test_assignment_invariant_to_batch_size_and_balanced(n_images):
    gen = torch.Generator().manual_seed(n_images)
    x = torch.randn(n_images, 4, 3, 3, generator=gen, dtype=torch.float64)
    ref = _stream(x, 1)
    mask = split_half_assignment(n_images, 0)
    assert abs(int(mask.sum()) - int((~mask).sum())) <= 1
    assert (ref.n_images_a, ref.n_images_b) == (int(mask.sum()), int((~mask).sum()))
    for bs in (7, 64, 3, 2):
        acc = _stream(x, bs)
        assert (acc.n_images_a, acc.n_images_b) == (ref.n_images_a, ref.n_images_b)
        for m, r in zip(acc.halves(), ref.halves()):
            if r is None:
                assert m is None
                continue
            assert m.n == r.n
            torch.testing.assert_close(m.mean, r.mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(m.comoment, r.comoment, rtol=0, atol=1e-10)


def test_assignment_matches_a_stream_of_any_split():
    """The stream of batches [start, start + n) gives the same halves as the whole range: the
    assignment is a function of the global image index only."""
    whole = split_half_assignment(500, 3)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, 500), size=40, replace=False))
    pieces = [split_half_assignment(int(e - s), 3, start=int(s)) for s, e in zip([0, *cuts], [*cuts, 500])]
    assert torch.equal(torch.cat(pieces), whole)
    # every pair of consecutive images is split one to each half
    assert bool((whole[0::2] ^ whole[1::2]).all())


def test_assignment_is_seeded():
    masks = {s: split_half_assignment(400, s) for s in range(8)}
    assert torch.equal(split_half_assignment(400, 5), masks[5])
    for s in range(8):
        for t in range(s + 1, 8):
            # independent seeds: about half the pairs swap; far from identical
            agree = float((masks[s] == masks[t]).double().mean())
            assert 0.3 < agree < 0.7, (s, t, agree)
    # and the halves are not a fixed pattern (alternating, or blocks)
    m = masks[0]
    assert 0.3 < float(m[0::2].double().mean()) < 0.7


def test_halves_equal_numpy_moments_of_their_images():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(61, 5, 4, 3, generator=gen) * 3 + 1  # float32 input: moments in float64
    acc = _stream(x, 9, seed=7)
    mask = split_half_assignment(61, 7).numpy()
    xn = x.double().numpy()
    for m, sel in zip(acc.halves(), (mask, ~mask)):
        n, mean, com = _np_moments(xn[sel])
        assert m.n == n and m.mean.dtype == torch.float64
        np.testing.assert_allclose(m.mean.numpy(), mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(m.comoment.numpy(), com, rtol=1e-12, atol=1e-10)
    assert (acc.n_images_a, acc.n_images_b) == (int(mask.sum()), int((~mask).sum()))


@pytest.mark.parametrize("shape", [(50, 6, 5, 5), (50, 6)])
def test_full_equals_moments_of_all_data(shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 - 5
    acc = _stream(x, 8, seed=1)
    full, direct = acc.full(), batch_moments(x)
    assert acc.moments is not None and acc.moments.n == full.n == direct.n
    torch.testing.assert_close(full.mean, direct.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(full.comoment, direct.comoment, rtol=0, atol=1e-10)
    n, mean, com = _np_moments(x.numpy())
    np.testing.assert_allclose(full.comoment.numpy(), com, rtol=0, atol=1e-10)
    assert acc.batches == 7 and acc.images == 50 and acc.spatial == tuple(shape[1:])


def test_nonfinite_batch_is_reported():
    x = torch.randn(40, 3, 2, 2)
    x[23, 1, 0, 0] = float("nan")
    acc = _stream(x, 5)
    assert acc.first_nonfinite() == 4
    assert _stream(torch.randn(40, 3, 2, 2), 5).first_nonfinite() == -1
    assert SplitHalfMoments().first_nonfinite() == -1 and SplitHalfMoments().moments is None


def test_bad_input():
    with pytest.raises(CaptumElfaError, match="shape"):
        SplitHalfMoments().update(torch.randn(3, 4, 5), 0)
    with pytest.raises(CaptumElfaError, match="random_state"):
        SplitHalfMoments(random_state=0.5)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_halves_equal_cpu_halves():
    x = torch.randn(37, 6, 4, 4, dtype=torch.float64)
    cpu = _stream(x, 5, seed=4)
    gpu = _stream(x.cuda(), 5, seed=4)
    assert gpu.moments_a.mean.is_cuda
    for m, r in zip(gpu.halves(), cpu.halves()):
        assert m.n == r.n
        torch.testing.assert_close(m.comoment.cpu(), r.comoment, rtol=0, atol=1e-10)
    assert gpu.first_nonfinite() == -1


# ---------------------------------------------------------------------------------------------
# congruence and matching


def test_tucker_congruence_against_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 4)) + 0.3
    expected = np.array(
        [[x @ y / np.sqrt((x @ x) * (y @ y)) for y in b.T] for x in a.T]
    )  # the definition, column by column
    got = tucker_congruence(torch.from_numpy(a), torch.from_numpy(b))
    assert got.shape == (3, 4) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=1e-15)
    # not a correlation: a shift changes it, a positive scale does not
    np.testing.assert_allclose(tucker_congruence(torch.from_numpy(a * 3.0), torch.from_numpy(b)).numpy(), expected)
    assert not np.allclose(tucker_congruence(torch.from_numpy(a + 1.0), torch.from_numpy(b)).numpy(), expected)
    with pytest.raises(CaptumElfaError, match="rows"):
        tucker_congruence(torch.zeros(3, 2) + 1, torch.ones(4, 2))
    with pytest.raises(CaptumElfaError, match="all zero"):
        tucker_congruence(torch.ones(3, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("seed", range(10))
def test_match_recovers_permutation_and_signs(seed):
    rng = np.random.default_rng(seed)
    c, k = 15, 5
    ref = torch.from_numpy(rng.normal(size=(c, k)))
    perm_true = torch.from_numpy(rng.permutation(k))
    flip = torch.from_numpy(rng.choice([-1.0, 1.0], size=k))
    other = torch.empty_like(ref)
    other[:, perm_true] = ref * flip + 0.05 * torch.from_numpy(rng.normal(size=(c, k)))
    perm, sign, phi = match_factors(ref, other)
    assert torch.equal(perm, perm_true)
    assert torch.equal(sign, flip)
    aligned = other[:, perm] * sign
    torch.testing.assert_close(phi, torch.diagonal(tucker_congruence(ref, aligned)))
    assert bool((phi > 0.9).all())


def test_match_is_a_global_optimum_not_greedy():
    """A greedy match takes the largest |phi| first; the Hungarian one maximises the sum."""
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    # other[:, 0] is close to both ref factors, other[:, 1] only to ref[:, 0]
    other = torch.tensor([[0.75, 0.6], [0.66, 0.0], [0.0, 0.8]], dtype=torch.float64)
    perm, sign, phi = match_factors(ref, other)
    p = tucker_congruence(ref, other).abs()
    assert float(p[0, 0]) > float(p[0, 1])  # greedy would give ref 0 <- other 0
    assert perm.tolist() == [1, 0]
    assert float(phi.sum()) == pytest.approx(float(p[0, 1] + p[1, 0]))
    with pytest.raises(CaptumElfaError, match="shape"):
        match_factors(ref, other[:, :1])


# ---------------------------------------------------------------------------------------------
# labels and the Stability record


def test_labels_at_the_boundaries():
    assert congruence_label(1.0) == "equal"
    assert congruence_label(0.95) == "equal"
    assert congruence_label(np.nextafter(0.95, 0)) == "fair similarity"
    assert congruence_label(0.85) == "fair similarity"
    assert congruence_label(np.nextafter(0.85, 0)) == "not replicable"
    assert congruence_label(-0.99) == "not replicable"


def test_stability_labels_threshold_and_dict():
    """Half B's factor j is built at a chosen angle from half A's = full's: congruence exactly
    cos(angle), so the labels at 0.95 / 0.85 are checked through split_half_stability."""
    c = 6
    targets = [0.99, 0.95, 0.9, 0.85, 0.5]
    full = torch.zeros(c, len(targets), dtype=torch.float64)
    b = torch.zeros_like(full)
    for j, t in enumerate(targets):
        full[j, j] = 1.0
        b[j, j] = t
        b[5, j] = np.sqrt(1 - t * t)  # a shared orthogonal direction: each b_j still matches j
    st = split_half_stability(full, full.clone(), b, 10, 9)
    np.testing.assert_allclose(st.congruence.numpy(), targets, rtol=0, atol=1e-12)
    assert st.labels[0] == "equal" and st.labels[2] == "fair similarity" and st.labels[4] == "not replicable"
    assert st.labels[1] in ("equal", "fair similarity") and st.labels[3] in ("fair similarity", "not replicable")
    assert st.replicable.tolist()[:3] == [True, True, True] and st.replicable.tolist()[4] is False
    assert split_half_stability(full, full, b, 10, 9, threshold=0.92).replicable.tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]
    d = json.loads(json.dumps(st.to_dict()))
    assert d["labels"] == st.labels and d["n_images_a"] == 10 and d["n_images_b"] == 9
    assert len(d["congruence"]) == 5 and d["threshold"] == 0.85
    line = st.summary()
    assert "\n" not in line and "10 vs 9 images" in line and "not replicable" in line


def test_stability_rejects_inconsistent_input():
    full = torch.randn(8, 3, dtype=torch.float64)
    with pytest.raises(CaptumElfaError, match="loadings_a"):
        split_half_stability(full, full[:, :2], full, 5, 5)
    with pytest.raises(CaptumElfaError, match="loadings_b"):
        split_half_stability(full, full, full[:7], 5, 5)
    with pytest.raises(CaptumElfaError, match="n_images_a"):
        split_half_stability(full, full, full, -1, 5)
    with pytest.raises(CaptumElfaError, match="threshold"):
        split_half_stability(full, full, full, 5, 5, threshold=1.5)
    with pytest.raises(CaptumElfaError, match="NaN"):
        split_half_stability(full, full * float("nan"), full, 5, 5)


# ---------------------------------------------------------------------------------------------
# the verdicts on generated activations


def _activations(rng: np.random.Generator, structure: bool, n: int = 200, c: int = 20, hw: int = 8) -> torch.Tensor:
    """(n, c, hw, hw) maps: channel = loadings @ factor maps + unique noise, or pure noise."""
    if not structure:
        return torch.from_numpy(rng.normal(size=(n, c, hw, hw)))
    k = 3
    loadings = np.zeros((c, k))
    for i in range(c):  # simple structure: each channel loads 0.6-0.9 on one factor
        loadings[i, i % k] = rng.uniform(0.6, 0.9)
    f = rng.normal(size=(n, k, hw, hw))
    x = np.einsum("ck,nkhw->nchw", loadings, f)
    unique = np.sqrt(1 - (loadings**2).sum(1))[None, :, None, None]
    return torch.from_numpy(x + unique * rng.normal(size=(n, c, hw, hw)))


def _split_half(x: torch.Tensor, k: int, seed: int) -> Stability:
    acc = _stream(x, 32, seed=seed)
    a, b = acc.halves()
    models = [fit_factor_model(_correlation(m), k, rotation="varimax") for m in (acc.full(), a, b)]
    return split_half_stability(*(m.loadings for m in models), acc.n_images_a, acc.n_images_b)


@pytest.mark.parametrize("seed", range(3))
def test_known_factor_structure_is_equal(seed):
    st = _split_half(_activations(np.random.default_rng(seed), True), 3, seed)
    assert st.labels == ["equal"] * 3, st.summary()
    assert bool(st.replicable.all()) and bool((st.congruence_a >= 0.95).all()) and bool((st.congruence_b >= 0.95).all())
    assert (st.n_images_a, st.n_images_b) == (100, 100)


@pytest.mark.parametrize("seed", range(4))
def test_pure_noise_is_not_replicable(seed):
    st = _split_half(_activations(np.random.default_rng(100 + seed), False), 3, seed)
    assert "not replicable" in st.labels, st.summary()
    assert not bool(st.replicable.all())
    # not "all three": on noise a Heywood singlet (one channel, loading 1, uniqueness 0) can come
    # out in all three fits and replicate at 0.997 (measured: 3 factors of 300, 100 noise
    # data sets; at least 2 of 3 not replicable in every one)


# ---------------------------------------------------------------------------------------------
# torch.distributed: each rank splits its own images; all_reduce merges each half over the ranks

_SHARDS = (70, 130)
_BATCH = (16, 29)


def _dist_worker(rank: int, port: int, tmpdir: str) -> None:
    import traceback
    from datetime import timedelta

    import torch.distributed as dist

    from captum_elfa._distributed import DistributedError

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    out: dict = {}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
        x = torch.randn(sum(_SHARDS), 5, 3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        shard = x[: _SHARDS[0]] if rank == 0 else x[_SHARDS[0] :]
        acc = _stream(shard, _BATCH[rank], seed=5)
        acc.all_reduce()
        out["halves"] = [(m.n, m.mean, m.comoment) for m in acc.halves()]
        out["counts"] = (acc.n_images_a, acc.n_images_b, acc.batches, acc.spatial, acc.first_nonfinite())
        # a failing rank: the other raises instead of waiting
        acc2 = _stream(shard, _BATCH[rank], seed=5)
        if rank == 1:
            acc2.all_reduce(failed=True)
        else:
            try:
                acc2.all_reduce()
                out["failed_error"] = None
            except DistributedError as e:
                out["failed_error"] = str(e)
    except Exception:
        out["crash"] = traceback.format_exc()
    finally:
        torch.save(out, os.path.join(tmpdir, f"rank{rank}.pt"))
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10-25 s on 2 busy cores
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_all_reduce_merges_each_half_over_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_dist_worker, args=(r, port, str(tmp_path)), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank is still running after 120 s"
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in res:
        assert "crash" not in r, r["crash"]
    x = torch.randn(sum(_SHARDS), 5, 3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    # expected: each rank's own split of its shard, in rank order
    in_a = torch.cat([split_half_assignment(n, 5) for n in _SHARDS])
    expected = [batch_moments(x[in_a]), batch_moments(x[~in_a])]
    for r in res:
        n_batches = sum(-(-n // b) for n, b in zip(_SHARDS, _BATCH))
        assert r["counts"] == (int(in_a.sum()), int((~in_a).sum()), n_batches, (5, 3, 3), -1)
        for (n, mean, com), e in zip(r["halves"], expected):
            assert n == e.n
            torch.testing.assert_close(mean, e.mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(com, e.comoment, rtol=0, atol=1e-10)
    for (_, m0, c0), (_, m1, c1) in zip(res[0]["halves"], res[1]["halves"]):
        assert torch.equal(m0, m1) and torch.equal(c0, c1)  # bitwise identical on every rank
    assert res[0]["failed_error"] is not None and "rank(s) [1] failed" in res[0]["failed_error"]
