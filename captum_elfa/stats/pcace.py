"""PCACE statistics on captured activations: scores, a permutation null, bootstrap intervals and
per-channel diagnostics. Pure functions on tensors returning dataclasses; no model code.

Every function works on the images in a canonical order (sorted by the target, stable), so that
the results are a function of the set of ``(activation map, target)`` pairs and not of the order
in which the images arrive: the sums over images (means, Gram matrices) run in the same order,
PC1's sign is decided on the same numbers, and ties are broken the same way (see
:func:`captum_elfa.stats.ace.canonical_orders`). The permutations and resamples are drawn in this
canonical order too, so with a fixed ``random_state`` the null and the intervals do not depend on
the image order either.

Thresholds, measured on generated data (``python benchmarks/bench_pcace.py --null-scan``):

* :data:`MIN_RELIABLE_IMAGES` = 100. ACE's score for a channel independent of the target, on
  256 independent channels per ``N`` (Gaussian / ReLU-sparse channel, median and 95th percentile;
  then the median over 10 targets of the maximum over the 256 channels)::

      N     12   20   30   50   75   100  150  200  300
      med  .66  .70  .65  .59  .52  .45  .40  .35  .27   (ReLU .55 .54 .56 .50 .45 .37 .34 .28 .23)
      q95  .85  .84  .80  .76  .73  .61  .54  .47  .39   (ReLU .83 .75 .72 .69 .66 .56 .48 .39 .33)
      max  .96  .95  .90  .91  .86  .78  .72  .57  .48

  Below about 75 images the null is flat at a median of 0.5-0.7 (the super smoother sits at its
  smallest windows and fits the noise) and its 95th percentile is above 0.7, so even a strongly
  related channel (maximal correlation 0.7) cannot be told from chance; at 100 images the 95th
  percentile drops to about 0.6. Fewer images than this give a :class:`PCACEWarning`.
* :func:`gap_threshold` ``(N) = 1 + 2 * 1.96 / sqrt(N)``. The sample eigenvalues of ``N`` images
  have standard error about ``lambda * sqrt(2 / N)`` (Anderson 1963), so two equal population
  eigenvalues give a sample ratio ``lambda1 / lambda2`` up to about ``1 + 2 z / sqrt(N)``. Measured
  (2000 draws of standardised Gaussian data with two equal leading eigenvalues), the 95th
  percentile of the ratio is ``1 + a / sqrt(N)`` with ``a`` = 4.1-5.6 for 2 pixels, 2.7-2.8 for 9
  and 1.2-1.9 for 49 pixels at N = 12..1000: ``2 * 1.96 = 3.92`` flags a degenerate pair in at
  least 95% of cases for 9 or more pixels (about 90% for 2). Below it PC1 is not determined by
  the data (a tiny change of the inputs can rotate it) and the channel is ``ill_defined``.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Dict, List, Optional, TypeVar

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, check_float, check_int
from captum_elfa.stats import _numba
from captum_elfa.stats._pca import NonFiniteError, _spectrum, check_n_components
from captum_elfa.stats.ace import ACEResult, ace

_T = TypeVar("_T")

__all__ = [
    "MIN_IMAGES",
    "MIN_INTERVAL_IMAGES",
    "half_sample_interval",
    "MIN_RELIABLE_IMAGES",
    "GAP_Z",
    "PCACEWarning",
    "PCACEDiagnostics",
    "PCACEFit",
    "PCACENull",
    "PCACEBootstrap",
    "gap_threshold",
    "pcace_fit",
    "pcace_statistics",
    "permutation_null",
    "bootstrap_intervals",
    "reliability_messages",
]

#: fewest images PCACE accepts at all (the smoother's windows need a few samples each)
MIN_IMAGES = 10
#: fewer images than this give a warning: the null is too high to tell a channel from chance
#: (measured, see the module docstring)
MIN_RELIABLE_IMAGES = 100
#: fewer images than this give a warning when intervals are asked for: there the half-sample
#: intervals cover the population score less often than their level (measured 74-84% for 90%
#: intervals at 100 images, 84-95% at 200-600; ``benchmarks/bench_pcace.py --coverage-scan``)
MIN_INTERVAL_IMAGES = 200
#: z of the eigen-gap threshold :func:`gap_threshold`
GAP_Z = 1.96
#: float64 working memory per chunk of channels when standardising and projecting
_CHUNK_BYTES = 1 << 26
#: float64 maps per block of channels on the CPU (measured fastest at 2-8 MiB on two cores)
_CACHE_BLOCK_BYTES = 1 << 22
#: elements below which a PyTorch CPU operation runs on one thread (``at::internal::GRAIN_SIZE``)
_GRAIN_SIZE = 32767
#: rows per ACE chunk when a CPU batch is large enough to run chunks side by side, one thread each
_BIG_CHUNK_ROWS = 1024


class PCACEWarning(UserWarning):
    """PCACE scores that should not be trusted as they stand (too few images, or no channel above
    the permutation threshold)."""


def gap_threshold(n_images: int) -> float:
    """Eigen-gap ``lambda1 / lambda2`` below which PC1 is ill-defined with ``n_images`` images:
    ``1 + 2 * GAP_Z / sqrt(n_images)`` (see the module docstring for the measurement)."""
    return 1.0 + 2.0 * GAP_Z / math.sqrt(n_images)


@dataclass
class PCACEDiagnostics:
    """Per-channel diagnostics of the principal components PCACE scores.

    Attributes:
        eigengap (Tensor): ``[C]`` ``lambda1 / lambda2`` of the standardised maps (inf where
                    lambda2 is 0, NaN for constant channels).
        explained_variance (Tensor): ``[C]`` ``lambda1 / trace`` (NaN for constant channels).
        tied_fraction (Tensor): ``[C]`` fraction of images whose PC1 value equals another image's.
        zero_fraction (Tensor): ``[C]`` fraction of images whose whole map is 0.
        constant (Tensor): ``[C]`` bool, the channel is constant over the images.
        ill_defined (Tensor): ``[C]`` bool, a gap ``lambda_j / lambda_{j+1}`` (``j <= k``, the
                    number of components) is below ``gap_threshold``: the components are not
                    determined by the data.
        gap_threshold (float): :func:`gap_threshold` of the number of images.
    """

    eigengap: Tensor
    explained_variance: Tensor
    tied_fraction: Tensor
    zero_fraction: Tensor
    constant: Tensor
    ill_defined: Tensor
    gap_threshold: float


@dataclass
class PCACEFit:
    """Scores of every channel and what the null and the bootstrap reuse.

    Attributes:
        scores (Tensor): ``[C]`` float64 scores (0 for constant channels).
        constant (Tensor): ``[C]`` bool mask of constant channels.
        components (Tensor): ``[C, k, N]`` component scores in the input order of the images.
        ace_result (ACEResult or None): the ACE of the live channels, in the input order.
        rows (Tensor): ``[C]`` row of each channel in ``ace_result`` (-1 for constant channels).
        diagnostics (PCACEDiagnostics): eigen-gaps, ties, flags.
        order (Tensor): ``[N]`` the canonical order (input indices sorted by the target).
        y (Tensor): ``[N]`` float64 targets in the canonical order.
    """

    scores: Tensor
    constant: Tensor
    components: Tensor
    ace_result: Optional[ACEResult]
    rows: Tensor
    diagnostics: PCACEDiagnostics
    order: Tensor
    y: Tensor
    _sorted_components: Tensor


@dataclass
class PCACENull:
    """Permutation null of every channel's score.

    Attributes:
        null_scores (Tensor): ``[P, C]`` scores with the target permuted (the same permutation
                    for all channels).
        p_values (Tensor): ``[C]`` ``(1 + #{p: null[p, c] >= score[c]}) / (P + 1)``, per channel.
        quantiles (dict): ``{0.5: Tensor[C], 0.95: Tensor[C]}`` quantiles of each channel's null.
        threshold (float): 95th percentile over permutations of the maximum over channels; a
                    channel above it is significant with family-wise error 5%.
        significant (Tensor): ``[C]`` bool, ``score > threshold``.
    """

    null_scores: Tensor
    p_values: Tensor
    quantiles: Dict[float, Tensor]
    threshold: float
    significant: Tensor


@dataclass
class PCACEBootstrap:
    """Bias-corrected half-sampling intervals of every channel's score.

    Attributes:
        replicates (Tensor): ``[B, C]`` scores on ``B`` seeded half-samples of the images
                    (``N // 2`` images drawn without replacement).
        intervals (Tensor): ``[C, 2]`` ``bias_corrected -+ z * rms``, clipped to [0, 1], where
                    ``rms`` is the root mean square of ``replicates - score`` and ``z`` the
                    standard normal quantile of ``(1 + confidence) / 2`` (see
                    :func:`bootstrap_intervals`).
        bias_corrected (Tensor): ``[C]`` ``2 * score - mean(replicates)``, clipped to [0, 1]: the
                    score with ACE's small-sample bias extrapolated away (first order).
        confidence (float): the level.
        subsample_size (int): images per half-sample.
    """

    replicates: Tensor
    intervals: Tensor
    bias_corrected: Tensor
    confidence: float
    subsample_size: int


def _generator(random_state: Optional[Any]) -> torch.Generator:
    gen = torch.Generator()
    if random_state is None:
        gen.seed()
    else:
        gen.manual_seed(check_int("random_state", random_state, minimum=0))
    return gen


def _canonical_order(y: Tensor) -> Tensor:
    return torch.sort(y, stable=True).indices


def pcace_fit(acts: Tensor, y: Tensor, n_components: int = 1, layer_name: str = "layer") -> PCACEFit:
    """PCACE scores and diagnostics from captured activations.

    Args:
        acts (Tensor): ``[C, N, P]`` activations (float32 is enough; statistics in float64).
        y (Tensor): ``[N]`` the explained output of every image (not constant).
        n_components (int): principal components per channel, ``1 <= n_components <= min(N, P)``.
        layer_name (str): named in error messages.

    Returns:
        PCACEFit: scores, constant mask, components, ACE result, rows, diagnostics.

    Examples::

        >>> fit = pcace_fit(acts, y)            # acts [C, N, H*W], y [N]
        >>> fit.scores, fit.diagnostics.ill_defined
    """
    c, n, _ = acts.shape
    device = acts.device
    y = y.to(device=device, dtype=torch.float64)
    order = _canonical_order(y)
    ys = y.index_select(0, order)
    comps, constant, evals, total, zero_frac = _standardized_components_chunked(
        acts, n_components, layer_name, index=order, n_eigenvalues=n_components + 1
    )
    live = (~constant).nonzero().squeeze(-1)
    scores = torch.zeros(c, dtype=torch.float64, device=device)
    result: Optional[ACEResult] = None
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=device)
    if live.numel() > 0:
        res = _batched_ace(comps.index_select(0, live), ys)
        scores[live] = res.correlation
        result = ACEResult(
            res.x_transforms.index_select(-1, inverse),
            res.y_transform.index_select(-1, inverse),
            res.rsq,
            res.outer_iterations,
        )
    rows = torch.full((c,), -1, dtype=torch.long, device=device)
    rows[live] = torch.arange(live.numel(), device=device)
    diagnostics = _diagnostics(comps, constant, evals, total, zero_frac, n_components, n)
    return PCACEFit(scores, constant, comps.index_select(-1, inverse), result, rows, diagnostics, order, ys, comps)


def pcace_statistics(
    acts: Tensor, y: Tensor, n_components: int = 1, layer_name: str = "layer"
) -> tuple[Tensor, Tensor, Tensor, Optional[ACEResult], Tensor]:
    """PCACE scores from captured activations: what :meth:`NeuronPCACE.attribute` computes after
    its forward pass (without the null, the bootstrap and the diagnostics; see :func:`pcace_fit`).

    Args:
        acts (Tensor): ``[C, N, P]`` activations (float32 is enough; statistics in float64).
        y (Tensor): ``[N]`` the explained output of every image (not constant).
        n_components (int): principal components per channel, ``1 <= n_components <= min(N, P)``.
        layer_name (str): named in error messages.

    Returns:
        (scores, constant, components, ace_result, rows): ``[C]`` float64 scores (0 for constant
        channels), ``[C]`` bool mask of constant channels, ``[C, k, N]`` component scores, the
        :class:`ACEResult` of the non-constant channels (None if there is none) and ``[C]`` the row
        of each channel in it (-1 for constant channels).
    """
    fit = pcace_fit(acts, y, n_components, layer_name)
    return fit.scores, fit.constant, fit.components, fit.ace_result, fit.rows


def permutation_null(fit: PCACEFit, n_permutations: int = 20, random_state: Optional[Any] = 0) -> PCACENull:
    """Scores of every channel against ``n_permutations`` seeded permutations of the target.

    The permutations are drawn in the canonical image order and shared by all channels; the ACE
    of all live channels and permutations runs batched (chunked as the real scores).

    Args:
        fit (PCACEFit): from :func:`pcace_fit`.
        n_permutations (int): ``P >= 1``.
        random_state (int or None): seed of the permutations (None: a fresh random seed).

    Returns:
        PCACENull: null scores, per-channel p-values, null quantiles, the FWER threshold and flags.

    Examples::

        >>> null = permutation_null(pcace_fit(acts, y), 20, random_state=0)
        >>> null.p_values, null.threshold
    """
    p = check_int("n_permutations", n_permutations, minimum=1)
    gen = _generator(random_state)
    comps, ys = fit._sorted_components, fit.y
    c, k, n = comps.shape
    device = comps.device
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(p)]).to(device)
    null = torch.zeros(p, c, dtype=torch.float64, device=device)
    live = (~fit.constant).nonzero().squeeze(-1)
    if live.numel() > 0:
        x = comps.index_select(0, live)  # [L, k, N]
        yp = ys[perms]  # [P, N]
        # rows channel-major: a chunk holds few channels under many permutations
        xs = x.unsqueeze(1).expand(live.numel(), p, k, n).reshape(-1, k, n)
        yr = yp.unsqueeze(0).expand(live.numel(), p, n).reshape(-1, n)
        scores = _batched_ace(xs, yr).correlation.reshape(live.numel(), p)
        null[:, live] = scores.transpose(0, 1)
    return _summarise_null(fit.scores, null)


def _summarise_null(scores: Tensor, null: Tensor) -> PCACENull:
    p = null.shape[0]
    p_values = (1.0 + (null >= scores.unsqueeze(0)).sum(0).to(torch.float64)) / (p + 1.0)
    quantiles = {q: torch.quantile(null, q, dim=0) for q in (0.5, 0.95)}
    threshold = float(torch.quantile(null.amax(1), 0.95))
    return PCACENull(null, p_values, quantiles, threshold, scores > threshold)


def bootstrap_intervals(
    acts: Tensor,
    y: Tensor,
    n_components: int = 1,
    n_bootstrap: int = 100,
    random_state: Optional[Any] = 0,
    confidence: float = 0.95,
    layer_name: str = "layer",
    scores: Optional[Tensor] = None,
) -> PCACEBootstrap:
    """Confidence intervals of every channel's population score from seeded half-samples.

    ACE's score is biased upwards at finite ``N`` (the smoother fits part of the noise), by about
    ``b(N) ~ c / N`` once ``N`` is large enough that the smoother's spans stop shrinking: spans
    are fixed fractions of ``N``. Percentile intervals of an ordinary bootstrap are centred on the
    biased score, and resamples with duplicated images are biased further, so they cover the
    population value far less often than their level (measured 0-42% for 90% intervals). Here:

    * each replicate scores a half-sample of ``m = N // 2`` images drawn without replacement (in
      the canonical order), all channels batched. The spread of half-sample scores around the
      full score estimates the sampling spread of the full score (half-sampling: ``var(s_m -
      s_N) = var(s_m) (1 - m / N) = var(s_N)`` at ``m = N / 2``), and their mean is biased by
      ``b(N / 2) = 2 b(N)``;
    * so ``2 * score - mean(replicates)`` removes the first-order bias (a Richardson step,
      :attr:`PCACEBootstrap.bias_corrected`);
    * the bias estimate is itself noisy: across data sets the corrected score varies 1.2-1.4
      times as much as the raw score (measured at N = 300), and its error is of the order of the
      bias it removes. The interval is ``corrected -+ z * rms`` with ``rms`` the root mean square
      of ``replicates - score``, i.e. the half-sample variance plus the squared estimated bias,
      clipped to [0, 1]. (The basic interval ``[2 score - q_hi, 2 score - q_lo]`` of the
      half-sample percentiles, used before, is too narrow by that factor and its tail percentiles
      are noisy at B = 40-100.)

    Coverage of a known population maximal correlation (bivariate normal and monotone
    transforms of it, 200 independent data sets per setting, B = 100; ``python
    benchmarks/bench_pcace.py --coverage-scan``): 90% intervals cover 84-95% (mean 91%) at N =
    200-600 for population values 0.3-0.9, 95% intervals 88-98% (mean 95%); the basic interval
    covered 73-91% (mean 84%) and 79-94% (mean 90%). A second scan with other seeds gave 84-97%
    (mean 92%) and 89-99% (mean 96%). Below 200 images (where the bias shrinks more slowly than
    ``1 / N``) 90% intervals cover 74-84% at N = 100, and for channels unrelated to the target
    (a population value of 0 sits on the boundary, where the bias decays like ``1 / sqrt(N)``)
    36-73%: read an interval next to the channel's p-value. The ordinary percentile bootstrap
    covered 0-40%.

    A channel constant in a half-sample scores 0 there, and a half-sample whose target is
    constant gives NaN (ignored by the percentiles).

    Args:
        acts (Tensor): ``[C, N, P]`` activations.
        y (Tensor): ``[N]`` targets.
        n_components (int): principal components per channel.
        n_bootstrap (int): ``B >= 1`` half-samples.
        random_state (int or None): seed (None: a fresh random seed).
        confidence (float): level of the intervals, in (0, 1).
        layer_name (str): named in error messages.
        scores (Tensor, optional): ``[C]`` the full-sample scores when already computed
                    (:attr:`PCACEFit.scores`); computed otherwise.

    Returns:
        PCACEBootstrap: replicates ``[B, C]``, intervals ``[C, 2]`` and bias-corrected scores.

    Examples::

        >>> boot = bootstrap_intervals(acts, y, n_bootstrap=100, random_state=0)
        >>> lo, hi = boot.intervals.unbind(-1)
    """
    b = check_int("n_bootstrap", n_bootstrap, minimum=1)
    confidence = check_float("confidence", confidence, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
    gen = _generator(random_state)
    c, n, _ = acts.shape
    device = acts.device
    y = y.to(device=device, dtype=torch.float64)
    if scores is None:
        scores = pcace_fit(acts, y, n_components, layer_name).scores
    scores = scores.to(device=device, dtype=torch.float64)
    m = n // 2
    order = _canonical_order(y)
    ys = y.index_select(0, order)
    reps = torch.zeros(b, c, dtype=torch.float64, device=device)
    # the ACE of several half-samples runs as one batch (each row with its half-sample's target),
    # so that a layer of few channels still fills the side-by-side chunks of _batched_ace
    pending: List[tuple[int, Tensor, Tensor, Tensor]] = []

    def flush() -> None:
        if pending:
            xs = torch.cat([p[2] for p in pending])
            yr = torch.cat([p[3].expand(p[2].shape[0], m) for p in pending])
            corr = _batched_ace(xs, yr).correlation
            start = 0
            for i, live, comp, _ in pending:
                reps[i, live] = corr[start : start + comp.shape[0]]
                start += comp.shape[0]
            pending.clear()

    for i in range(b):
        draw = torch.sort(torch.randperm(n, generator=gen)[:m]).values.to(device)  # canonical: y sorted
        yb = ys.index_select(0, draw)
        if bool(yb.max() == yb.min()):
            reps[i] = float("nan")
            continue
        comps, constant, _, _, _ = _standardized_components_chunked(
            acts, n_components, layer_name, index=order.index_select(0, draw)
        )
        live = (~constant).nonzero().squeeze(-1)
        if live.numel() > 0:
            pending.append((i, live, comps.index_select(0, live), yb))
        if sum(p[2].shape[0] for p in pending) >= 2 * _BIG_CHUNK_ROWS:
            flush()
    flush()
    intervals, bias_corrected = half_sample_interval(scores, reps, confidence)
    return PCACEBootstrap(reps, intervals, bias_corrected, confidence, m)


def half_sample_interval(scores: Tensor, replicates: Tensor, confidence: float) -> tuple[Tensor, Tensor]:
    """The interval and bias-corrected score of :func:`bootstrap_intervals` from half-sample scores.

    Args:
        scores (Tensor): ``[...]`` full-sample scores.
        replicates (Tensor): ``[B, ...]`` half-sample scores (NaN ignored).
        confidence (float): level, in (0, 1).

    Returns:
        (intervals, bias_corrected): ``[..., 2]`` and ``[...]``, clipped to [0, 1].
    """
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    dev = replicates - scores.unsqueeze(0)
    corrected = scores - torch.nanmean(dev, 0)
    rms = torch.nanmean(dev * dev, 0).sqrt()
    intervals = torch.stack([corrected - z * rms, corrected + z * rms], -1).clamp(0.0, 1.0)
    return intervals.contiguous(), corrected.clamp(0.0, 1.0)


def reliability_messages(n_images: int, null: Optional[PCACENull], boot: Optional[PCACEBootstrap] = None) -> List[str]:
    """Why the scores of ``n_images`` images may not be trusted (empty if nothing to say).

    Args:
        n_images (int): number of images scored.
        null (PCACENull or None): the permutation null, if computed.
        boot (PCACEBootstrap or None): the intervals, if computed.

    Returns:
        list[str]: messages for a :class:`PCACEWarning`.
    """
    out = []
    if n_images < MIN_RELIABLE_IMAGES:
        out.append(
            f"PCACE with {n_images} images: below {MIN_RELIABLE_IMAGES} images a channel unrelated to the "
            "target scores about 0.5-0.7 by chance (ACE fits the noise); use more images and read every "
            "score next to its permutation null (p_values_, threshold_)"
        )
    if boot is not None and n_images < MIN_INTERVAL_IMAGES:
        out.append(
            f"PCACE intervals with {n_images} images: below {MIN_INTERVAL_IMAGES} images the half-sample "
            f"{boot.confidence:.0%} intervals cover the population score less often than {boot.confidence:.0%} "
            "(90% intervals covered 74-84% of known population values at 100 images, 84-95% at 200-600; "
            "benchmarks/bench_pcace.py --coverage-scan): read them as a lower bound on the uncertainty"
        )
    if null is not None and not bool(null.significant.any()):
        out.append(
            f"PCACE scores are indistinguishable from chance at {n_images} images: no channel exceeds the "
            f"permutation threshold {null.threshold:.3f} (95th percentile of the maximum null score over "
            f"channels, {null.null_scores.shape[0]} permutations, family-wise error 5%)"
        )
    return out


# ---------------------------------------------------------------------------------------------
# batched building blocks
# ---------------------------------------------------------------------------------------------
def _standardized_components_chunked(
    acts: Tensor,
    n_components: int,
    layer_name: str,
    index: Optional[Tensor] = None,
    n_eigenvalues: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`standardized_spectrum` over blocks of channels, checking the activations are finite.

    ``index`` selects (and orders, possibly repeats) the images of every block. On the CPU the
    blocks are small (about ``_CACHE_BLOCK_BYTES`` of float64 maps, so that every pass over them
    stays in the core's cache) and run side by side on PyTorch's threads, one intra-op thread
    each; elsewhere, blocks of about ``_CHUNK_BYTES`` of work arrays one after the other. Blocks
    are independent: the results do not depend on the block size.

    Returns:
        (components, constant, eigenvalues, total, zero_fraction).
    """
    c, n, p = acts.shape
    if index is not None:
        n = index.numel()
        index = index.to(acts.device)
    cpu = acts.device.type == "cpu"
    chunk = _cache_block_channels(n, p) if cpu else _chunk_channels(n, p)
    starts = list(range(0, c, chunk))

    check_n_components(n_components, n, p)
    if (
        cpu
        and n_components == 1
        and n_eigenvalues <= 2
        and p <= n
        and acts.dtype in (torch.float32, torch.float64)
        and _numba.load()
    ):
        return _components_compiled(acts, index, n, layer_name, max(1, n_eigenvalues))
    local = threading.local()

    def block_spectrum(start: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        # every thread reuses its own work arrays: fresh multi-megabyte tensors for every block
        # cost more in page faults than the arithmetic on them
        if not hasattr(local, "work"):
            shape = (min(chunk, c), n, p)
            local.work = (
                torch.empty(shape, dtype=acts.dtype, device=acts.device),
                torch.empty(shape, dtype=torch.float64, device=acts.device),
                torch.empty(shape, dtype=torch.float64, device=acts.device),
            )
        block = acts[start : start + chunk]
        raw, z, prod = (t[: block.shape[0]] for t in local.work)
        if index is not None:
            block = torch.index_select(block, 1, index, out=raw)
        z.copy_(block)
        # a map is 0 iff its absolute values sum to 0 (no cancellation; much faster than all())
        zero_fraction = (torch.abs(z, out=prod).sum(-1) == 0).to(torch.float64).mean(-1)
        try:
            comp, const, ev, tot = _spectrum(z, n_components, n_eigenvalues, work=prod)
        except NonFiniteError as err:
            raise CaptumElfaError(
                f"layer '{layer_name}' produced NaN or Inf activations in channels "
                f"{(err.channels[:10] + start).tolist()}; every activation must be finite"
            ) from None
        return comp, const, ev, tot, zero_fraction

    parts = _side_by_side(block_spectrum, starts) if cpu else [block_spectrum(i) for i in starts]
    comps, consts, evals, totals, zeros = zip(*parts)
    return torch.cat(comps), torch.cat(consts), torch.cat(evals), torch.cat(totals), torch.cat(zeros)


def _components_compiled(
    acts: Tensor, index: Optional[Tensor], n: int, layer_name: str, n_eigenvalues: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What :func:`_standardized_components_chunked` returns for one component, computed one
    channel at a time by :mod:`captum_elfa.stats._pca_kernel`."""
    from captum_elfa.stats import _pca_kernel

    arr = np.ascontiguousarray(acts.detach().numpy())
    idx = np.arange(n, dtype=np.int64) if index is None else np.ascontiguousarray(index.numpy(), dtype=np.int64)
    scores, evals, total, zero_fraction, status = _pca_kernel.channel_components(arr, idx, torch.get_num_threads())
    bad = np.flatnonzero(status == 2)
    if bad.size:
        raise CaptumElfaError(
            f"layer '{layer_name}' produced NaN or Inf activations in channels {bad[:10].tolist()}; "
            "every activation must be finite"
        )
    failed = np.flatnonzero(status >= 3)
    if failed.size:  # pragma: no cover - LAPACK failure
        raise RuntimeError(f"LAPACK failed with info={int(status[failed[0]]) - 3} on channel {int(failed[0])}")
    return (
        torch.from_numpy(scores).unsqueeze(1),
        torch.from_numpy(status == 1),
        torch.from_numpy(evals[:, :n_eigenvalues].copy()),
        torch.from_numpy(total),
        torch.from_numpy(zero_fraction),
    )


def _side_by_side(fn: Callable[[int], _T], items: List[int]) -> List[_T]:
    """``[fn(i) for i in items]`` on PyTorch's CPU threads, one intra-op thread each (the thread
    count is restored afterwards); in order, and one after the other for a single item or thread."""
    threads = torch.get_num_threads()
    if len(items) < 2 or threads < 2:
        return [fn(i) for i in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def _diagnostics(
    comps: Tensor, constant: Tensor, evals: Tensor, total: Tensor, zero_frac: Tensor, k: int, n: int
) -> PCACEDiagnostics:
    nan = torch.full_like(total, float("nan"))
    lam1, lam2 = evals[:, 0], evals[:, 1] if evals.shape[1] > 1 else torch.zeros_like(total)
    eigengap = torch.where(lam2 > 0, lam1 / torch.where(lam2 > 0, lam2, 1.0), float("inf"))
    eigengap = torch.where(constant, nan, eigengap)
    explained = torch.where(constant | (total <= 0), nan, lam1 / total.clamp_min(torch.finfo(total.dtype).tiny))
    # the k components are determined iff every gap up to lambda_k / lambda_{k+1} clears the threshold
    lo, hi = evals[:, :k], evals[:, 1 : k + 1]
    ratios = torch.where(hi > 0, lo / torch.where(hi > 0, hi, 1.0), float("inf"))
    threshold = gap_threshold(n)
    ill = (ratios < threshold).any(1) & ~constant
    pc1 = torch.sort(comps[:, 0], dim=-1).values
    same = pc1[:, 1:] == pc1[:, :-1]
    tied = torch.zeros_like(pc1, dtype=torch.bool)
    tied[:, 1:] |= same
    tied[:, :-1] |= same
    tied_frac = torch.where(constant, torch.ones_like(total), tied.to(torch.float64).mean(-1))
    return PCACEDiagnostics(eigengap, explained, tied_frac, zero_frac, constant.clone(), ill, threshold)


def _batched_ace(components: Tensor, y: Tensor) -> ACEResult:
    """ACE over the rows of ``components`` ``[B, k, N]`` against ``y`` ``[N]`` (shared) or
    ``[B, N]`` (one per row); rows are independent problems.

    With numba, on the CPU and for one component, :func:`ace` runs the compiled kernel
    (:mod:`captum_elfa.stats._ace_kernel`), which splits the rows over PyTorch's threads itself;
    the rows go in chunks of at least ``_BIG_CHUNK_ROWS`` only to bound the memory.

    Otherwise, on CPU the rows go in chunks small enough that every elementwise operation stays under
    PyTorch's parallel grain size (32768 elements): ACE is thousands of small operations, and
    forking OpenMP threads for each costs more than it gains (and stalls for whole scheduler time
    slices on a busy machine). A batch of many rows (a permutation null) goes in chunks of
    ``_BIG_CHUNK_ROWS`` that run side by side on PyTorch's threads, one intra-op thread each
    (the operations release the GIL; measured about 2x faster than one chunk after the other on
    two cores). Each chunk is computed as it would be alone (every row converges on its own), so
    the scores equal those of one thread up to rounding (1e-12 in
    ``tests/test_pcace_trust.py::test_null_in_side_by_side_chunks_equals_one_thread``, several
    layers and seeds). Elsewhere, chunks of at most ``_CHUNK_BYTES`` of work arrays (about 40
    arrays of ``[rows, N]``).
    """
    b, k, n = components.shape
    rows = max(1, _CHUNK_BYTES * 4 // (8 * 40 * n))
    single_thread = False
    if components.device.type == "cpu" and k == 1 and _numba.load():
        # the compiled ACE splits the rows over the threads itself (one row at a time, each
        # independent: the results do not depend on the split)
        rows = max(rows, _BIG_CHUNK_ROWS)
    elif components.device.type == "cpu":
        small = max(8, _GRAIN_SIZE // ((n + 1) * k))
        # many rows (a permutation null): bigger chunks on one thread amortise the per-operation
        # overhead (measured about 2x faster than grain-size chunks on two threads)
        single_thread = b > 4 * small and torch.get_num_threads() > 1
        rows = min(rows, _BIG_CHUNK_ROWS) if single_thread else min(rows, small)
    if b <= rows:
        return ace(components, y)
    per_row = y.dim() == 2

    def chunk(i: int) -> ACEResult:
        return ace(components[i : i + rows], y[i : i + rows] if per_row else y)

    starts = list(range(0, b, rows))
    parts = _side_by_side(chunk, starts) if single_thread else [chunk(i) for i in starts]
    return ACEResult(
        torch.cat([r.x_transforms for r in parts]),
        torch.cat([r.y_transform for r in parts]),
        torch.cat([r.rsq for r in parts]),
        torch.cat([r.outer_iterations for r in parts]),
    )


def _cache_block_channels(n: int, p: int) -> int:
    """Channels standardised and projected at once on the CPU: about ``_CACHE_BLOCK_BYTES`` of
    float64 maps."""
    return max(1, _CACHE_BLOCK_BYTES // (8 * n * p))


def _chunk_channels(n: int, p: int) -> int:
    """Channels standardised and projected at once: about ``_CHUNK_BYTES`` of float64 work arrays
    (the centred maps and a product of the same size, and the ``min(N, P)`` square Gram matrix)."""
    per_channel = 8 * (2 * n * p + min(n, p) ** 2)
    return max(1, _CHUNK_BYTES // per_channel)
