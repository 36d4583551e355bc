"""Memory of LayerFactorAnalysis.fit against the number of images (issue 7).

    .venvs/latest/bin/python benchmarks/bench_memory.py [--sizes 512,2048] [--batch-size 32]

Fits ELFA at ResNet-18 (random weights) layer1 — 64 channels of 56x56 maps, 3,136 samples per
image — on N images streamed batch by batch (seeded crops of scikit-learn's sample photos,
made on the fly so that the data themselves take no memory), each N in a fresh process, and
prints the peak extra resident memory of the fit: it must not grow with N. For comparison, the
reference `elfa` keeps every pixel of every image as float64 (N x 3,136 x 64 x 8 bytes for the
standardised matrix alone, before scikit-learn's copies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_elfa import PeakMemory, mib, resnet18, sample_images  # noqa: E402


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield sample_images(min(batch_size, n - start), seed=start)


def worker(n: int, batch_size: int) -> dict:
    from captum_elfa import LayerFactorAnalysis

    model = resnet18()
    LayerFactorAnalysis(model, model.layer1).fit(batches(batch_size, batch_size), progress=False)  # warm-up
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        lfa = LayerFactorAnalysis(model, model.layer1).fit(batches(n, batch_size), progress=False)
        seconds = time.perf_counter() - t0
    return {
        "n": n,
        "samples": lfa.n_samples_,
        "extra_mib": mib(pm.extra_kib),
        "method": pm.method,
        "seconds": seconds,
        "n_factors": lfa.n_factors_,
        "kmo": lfa.adequacy_.kmo,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,2048", help="numbers of images, comma-separated")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch_size)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"ELFA fit at ResNet-18 layer1 (64 x 56 x 56), batches of {args.batch_size} images made on the fly; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", str(n), "--batch-size", str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        ref_gib = n * 3136 * 64 * 8 / 2**30
        print(
            f"    N = {n:6d}: {r['samples']:>11,} samples, fit {r['seconds']:7.1f} s, peak extra memory "
            f"{r['extra_mib']:7.1f} MiB   (elfa's float64 data matrix alone: {ref_gib:6.2f} GiB)   [{r['method']}]"
        )
    if len(rows) >= 2:
        ratio = rows[-1]["extra_mib"] / rows[0]["extra_mib"]
        grow = rows[-1]["n"] / rows[0]["n"]
        verdict = "PASS" if ratio < 1.25 else "FAIL"
        print(f"\nSummary\n    images x{grow:.0f} -> peak memory x{ratio:.2f}   (target: flat, < 1.25)   {verdict}")


if __name__ == "__main__":
    main()
