"""Quickstart: train a small CNN on scikit-learn's digits, then explain its second conv layer.

    python examples/quickstart.py [--out DIR]

Runs in well under a minute on 2 CPU cores and downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from captum_elfa import GradCAM, LayerFactorAnalysis, NeuronPCACE, analyze, heatmap
from captum_elfa.demo import train_digits_cnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="quickstart_out", help="folder for the report and heatmaps")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model, x, y, acc = train_digits_cnn()  # seed 0, 15 epochs on all 1,797 digits
    print(f"digits CNN trained: accuracy {acc:.1%} on {len(x)} images")
    layer = model[3]  # ReLU after the second conv: 32 channels of 8x8 maps

    # ELFA: adequacy, number of factors, factor model, validity metrics, EFAM
    lfa = LayerFactorAnalysis(model, layer).fit(x, n_factors="parallel", progress=False)
    print(lfa.summary())
    efam = lfa.attribute(x[:8])  # [8, 1, 8, 8] in [0, 1]
    print("EFAM of the first image:\n", efam[0, 0].numpy().round(2))
    comm = lfa.metrics_.communalities
    print("most important channels (communality):", torch.argsort(comm, descending=True)[:5].tolist())

    # PCACE: rank the channels by their maximal correlation with the class-3 logit
    threes = x[y == 3]
    pc = NeuronPCACE(model, layer)
    pc.attribute(threes, target=3, progress=False)
    ranking = pc.rank_channels()
    print(
        "PCACE top channels for class 3:",
        ranking.channels[:5].tolist(),
        [round(float(s), 3) for s in ranking.scores[:5]],
    )

    # analyze(): Grad-CAM of the same layer's conv, and a heatmap image
    expl = analyze(x[:4], GradCAM(model, model[2]))
    rgb = heatmap(expl)
    print("Grad-CAM targets:", expl.target.tolist(), "heatmap array", rgb.shape, rgb.dtype)

    report = {"elfa": lfa.report(), "pcace": {"channels": ranking.channels.tolist(), "scores": ranking.scores.tolist()}}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f)
    lfa.save(os.path.join(args.out, "lfa.pt"))
    print(f"wrote {args.out}/report.json and {args.out}/lfa.pt")


if __name__ == "__main__":
    main()
