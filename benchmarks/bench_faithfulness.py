"""Faithfulness of EFAM, Grad-CAM and Saliency: deletion and insertion AUC on scikit-learn's digits.

A small CNN (conv 16 - conv 32 - max-pool - conv 32 - global average pool - linear) is trained
for 15 epochs (seeded; a few seconds) on 1,497 digits; ELFA is fitted on its last convolutional layer
(``relu3``, 32 channels at 4x4) over the training images. For ~300 held-out digits, each method's
map ranks the 8x8 pixels, and :func:`captum_elfa.metrics.deletion_curve` /
:func:`~captum_elfa.metrics.insertion_curve` record the softmax probability of the predicted
class as the top pixels are removed (deletion: set to 0, the digits' background, or blurred) or
put back into a blurred image (insertion; or into an all-zero image). Areas under the curves:
deletion lower is better, insertion higher is better.

Methods: EFAM (class-agnostic), Grad-CAM on the same layer (``analyze(x, GradCAM(model,
layer))``, layer-sized map), Saliency (``analyze(x, Gradient(model))``, ``|grad|`` summed over
channels, input-sized), and a random map. EFAM and Grad-CAM maps are 4x4, upsampled bilinearly
to 8x8 by the curve functions. Whether EFAM beats Grad-CAM is reported as measured.

Usage::

    python benchmarks/bench_faithfulness.py                # seed 0, ~300 test digits
    python benchmarks/bench_faithfulness.py --seeds 0 1 2  # several trained networks
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from captum_elfa import GradCAM, Gradient, LayerFactorAnalysis, analyze
from captum_elfa.demo import load_digits_tensors, train_digits_cnn
from captum_elfa.metrics import auc, deletion_curve, insertion_curve


def load(n_test: int, seed: int) -> tuple:
    x, y = load_digits_tensors()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def train(xtr: torch.Tensor, ytr: torch.Tensor, epochs: int, seed: int) -> tuple:
    """A fixed number of epochs (deterministic under the seed; a few seconds on 2 cores)."""
    start = time.perf_counter()
    model = train_digits_cnn(
        epochs, seed=seed, depth=3, x=xtr, y=ytr, lr=3e-3, batch_size=64, shuffle_seed=seed, num_threads=None
    ).model
    return model, time.perf_counter() - start


def run(seed: int, args: argparse.Namespace) -> dict:
    xtr, ytr, xte, yte = load(args.test, seed)
    model, seconds = train(xtr, ytr, args.epochs, seed)
    with torch.no_grad():
        pred = model(xte).argmax(1)
    acc = float((pred == yte).float().mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Heywood cases are reported by summary()
        lfa = LayerFactorAnalysis(model, model.relu3).fit(xtr, n_factors=args.n_factors, progress=False)
    maps = {
        "EFAM": lfa.attribute(xte),
        "Grad-CAM": analyze(xte, GradCAM(model, model.relu3), target=pred).extras["layer_attribution"],
        "Saliency": analyze(xte, Gradient(model), target=pred).val.abs().sum(1, keepdim=True),
        "random": torch.rand(len(yte), 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1000)),
    }
    settings = {
        "del(0)": (deletion_curve, 0.0),
        "del(blur)": (deletion_curve, "blur"),
        "ins(blur)": (insertion_curve, "blur"),
        "ins(0)": (insertion_curve, 0.0),
    }
    result: dict = {"seed": seed, "train_seconds": seconds, "accuracy": acc, "lfa": lfa, "auc": {}}
    for name, m in maps.items():
        for col, (fn, base) in settings.items():
            f, s = fn(model, xte, m, target=pred, steps=args.steps, baseline=base, score="prob")
            result["auc"][(name, col)] = auc(f, s).numpy()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--test", type=int, default=300, help="held-out digits (default 300)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--steps", type=int, default=16, help="curve increments (64 pixels: 4 per step)")
    p.add_argument("--n-factors", default="kaiser")
    args = p.parse_args()
    if args.n_factors not in ("kaiser", "scree", "parallel"):
        args.n_factors = int(args.n_factors)
    print(
        f"load average at start: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    methods = ["EFAM", "Grad-CAM", "Saliency", "random"]
    cols = ["del(0)", "del(blur)", "ins(blur)", "ins(0)"]
    better = {"del(0)": "lower", "del(blur)": "lower", "ins(blur)": "higher", "ins(0)": "higher"}
    wins = {c: {m: 0 for m in methods} for c in cols}
    t0 = time.perf_counter()
    for seed in args.seeds:
        r = run(seed, args)
        lfa = r["lfa"]
        print(
            f"\nseed {seed}: {args.epochs} epochs ({r['train_seconds']:.1f} s), test accuracy {r['accuracy']:.3f} on {args.test} digits; "
            f"ELFA on relu3: {lfa.n_factors_} factors ({lfa.n_factors_method_}), KMO {lfa.adequacy_.kmo:.3f}, "
            f"R2 {lfa.metrics_.r2:.3f}, {len(lfa.dead_channels_)} dead of {lfa.n_channels_}"
        )
        print(
            "AUC of the predicted class's softmax probability, mean +- s.e. over images "
            "(deletion: lower is better; insertion: higher is better)"
        )
        print(f"{'method':<10}" + "".join(f"{c + (' v' if better[c] == 'lower' else ' ^'):>20}" for c in cols))
        for m in methods:
            cells = []
            for c in cols:
                v = r["auc"][(m, c)]
                cells.append(f"{v.mean():.4f} +- {v.std(ddof=1) / np.sqrt(len(v)):.4f}")
            print(f"{m:<10}" + "".join(f"{x:>20}" for x in cells))
        for c in cols:
            vals = {m: r["auc"][(m, c)].mean() for m in methods}
            best = (min if better[c] == "lower" else max)(vals, key=vals.get)
            wins[c][best] += 1
        e, g = r["auc"][("EFAM", "del(0)")], r["auc"][("Grad-CAM", "del(0)")]
        ei, gi = r["auc"][("EFAM", "ins(blur)")], r["auc"][("Grad-CAM", "ins(blur)")]
        print(
            f"per image, EFAM better than Grad-CAM: deletion(0) {np.mean(e < g):.1%}, insertion(blur) {np.mean(ei > gi):.1%} "
            f"(ties: {np.mean(e == g):.1%}, {np.mean(ei == gi):.1%})"
        )
    print("\nbest method per column, over seeds:")
    for c in cols:
        print(f"  {c:<10} " + ", ".join(f"{m} {n}" for m, n in wins[c].items() if n))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s; load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
