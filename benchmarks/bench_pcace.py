"""Benchmark NeuronPCACE on torchvision ResNet-18 (random weights) layer4.

Prints, in one run:

(a) the speed of the statistics (standardise + PCA + batched ACE + diagnostics over all 512
    channels) against the authors' recipe (scikit-learn StandardScaler + PCA, then
    ``ace.ace.ACESolver`` per channel, |corr(phi, theta)|), timed on a subset of channels and
    extrapolated linearly to the whole layer (the recipe treats channels independently);
    target >= 300x;
(b) the whole ``attribute`` call against the bare forward pass over the same images, batched the
    same way: without the null (``n_permutations=0``, target <= 1.1x) and with the default
    20 permutations (target <= 1.5x);
(c) the cost of ``n_bootstrap`` (default 100) bootstrap resamples;
(d) the memory of the activations: one float32 copy.

The machine is shared: timings vary from run to run; ``--repeats`` takes the best of several.

Usage::

    python benchmarks/bench_pcace.py                 # 300 images of 224x224, as the paper
    python benchmarks/bench_pcace.py --quick         # 60 images, 4 oracle channels, 10 resamples
    python benchmarks/bench_pcace.py --null-scan     # the measurements behind the thresholds
    python benchmarks/bench_pcace.py --coverage-scan # coverage of the bootstrap intervals
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

from captum_elfa.attr.neuron_pcace import DEFAULT_PERMUTATIONS, NeuronPCACE, pcace_statistics
from captum_elfa.stats import _numba
from captum_elfa.stats.pcace import _chunk_channels, bootstrap_intervals


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
            # tied components: the package's result depends on the image order and its smoother
            # does not average tied values, ours does (a conditional expectation given x): on
            # channels with ties the two differ by design; sorted by (component, y) here
            order = np.lexsort((np.asarray(y, dtype=np.float64), comp[:, 0]))
            solver = ACESolver()
            solver.specify_data_set(np.transpose(comp[order]).tolist(), [float(v) for v in np.asarray(y)[order]])
            with contextlib.redirect_stdout(io.StringIO()):
                solver.solve()
            out.append(abs(np.corrcoef(solver.x_transforms[0], solver.y_transform)[0, 1]))
    return np.array(out)


def null_scan() -> None:
    """The measurements behind MIN_RELIABLE_IMAGES and gap_threshold (captum_elfa.stats.pcace)."""
    from captum_elfa.stats.ace import ace

    gen = torch.Generator().manual_seed(0)
    channels = 256
    print("ACE score of channels independent of the target (256 channels per N; half ReLU-sparse)")
    for n in (12, 16, 20, 30, 40, 50, 75, 100, 150, 200, 300):
        x = torch.randn(channels, n, generator=gen, dtype=torch.float64)
        xs = x.clone()
        xs[channels // 2 :] = xs[channels // 2 :].clamp_min(0)
        y = torch.randn(n, generator=gen, dtype=torch.float64)
        s = ace(xs, y).correlation
        a, b = s[: channels // 2], s[channels // 2 :]
        mx = [ace(x, torch.randn(n, generator=gen, dtype=torch.float64)).correlation.max().item() for _ in range(10)]
        print(
            f"  N={n:4d} gauss median {a.median():.3f} q95 {a.quantile(0.95):.3f} | relu median {b.median():.3f} "
            f"q95 {b.quantile(0.95):.3f} | max over {channels}: median {np.median(mx):.3f}"
        )
    print("95th percentile of lambda1/lambda2 with two equal population eigenvalues (standardised Gaussian)")
    rng = np.random.default_rng(0)
    for n in (12, 24, 50, 100, 300, 1000):
        for p in (2, 9, 49):
            cov = np.full(p, 0.1)
            cov[:2] = 1.0
            ratios = []
            for _ in range(2000):
                z = rng.normal(size=(n, p)) * np.sqrt(cov)
                z = (z - z.mean(0)) / z.std(0)
                ev = np.linalg.eigvalsh(z.T @ z / n)[::-1]
                ratios.append(ev[0] / ev[1])
            q = np.quantile(ratios, 0.95)
            print(f"  N={n:5d} P={p:3d}: q95 {q:.3f}, (q95 - 1) * sqrt(N) = {(q - 1) * np.sqrt(n):.2f}")


def _half_sample_intervals(
    x: torch.Tensor, y: torch.Tensor, n_bootstrap: int, levels: tuple[float, ...], gen: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """What :func:`bootstrap_intervals` computes for one-pixel channels, with an independent
    target per row (``x``, ``y`` ``[R, N]``): scores, intervals ``[R, 2]`` per level (its own
    :func:`half_sample_interval`), bias-corrected scores, and the basic intervals
    ``[2 s - q_hi, 2 s - q_lo]`` of the same half-samples for comparison."""
    from captum_elfa.stats.pcace import _batched_ace, half_sample_interval

    def scores(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        z = (xs - xs.mean(-1, keepdim=True)) / xs.std(-1, keepdim=True)
        return _batched_ace(z.unsqueeze(1), ys).correlation

    n = x.shape[-1]
    full = scores(x, y)
    reps = torch.stack(
        [
            scores(x[:, idx], y[:, idx])
            for idx in (torch.randperm(n, generator=gen)[: n // 2] for _ in range(n_bootstrap))
        ]
    )
    intervals, basic = [], []
    for level in levels:
        iv, corrected = half_sample_interval(full, reps, level)
        intervals.append(iv)
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        q_lo, q_hi = torch.quantile(reps, q, dim=0)
        basic.append(torch.stack([2 * full - q_hi, 2 * full - q_lo], 1).clamp(0, 1))
    return full, intervals, corrected, basic


def coverage_scan(n_bootstrap: int = 100, rows: int = 200) -> None:
    """Coverage of the intervals of :func:`bootstrap_intervals` of a known population maximal
    correlation, with the basic half-sample interval and the ordinary percentile bootstrap for
    comparison, and a summary over the settings.

    ``x = f(z1)``, ``y = g(z2)`` with ``(z1, z2)`` bivariate normal of correlation rho: the maximal
    correlation of ``(x, y)`` is ``|rho|`` for any strictly monotone ``f`` and ``g`` (Gebelein
    1941). ``rows`` independent data sets (each its own target) per setting, one-pixel maps."""
    from captum_elfa.stats.pcace import _batched_ace

    transforms = {
        "linear": (lambda z: z, lambda z: z),
        "cube/tanh": (lambda z: z**3, torch.tanh),
        "exp/tanh": (torch.exp, torch.tanh),
    }
    print(
        f"coverage of bootstrap_intervals ({rows} independent data sets per line, {n_bootstrap} half-samples; "
        "in brackets the basic interval [2 s - q_hi, 2 s - q_lo] of the same half-samples; bias = mean score "
        "- rho, then of the bias-corrected score; 'pct' = ordinary percentile bootstrap)"
    )
    summary: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for n in (100, 200, 300, 600):
        for rho in (0.9, 0.6, 0.3, 0.0):
            for name, (f, g) in transforms.items():
                gen = torch.Generator().manual_seed(n + int(100 * rho))
                z2 = torch.randn(rows, n, generator=gen, dtype=torch.float64)
                z1 = rho * z2 + (1 - rho**2) ** 0.5 * torch.randn(rows, n, generator=gen, dtype=torch.float64)
                x, y = f(z1), g(z2)
                levels = (0.9, 0.95)
                full, ivs, bc, basics = _half_sample_intervals(x, y, n_bootstrap, levels, gen)
                cov = lambda iv, r=rho: ((iv[:, 0] <= r) & (r <= iv[:, 1])).double().mean().item()  # noqa: E731
                cover = [cov(iv) for iv in ivs]
                cover_basic = [cov(iv) for iv in basics]
                group = "N < 200" if n < 200 else ("rho = 0" if rho == 0 else "N >= 200, rho > 0")
                for level, c1, c2 in zip(levels, cover, cover_basic):
                    summary.setdefault((group, level), []).append((c1, c2))
                pct = ""
                if name == "linear" and n <= 300:
                    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
                    reps = []
                    for _ in range(n_bootstrap):
                        idx = torch.randint(0, n, (rows, n), generator=gen)
                        reps.append(_batched_ace(z.gather(1, idx).unsqueeze(1), y.gather(1, idx)).correlation)
                    q = torch.quantile(torch.stack(reps), torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
                    pct = f" | pct 90%: {((q[0] <= rho) & (rho <= q[1])).double().mean().item():.2f}"
                print(
                    f"  N={n:4d} rho={rho:.1f} {name:9s}: 90% {cover[0]:.2f} ({cover_basic[0]:.2f})  "
                    f"95% {cover[1]:.2f} ({cover_basic[1]:.2f})  "
                    f"bias {(full - rho).mean().item():+.3f} -> {(bc - rho).mean().item():+.3f}{pct}",
                    flush=True,
                )
    print("summary: coverage range (mean) of bootstrap_intervals [basic interval]")
    for (group, level), v in summary.items():
        a, b = [c for c, _ in v], [c for _, c in v]
        print(
            f"  {group:17s} {level:.0%}: {min(a):.2f}-{max(a):.2f} ({sum(a) / len(a):.2f})  "
            f"[{min(b):.2f}-{max(b):.2f} ({sum(b) / len(b):.2f})]"
        )


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
    parser.add_argument(
        "--repeats", type=int, default=1, help="best of this many timings of (b); (a) takes the best of max(3, this)"
    )
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples timed in (c)")
    parser.add_argument("--quick", action="store_true", help="60 images, 4 oracle channels, 10 resamples")
    parser.add_argument("--null-scan", action="store_true", help="only the null-vs-N and eigen-gap measurements")
    parser.add_argument("--coverage-scan", action="store_true", help="only the coverage of the bootstrap intervals")
    args = parser.parse_args()
    if args.null_scan:
        null_scan()
        return
    if args.coverage_scan:
        torch.set_num_threads(1)
        coverage_scan()
        return
    if args.quick:
        args.images, args.oracle_channels, args.bootstrap = 60, 4, 10
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

    # the numba kernels compile on their first use in a process (cached between processes where
    # Python caches bytecode): timed once here, on four channels, so that (b) times warm calls
    compiled = _numba.load()
    t_compile, _ = timed(lambda: pcace_statistics(acts4[:, :4].reshape(n, 4, h * w).transpose(0, 1).contiguous(), y, 1))
    pc = NeuronPCACE(model, model.layer4)
    fwd_times: list[float] = []
    plain_times: list[float] = []
    null_times: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PCACEWarning at --quick's 60 images
        for _ in range(args.repeats):  # interleaved, so that a burst of load elsewhere hits all three
            fwd_times.append(timed(bare)[0])
            t, scores = timed(
                lambda: pc.attribute(
                    images, target=args.target, progress=False, batch_size=args.batch_size, n_permutations=0
                )
            )
            plain_times.append(t)
            t, _ = timed(lambda: pc.attribute(images, target=args.target, progress=False, batch_size=args.batch_size))
            null_times.append(t)
    t_fwd, t_plain, t_null = min(fwd_times), min(plain_times), min(null_times)
    n_significant = int(pc.significant_.sum())
    threshold = pc.threshold_

    # (a) statistics vs the recipe
    acts_cnp = acts4.reshape(n, c, h * w).transpose(0, 1).contiguous()  # [C, N, P] float32

    def stats() -> torch.Tensor:
        return pcace_statistics(acts_cnp, y, 1)[0]

    # both sides best of several runs: a 0.2 s computation on a shared machine is noisy
    reps = max(3, args.repeats)
    t_stats, ours = timed(stats)
    t_stats = min([t_stats] + [timed(stats)[0] for _ in range(reps - 1)])
    k = min(args.oracle_channels, c)
    channels = np.linspace(0, c - 1, k).round().astype(int).tolist()
    t_oracle, ref = timed(lambda: recipe_scores(acts4.numpy(), y.numpy(), channels))
    t_oracle = min(
        [t_oracle] + [timed(lambda: recipe_scores(acts4.numpy(), y.numpy(), channels))[0] for _ in range(reps - 1)]
    )
    t_oracle_all = t_oracle / k * c
    diff = np.abs(ours.numpy()[channels] - ref)
    agree = np.abs(scores.numpy() - ours.numpy()).max()
    tied = (pc.diagnostics_.tied_fraction[channels] > 0).numpy()

    backend = "numba kernels" if compiled else "torch (numba not used)"
    print(f"\n(a) statistics over all channels (standardise + PCA + batched ACE), {backend}")
    print(f"    captum_elfa          : {t_stats:8.3f} s for {c} channels (best of {reps}, as the recipe)")
    print(
        f"    recipe (sklearn+ace) : {t_oracle:8.3f} s for {k} channels -> {t_oracle_all:8.1f} s for {c} "
        f"channels (extrapolated linearly)"
    )
    print(f"    speed-up             : {t_oracle_all / t_stats:8.0f} x   (target >= 300 x)")
    free = f"{diff[~tied].max():.2e}" if (~tied).any() else "n/a"
    with_ties = (
        f"; on the {int(tied.sum())} with tied maps (deliberately different: ties averaged) {diff[tied].max():.2e}"
        if tied.any()
        else ""
    )
    print(
        f"    agreement on the {int((~tied).sum())} tie-free of {k} channels: max |delta| {free} (target 1e-5)"
        f"{with_ties}; attribute() vs stats: {agree:.1e}"
    )

    if compiled:
        print(
            f"    first call in this process: {t_compile:.2f} s on 4 channels (compiling the kernels; "
            f"{'cached for the next process' if _numba._cache_kernels() else 'not cached: bytecode writing is off'})"
        )

    print("\n(b) whole attribute() call vs bare forward pass (warm: after the first call above)")
    runs = lambda ts: "" if len(ts) == 1 else "  (best of " + ", ".join(f"{t:.2f}" for t in ts) + ")"  # noqa: E731
    print(f"    bare forward pass    : {t_fwd:8.3f} s{runs(fwd_times)}")
    print(
        f"    attribute(), no null : {t_plain:8.3f} s{runs(plain_times)}   ratio {t_plain / t_fwd:6.3f} (target <= 1.1)"
    )
    print(
        f"    attribute(), {DEFAULT_PERMUTATIONS} perms: {t_null:8.3f} s{runs(null_times)}   ratio "
        f"{t_null / t_fwd:6.3f} (target <= 1.5)"
    )
    print(f"    null: threshold {threshold:.3f}, {n_significant} of {c} channels significant (FWER 5%)")

    t_boot, boot = timed(lambda: bootstrap_intervals(acts_cnp, y, 1, args.bootstrap, 0))
    width = (boot.intervals[:, 1] - boot.intervals[:, 0]).median().item()
    print(f"\n(c) bootstrap, B={args.bootstrap} resamples")
    print(
        f"    time                 : {t_boot:8.3f} s = {t_boot / t_fwd:.2f} x the forward pass "
        f"({t_boot / args.bootstrap:.3f} s per resample); median 95% interval width {width:.3f}"
    )

    print("\n(d) memory")
    expected = n * c * h * w * 4
    print(
        f"    activations held     : {pc.activation_bytes_ / 2**20:8.1f} MiB  float32, shape "
        f"[C={c}, N={n}, H*W={h * w}] (one copy: N*C*H*W*4 = {expected / 2**20:.1f} MiB)"
    )
    if compiled:
        work = torch.get_num_threads() * 8 * (n * h * w + (h * w) ** 2)
        print(
            f"    statistics work arrays: about {work / 2**20:6.2f} MiB float64 at a time (one channel per thread); "
            f"ACE state {c * n * 8 * 8 / 2**20:.1f} MiB"
        )
    else:
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
