"""Matplotlib figures of :class:`~captum_elfa.NeuronPCACE` results (re-exported by
:mod:`captum_elfa.visualization.figures`): the ranking, the top channels' activation maps (captured
by :mod:`captum_elfa.attr.figure_data`) and the ACE transforms."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.figure_data import ChannelMaps, top_channel_activations
from captum_elfa.visualization._figure_utils import (
    MAX_WIDTH_IN,
    _axis_length_pt,
    _check_images,
    _check_pc,
    _check_positive_int,
    _label_step,
    _np,
    _show_image,
)


# ----------------------------------------------------------------------------------------------
# PCACE
# ----------------------------------------------------------------------------------------------
def plot_pcace_ranking(
    pc: Any,
    top: Optional[int] = 20,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Bar chart of the PCACE scores of the top channels, highest first, with their uncertainty.

    When ``pc`` holds them (``attribute(..., n_permutations=P, n_bootstrap=B)``) the figure
    also draws the bootstrap intervals (``intervals_``) as error bars, each channel's 95% null
    quantile (``null_quantiles_``) as a red mark, the family-wise 5% threshold (``threshold_``)
    as a dashed line, and the bars that are not significant (``significant_``) in a light
    colour; without them it draws the scores alone. The title says how many channels are left
    out and how many images the scores rest on.

    Args:
        pc (NeuronPCACE): after ``pc.attribute(inputs, target)``.
        top (int, optional): number of channels shown; None shows all. Default: 20.
        figsize (tuple of float, optional): default grows with the number of bars (at most
                    12 inches wide).

    Returns:
        matplotlib.figure.Figure: one axes with ``min(top, C)`` bars (its first patches).

    Examples::

        >>> pc.attribute(images, target=3, n_permutations=100)
        >>> plot_pcace_ranking(pc, top=10).savefig("ranking.png")
    """
    _check_pc(pc, "plot_pcace_ranking")
    ranking = pc.rank_channels()
    channels, scores = ranking[0], ranking[1]
    c = int(channels.numel())
    m = c if top is None else min(_check_positive_int("top", top), c)
    ch = channels[:m].tolist()
    sc = _np(scores[:m])
    constant = set(_np(getattr(pc, "constant_channels_", torch.empty(0))).astype(int).tolist())
    # the permutation null and bootstrap intervals of issue 11, when they were computed
    significant = getattr(pc, "significant_", None)
    intervals = getattr(pc, "intervals_", None)
    quantiles = getattr(pc, "null_quantiles_", None)
    threshold = getattr(pc, "threshold_", None)
    p_values = getattr(pc, "p_values_", None)
    if figsize is None:
        figsize = (min(MAX_WIDTH_IN, max(5.5, 1.6 + 0.32 * m)), 3.8)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    sig = None if significant is None else _np(significant)[ch].astype(bool)
    colors = []
    for i, j in enumerate(ch):
        if j in constant:
            colors.append("0.7")
        elif sig is not None and not sig[i]:
            colors.append("#9ecae1")  # light blue: not significant
        else:
            colors.append("tab:blue")
    xs = np.arange(m)
    ax.bar(xs, sc, color=colors)
    from matplotlib.patches import Patch

    handles: List[Any] = []
    if sig is not None:
        handles += [
            Patch(color="tab:blue", label="significant"),
            Patch(color="#9ecae1", label="not significant"),
        ]
    if intervals is not None:
        iv = _np(intervals)[ch]
        # drawn from its own ends: the interval is centred on the bias-corrected score, which
        # need not be the bar's height (nor need the interval contain it at low levels)
        mid = (iv[:, 0] + iv[:, 1]) / 2
        yerr = np.vstack([mid - iv[:, 0], iv[:, 1] - mid])
        level = getattr(pc, "confidence_", None)
        lab = f"{float(level):.0%} bootstrap interval" if level is not None else "bootstrap interval"
        handles.append(ax.errorbar(xs, mid, yerr=yerr, fmt="none", ecolor="k", elinewidth=0.8, capsize=2, label=lab))
    if isinstance(quantiles, dict) and quantiles:
        q = max(quantiles)
        qv = _np(quantiles[q])[ch]
        (h,) = ax.plot(xs, qv, "_", color="tab:red", ms=10, mew=1.5, label=f"null {float(q):.0%} quantile")
        handles.append(h)
    if threshold is not None and np.isfinite(float(threshold)):
        handles.append(ax.axhline(float(threshold), color="tab:red", ls="--", lw=1, label="FWER 5% threshold"))
    if constant & set(ch):
        handles.append(Patch(color="0.7", label="constant (score 0)"))
    ax.set_xticks(xs)
    ax.set_xticklabels([str(j) for j in ch], rotation=90 if m > 12 else 0, fontsize=8 if m <= 40 else 6)
    if m > 40:  # thin the channel labels so that they never overlap
        step = _label_step(m, _axis_length_pt(ax, "x"), 1.6 * 6)
        for i, t in enumerate(ax.get_xticklabels()):
            t.set_visible(i % step == 0)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("channel (highest score first)")
    ax.set_ylabel("PCACE score")
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    layer = getattr(pc, "layer_name_", "")
    n_img = getattr(pc, "n_images_", None)
    more = f" ({c - m} more not shown)" if c > m else ""
    title = f"PCACE ranking{' of ' + layer if layer else ''}: top {m} of {c} channels{more}"
    if n_img is not None:
        title += f", {int(n_img)} images"
    if p_values is not None and sig is not None:
        title += f"; {int(_np(significant).astype(bool).sum())} significant"
    ax.set_title(title, fontsize=9)
    return fig


def plot_top_channel_maps(
    pc: Any,
    images: Tensor,
    k: int = 5,
    n_images: int = 4,
    cmap: Any = "viridis",
    additional_forward_args: Any = None,
    figsize: Optional[Tuple[float, float]] = None,
    maps: Optional[ChannelMaps] = None,
) -> Figure:
    r"""Activation maps of the top-``k`` PCACE channels over a few images (what the PCACE
    authors' ``visualize_act_maps`` scripts show).

    The activations come from :func:`captum_elfa.attr.figure_data.top_channel_activations`: the
    images run through ``pc``'s model once (no gradients, eval mode, model state restored);
    a forward hook on ``pc.layer`` captures the activations. One row per image: the image, then
    the map of each top channel at the layer's resolution; each channel (column) shares one
    colour scale over the images so that they can be compared.

    Args:
        pc (NeuronPCACE): after ``pc.attribute(inputs, target)``.
        images (Tensor): ``[N, C, H, W]`` with C = 1 or 3; the first ``n_images`` are drawn.
        k (int): number of top channels. At most the number of channels. Default: 5.
        n_images (int): number of images (rows); fewer if ``images`` has fewer. Default: 4.
        cmap (str or Colormap): colormap of the activations. Default: ``"viridis"``.
        additional_forward_args (Any, optional): extra model arguments.
        figsize (tuple of float, optional): default 1.8 inches per panel.
        maps (ChannelMaps, optional): the activations already captured by
                    :func:`captum_elfa.attr.figure_data.top_channel_activations` (the model does
                    not run); captured here when None.

    Returns:
        matplotlib.figure.Figure: ``n * (k + 1)`` axes in an ``n x (k + 1)`` grid, with
        ``n = min(n_images, N)``.

    Examples::

        >>> fig = plot_top_channel_maps(pc, images, k=5, n_images=4)
    """
    _check_pc(pc, "plot_top_channel_maps")
    images = _check_images(images, "plot_top_channel_maps")
    k = _check_positive_int("k", k)
    n_images = _check_positive_int("n_images", n_images)
    if maps is None:
        maps = top_channel_activations(pc, images, k, n_images, additional_forward_args)
    elif not isinstance(maps, ChannelMaps):
        raise CaptumElfaError(f"maps must be a ChannelMaps (from top_channel_activations), got {type(maps).__name__}")
    top, scores, acts = list(maps.channels), list(maps.scores), maps.maps
    k = len(top)
    n = min(int(acts.shape[0]), int(images.shape[0]), n_images)
    x, maps_arr = images[:n], acts[:n]
    if figsize is None:
        figsize = (1.8 * (k + 1) + 0.6, 1.8 * n + 0.5)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(n, k + 1, squeeze=False))
    for col, ch in enumerate(top):
        lo, hi = float(maps_arr[:, col].min()), float(maps_arr[:, col].max())
        if hi <= lo:
            hi = lo + 1.0
        for i in range(n):
            ax = axes[i, col + 1]
            ax.imshow(maps_arr[i, col], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col + 1].set_title(f"ch {ch} ({float(scores[col]):.2f})", fontsize=8)
    for i in range(n):
        _show_image(axes[i, 0], x[i])
        axes[i, 0].set_ylabel(f"image {i}", fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    return fig


def plot_ace_transforms(
    pc: Any,
    channel: int,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""The ACE transforms of one PCACE channel.

    Panels: ``phi_i`` against the channel's i-th principal component (one panel per
    component), ``theta`` against the explained output (class score), and ``theta`` against
    ``sum_i phi_i`` with the channel's score ``|corr(theta, sum phi)|`` in the title.

    Args:
        pc (NeuronPCACE): after ``pc.attribute(inputs, target)``.
        channel (int): a channel that is not constant over the images.

    Returns:
        matplotlib.figure.Figure: ``n_components + 2`` axes in one row.

    Examples::

        >>> ch = int(pc.rank_channels().channels[0])
        >>> plot_ace_transforms(pc, ch).savefig("ace.png")
    """
    _check_pc(pc, "plot_ace_transforms")
    t = pc.ace_transforms(channel)
    comp, phi = _np(t.component), _np(t.phi)
    if comp.ndim == 1:
        comp, phi = comp[None], phi[None]
    y, theta = _np(t.target), _np(t.theta)
    m = comp.shape[0]
    if figsize is None:
        figsize = (3.2 * (m + 2), 3.2)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(1, m + 2, squeeze=False))[0]
    for i in range(m):
        ax = axes[i]
        o = np.argsort(comp[i], kind="stable")
        ax.plot(comp[i], phi[i], ".", color="tab:blue", ms=4, alpha=0.6)
        ax.plot(comp[i][o], phi[i][o], "-", color="tab:red", lw=1)
        ax.set_xlabel(f"principal component {i + 1}")
        ax.set_ylabel(rf"$\phi_{{{i + 1}}}$")
    ax = axes[m]
    o = np.argsort(y, kind="stable")
    ax.plot(y, theta, ".", color="tab:green", ms=4, alpha=0.6)
    ax.plot(y[o], theta[o], "-", color="tab:red", lw=1)
    ax.set_xlabel("target score")
    ax.set_ylabel(r"$\theta$")
    ax = axes[m + 1]
    s = phi.sum(0)
    ax.plot(s, theta, ".", color="tab:purple", ms=4, alpha=0.6)
    ax.set_xlabel(r"$\sum_i \phi_i$")
    ax.set_ylabel(r"$\theta$")
    ax.set_title(f"score = {t.score:.3f}", fontsize=9)
    fig.suptitle(f"ACE transforms of channel {t.channel}", fontsize=10)
    return fig
