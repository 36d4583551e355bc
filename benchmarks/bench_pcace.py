"""Benchmark NeuronPCACE on torchvision ResNet-18 (random weights) layer4.

Prints, in one run:

(a) the speed of the statistics (standardise + PCA + batched ACE over all 512 channels) against
    the authors' recipe (scikit-learn StandardScaler + PCA, then ``ace.ace.ACESolver`` per
    channel, |corr(phi, theta)|), timed on a subset of channels and extrapolated linearly to the
    whole layer (the recipe treats channels independently); target >= 100x;
(b) the whole ``attribute`` call against the bare forward pass over the same images, batched the
    same way; target <= 1.25x;
(c) the memory of the activations: one float32 copy.

Usage::

    python benchmarks/bench_pcace.py                 # 300 images of 224x224, as the paper
    python benchmarks/bench_pcace.py --images 100 --oracle-channels 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings

import numpy as np
import torch
import torchvision

from captum_elfa.attr.neuron_pcace import NeuronPCACE, _chunk_channels, pcace_statistics


def recipe_scores(acts: np.ndarray, y: np.ndarray, channels: list[int]) -> np.ndarray:
    """The authors' pcace_resnet_18.py statistics for ``channels`` of ``acts`` [N, C, H, W]."""
    from ace.ace import ACESolver
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    out = []
    for c in channels:
        x = acts[:, c].reshape(acts.shape[0], -1).astype(np.float64).tolist()
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            comp = PCA(n_components=1).fit_transform(StandardScaler().fit_transform(x))
            solver = ACESolver()
            solver.specify_data_set(np.transpose(comp).tolist(), [float(v) for v in y])
            with contextlib.redirect_stdout(io.StringIO()):
                solver.solve()
            out.append(abs(np.corrcoef(solver.x_transforms[0], solver.y_transform)[0, 1]))
    return np.array(out)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--oracle-channels", type=int, default=16, help="channels timed with the recipe")
    parser.add_argument("--target", type=int, default=0, help="class index (pre-softmax logit)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings of (b)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(args.images, 3, 224, 224)
    batches = torch.split(images, args.batch_size)
    print(
        f"ResNet-18 (random init) layer4, {args.images} images 3x224x224, batch {args.batch_size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    # warm-up pass that also captures layer4 (untimed)
    store: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.append(o.detach().clone()))
    with torch.no_grad():
        logits = torch.cat([model(b) for b in batches])
    handle.remove()
    acts4 = torch.cat(store)  # [N, C, H, W]
    n, c, h, w = acts4.shape
    y = logits[:, args.target].double()

    # (b) whole attribute call vs bare forward pass
    def bare() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    pc = NeuronPCACE(model, model.layer4)
    fwd_times, attr_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a burst of load elsewhere hits both
        fwd_times.append(timed(bare)[0])
        t, scores = timed(lambda: pc.attribute(images, target=args.target, progress=False, batch_size=args.batch_size))
        attr_times.append(t)
    t_fwd, t_attr = min(fwd_times), min(attr_times)

    # (a) statistics vs the recipe
    acts_cnp = acts4.reshape(n, c, h * w).transpose(0, 1).contiguous()  # [C, N, P] float32

    def stats() -> torch.Tensor:
        return pcace_statistics(acts_cnp, y, 1)[0]

    t_stats, ours = timed(stats)
    t_stats = min(t_stats, timed(stats)[0])
    k = min(args.oracle_channels, c)
    channels = np.linspace(0, c - 1, k).round().astype(int).tolist()
    t_oracle, ref = timed(lambda: recipe_scores(acts4.numpy(), y.numpy(), channels))
    t_oracle_all = t_oracle / k * c
    diff = np.abs(ours.numpy()[channels] - ref)
    agree = np.abs(scores.numpy() - ours.numpy()).max()

    print("\n(a) statistics over all channels (standardise + PCA + batched ACE)")
    print(f"    captum_elfa          : {t_stats:8.3f} s for {c} channels")
    print(
        f"    recipe (sklearn+ace) : {t_oracle:8.3f} s for {k} channels -> {t_oracle_all:8.1f} s for {c} "
        f"channels (extrapolated linearly)"
    )
    print(f"    speed-up             : {t_oracle_all / t_stats:8.0f} x   (target >= 100 x)")
    print(f"    agreement on the {k} channels: max |delta| {diff.max():.2e}; attribute() vs stats: {agree:.1e}")

    print("\n(b) whole attribute() call vs bare forward pass")
    runs = lambda ts: "" if len(ts) == 1 else "  (best of " + ", ".join(f"{t:.2f}" for t in ts) + ")"  # noqa: E731
    print(f"    bare forward pass    : {t_fwd:8.3f} s{runs(fwd_times)}")
    print(f"    attribute()          : {t_attr:8.3f} s{runs(attr_times)}")
    print(f"    ratio                : {t_attr / t_fwd:8.3f}     (target <= 1.25)")

    print("\n(c) memory")
    expected = n * c * h * w * 4
    print(
        f"    activations held     : {pc.activation_bytes_ / 2**20:8.1f} MiB  float32, shape "
        f"[C={c}, N={n}, H*W={h * w}] (one copy: N*C*H*W*4 = {expected / 2**20:.1f} MiB)"
    )
    chunk = min(c, _chunk_channels(n, h * w))
    work = chunk * 8 * (2 * n * h * w + min(n, h * w) ** 2)
    print(
        f"    statistics work arrays: about {work / 2**20:6.1f} MiB float64 at a time ({chunk} channels per chunk); "
        f"ACE state {c * n * 8 * 12 / 2**20:.1f} MiB"
    )
    top = pc.rank_channels()
    print(
        f"\nTop 5 channels: {top.channels[:5].tolist()} scores {[round(v, 3) for v in top.scores[:5].tolist()]}; "
        f"constant channels: {pc.constant_channels_.numel()}"
    )


if __name__ == "__main__":
    main()
