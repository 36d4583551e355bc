"""How many images does ELFA need for a layer of C channels? (issue 10, item 3)

The pixels of one image are strongly dependent, so the number of samples ``N*H*W`` says little
about how reproducible a factor model is. This script measures it against the number of images
``N``: for random-init torchvision ResNet-18 layers (layer1: 64 channels, layer2: 128; layer3, 256,
with ``--layers``; 64x64 inputs) and a pool of 64x64 images (random crops of scikit-learn's two sample photos at
random scales, upsampled digits in random colours, low-pass noise, mixed), it draws two DISJOINT
sets of ``N`` images, fits the ML factor model with ``k`` = the Kaiser count of the whole pool
(and, for layer1, ``2k``) on each and records: the mean over factors of the matched |Tucker
congruence| of the varimax loadings (Hungarian matching; what the split-half stability reports),
and the congruence of the two common-factor spaces, rotation aside (unrotated loadings, the second
set rotated onto the first by orthogonal Procrustes); also the Kaiser count and the KMO of each set
against the whole pool. Lorenzo-Seva & ten Berge (2006): >= 0.95 "equal", >= 0.85 "fair".

It ends by checking the two claims of ``captum_elfa.stats.screening.min_images`` (``2 C``):
at every tested ``N >= min_images`` the factor spaces agree to >= 0.90 in every repetition, and at
every ``N <= min_images / 4`` the varimax factors fall below "fair" (0.85) in some repetition.

Usage::

    python benchmarks/bench_min_images.py                 # ~2 minutes on 2 idle cores
    python benchmarks/bench_min_images.py --layers layer1,layer2 --reps 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from captum_elfa.stats.adequacy import kmo  # noqa: E402
from captum_elfa.stats.factor_model import ml_factor_analysis  # noqa: E402
from captum_elfa.stats.nfactors import kaiser  # noqa: E402
from captum_elfa.stats.rotations import rotate  # noqa: E402
from captum_elfa.stats.screening import min_images, screen_channels  # noqa: E402

RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def image_pool(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` images [n, 3, size, size], a shuffled mix of photo crops, digits and smooth noise."""
    from sklearn.datasets import load_sample_images

    from captum_elfa.demo import load_digits_tensors

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    photos = [torch.tensor(im, dtype=torch.float32).permute(2, 0, 1) / 255.0 for im in load_sample_images().images]
    digits = load_digits_tensors()[0]
    out = torch.empty(n, 3, size, size)
    kinds = rng.integers(0, 3, n)
    for i in range(n):
        if kinds[i] == 0:
            p = photos[int(rng.integers(len(photos)))]
            s = int(rng.integers(48, 257))
            y, x = int(rng.integers(0, p.shape[1] - s + 1)), int(rng.integers(0, p.shape[2] - s + 1))
            out[i] = F.interpolate(
                p[None, :, y : y + s, x : x + s], size=(size, size), mode="bilinear", antialias=True
            )[0]
        elif kinds[i] == 1:
            d = F.interpolate(digits[int(rng.integers(len(digits)))][None], size=(size, size), mode="bilinear")[0]
            fg, bg = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
            out[i] = bg + (fg - bg) * d
        else:
            z = torch.randn(3, size, size, generator=g)
            f = torch.fft.fftfreq(size)
            width = float(rng.uniform(0.02, 0.3))
            lp = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * width**2))
            sm = torch.fft.ifft2(torch.fft.fft2(z) * lp).real
            out[i] = 0.5 + 0.25 * sm / sm.std()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (out.clamp(0, 1) - mean) / std


def layer_activations(x: torch.Tensor, layers: list, batch: int = 200) -> dict:
    """Per-layer activations [N, C, H, W] (float32) of a random-init ResNet-18."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    acts: dict = {name: [] for name in layers}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: acts[name].append(o.detach()))
        for name in layers
    ]
    try:
        with torch.no_grad():
            for b in x.split(batch):
                model(b)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(v) for name, v in acts.items()}


def correlation(a: torch.Tensor, idx: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Correlation matrix of the ``live`` channels over every pixel of the images ``idx``."""
    sub = a[idx][:, live].to(torch.float64)
    flat = sub.transpose(0, 1).reshape(live.numel(), -1)
    flat = flat - flat.mean(1, keepdim=True)
    cov = flat @ flat.T
    d = torch.sqrt(torch.diagonal(cov))
    r = cov / torch.outer(d, d)
    r = 0.5 * (r + r.T)
    r.fill_diagonal_(1.0)
    return r


def fit(r: torch.Tensor, k: int) -> tuple:
    """ML loadings (unrotated, and varimax-rotated) of ``k`` factors; the classical starts only."""
    w = ml_factor_analysis(r, k, n_random_starts=0).loadings
    return w, rotate(w, "varimax").loadings if k > 1 else w


def procrustes_congruence(wa: torch.Tensor, wb: torch.Tensor) -> np.ndarray:
    """Congruence per factor of ``wa`` and ``wb`` rotated onto it (orthogonal Procrustes).

    Rotation aside, this asks whether the two sets span the same common-factor space.
    """
    u, _, vt = torch.linalg.svd(wb.T @ wa)
    wb_rot = wb @ (u @ vt)
    num = (wa * wb_rot).sum(0)
    return (num / (wa.norm(dim=0) * wb_rot.norm(dim=0))).abs().numpy()


def matched_congruence(wa: torch.Tensor, wb: torch.Tensor) -> np.ndarray:
    """|Tucker congruence| of the factors of ``wa`` and ``wb`` matched by the Hungarian algorithm."""
    na = wa / wa.norm(dim=0, keepdim=True)
    nb = wb / wb.norm(dim=0, keepdim=True)
    phi = (na.T @ nb).abs().numpy()
    rows, cols = linear_sum_assignment(-phi)
    return phi[rows, cols]


def run_layer(name: str, a: torch.Tensor, reps: int, seed: int, k_mult: tuple) -> list:
    n_pool, c = a.shape[0], a.shape[1]
    # screen on the whole pool (dead channels are common in random ReLU nets)
    flat = a.transpose(0, 1).reshape(c, -1).to(torch.float64)
    mean = flat.mean(1)
    cen = flat - mean[:, None]
    scr = screen_channels(mean, cen @ cen.T / flat.shape[1], flat.shape[1])
    live = scr.live
    cl = live.numel()
    r_pool = correlation(a, torch.arange(n_pool), live)
    ev_pool = torch.linalg.eigvalsh(r_pool).flip(0)
    k0 = kaiser(ev_pool)
    kmo_pool = kmo(r_pool)[0]
    print(
        f"\n{name}: {c} channels ({cl} live, {scr.dead.numel()} dead, {scr.collinear.numel()} collinear), "
        f"{a.shape[2]}x{a.shape[3]} pixels; pool of {n_pool} images: Kaiser k = {k0}, KMO = {kmo_pool:.3f}"
    )
    print(f"{'k':>4} {'N':>6} {'N/C':>6} {'N/k':>6} {'pixels/C':>9} {'mean phi':>9} {'min mean':>9} {'min phi':>8} "
          f"{'procr.':>7} {'kaiser':>11} {'|dKMO|':>7}")  # fmt: skip
    rows = []
    rng = np.random.default_rng(seed)
    sizes = [2, 8] + [max(int(round(ratio * cl)), 2) for ratio in RATIOS]
    for mult in k_mult:
        k = min(int(round(mult * k0)), cl - 2)
        for n_img in sizes:
            if 2 * n_img > n_pool:
                break
            means, mins, ks, dk, pro = [], [], [], [], []
            for _ in range(reps):
                perm = torch.from_numpy(rng.permutation(n_pool))
                ra, rb = correlation(a, perm[:n_img], live), correlation(a, perm[n_img : 2 * n_img], live)
                if not (torch.isfinite(ra).all() and torch.isfinite(rb).all()):
                    continue  # a channel constant over these few images: no correlation at all
                for rr in (ra, rb):
                    ks.append(kaiser(torch.linalg.eigvalsh(rr)))
                    dk.append(abs(kmo(rr)[0] - kmo_pool))
                if n_img * a.shape[2] * a.shape[3] <= 2 * cl:
                    continue  # too few pixels for a factor model at all: KMO and Kaiser only
                (ua, wa), (ub, wb) = fit(ra, k), fit(rb, k)
                phi = matched_congruence(wa, wb)
                means.append(float(phi.mean()))
                mins.append(float(phi.min()))
                pro.append(float(procrustes_congruence(ua, ub).mean()))
            nan = float("nan")
            row = {
                "layer": name, "C": cl, "k": k, "N": n_img, "N/C": n_img / cl, "N/k": n_img / k,
                "mean_phi": float(np.mean(means)) if means else nan, "worst_mean_phi": min(means, default=nan),
                "min_phi": min(mins, default=nan), "procrustes": min(pro, default=nan),
                "kaiser_range": (min(ks), max(ks)) if ks else None, "dkmo": max(dk, default=nan),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{k:>4} {n_img:>6} {n_img / cl:>6.2f} {n_img / k:>6.1f} {n_img * a.shape[2] * a.shape[3] / cl:>9.0f} "
                f"{row['mean_phi']:>9.3f} {row['worst_mean_phi']:>9.3f} {row['min_phi']:>8.3f} {row['procrustes']:>7.3f} "
                f"{str(row['kaiser_range']):>11} {row['dkmo']:>7.3f}",
                flush=True,
            )
    return rows


def check_rule(rows: list, subspace: float, fair: float) -> bool:
    """The rule's two claims on one layer's rows, printed."""
    ok = True
    for k in sorted({r["k"] for r in rows}):
        rk = [r for r in rows if r["k"] == k and not math.isnan(r["worst_mean_phi"])]
        need = min_images(rk[0]["C"], k)
        above = [r for r in rk if r["N"] >= need]
        below = [r for r in rk if r["N"] <= need / 4]
        a_ok = bool(above) and all(r["procrustes"] >= subspace for r in above)
        b_ok = bool(below) and all(r["worst_mean_phi"] < fair for r in below)
        ok &= a_ok and b_ok
        sub_txt = ", ".join(f"{r['N']}: {r['procrustes']:.3f}" for r in above) or "none tested"
        var_txt = ", ".join(f"{r['N']}: {r['worst_mean_phi']:.3f}" for r in below) or "none tested"
        print(
            f"  {rows[0]['layer']} C={rk[0]['C']} k={k}: min_images = {need}; N >= {need}: factor-space "
            f"congruence >= {subspace} in every repetition ({sub_txt}) {'PASS' if a_ok else 'FAIL'}; "
            f"N <= {need / 4:.0f}: varimax factors below 'fair' {fair} ({var_txt}) {'PASS' if b_ok else 'FAIL'}"
        )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="layer1,layer2")
    ap.add_argument("--pool", type=int, default=1100, help="images in the pool")
    ap.add_argument("--reps", type=int, default=2, help="pairs of disjoint sets per N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k-mult", default="1,2", help="k = these multiples of the pool's Kaiser count (layer1 only)")
    args = ap.parse_args()
    threadpool_limits(1, "blas")
    t0 = time.perf_counter()
    layers = args.layers.split(",")
    x = image_pool(args.pool, seed=args.seed)
    acts = layer_activations(x, layers)
    print(f"pool: {args.pool} images 64x64 ({time.perf_counter() - t0:.1f} s with the forward passes)")
    k_mult = tuple(float(v) for v in args.k_mult.split(","))
    all_rows = [
        run_layer(name, acts[name], args.reps, args.seed, k_mult if i == 0 else (1.0,)) for i, name in enumerate(layers)
    ]
    print("\nthe rule min_images(C) = 2 C:")
    passed = all([check_rule(rows, 0.90, 0.85) for rows in all_rows])
    print(f"\n{'PASS' if passed else 'FAIL'}  total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
