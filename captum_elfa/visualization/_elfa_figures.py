"""Matplotlib figures of a fitted :class:`~captum_elfa.LayerFactorAnalysis` (re-exported by
:mod:`captum_elfa.visualization.figures`)."""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError
from captum_elfa.visualization._figure_utils import (
    MAX_WIDTH_IN,
    FactorsArg,
    _axis_length_pt,
    _bars,
    _channel_order,
    _channel_ticks,
    _check_alpha,
    _check_images,
    _check_lfa,
    _check_positive_int,
    _dominant,
    _factor_colors,
    _factor_ticks,
    _label_step,
    _live,
    _minmax_per_map,
    _np,
    _overlay,
    _shorten,
    _show_image,
    _upsample,
)


# ----------------------------------------------------------------------------------------------
# ELFA
# ----------------------------------------------------------------------------------------------
def plot_scree(
    lfa: Any,
    parallel: Optional[bool] = None,
    figsize: Tuple[float, float] = (6.4, 4.2),
) -> Figure:
    r"""Scree plot of a fitted :class:`~captum_elfa.LayerFactorAnalysis`.

    The eigenvalues of the live channels' correlation matrix, in decreasing order, with the
    Kaiser line at 1, Horn's parallel-analysis curve (the 95th percentile of the eigenvalues of
    random data of the same size) and the chosen number of factors marked by a vertical line
    (the retained eigenvalues are drawn filled).

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        parallel (bool, optional): None draws the parallel-analysis curve when the fit computed
                    it (``n_factors="parallel"``); True draws it always, computing it with
                    :func:`captum_elfa.stats.nfactors.parallel_analysis` (seed 0) if needed;
                    False never draws it. Default: None.
        figsize (tuple of float): figure size in inches. Default: ``(6.4, 4.2)``.

    Returns:
        matplotlib.figure.Figure: one axes.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer2).fit(images)
        >>> plot_scree(lfa, parallel=True).savefig("scree.png")
    """
    _check_lfa(lfa, "plot_scree")
    if parallel is not None and not isinstance(parallel, bool):
        raise CaptumElfaError(f"parallel={parallel!r} is not valid; use None, True or False")
    ev = np.sort(_np(lfa.eigenvalues_))[::-1]
    x = np.arange(1, ev.size + 1)
    k = int(lfa.n_factors_)
    threshold = getattr(lfa, "parallel_threshold_", None)
    if parallel is False:
        threshold = None
    elif parallel and threshold is None:
        from captum_elfa.stats.nfactors import parallel_analysis

        _, threshold = parallel_analysis(torch.as_tensor(ev.copy()), int(lfa.n_samples_), random_state=0)

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, ev, "-", color="tab:blue", lw=1.2, zorder=2)
    ax.plot(x[:k], ev[:k], "o", color="tab:blue", ms=6, label=f"retained ({k})", zorder=3)
    ax.plot(x[k:], ev[k:], "o", mfc="white", mec="tab:blue", ms=5, label="eigenvalue", zorder=3)
    ax.axhline(1.0, color="tab:red", ls="--", lw=1, label="Kaiser (eigenvalue = 1)")
    if threshold is not None:
        th = _np(threshold)
        ax.plot(x[: th.size], th[: ev.size], ":", color="tab:green", lw=1.5, label="parallel analysis (95%)")
    ax.axvline(k + 0.5, color="0.4", lw=1, ls="-.")
    # at the bottom of the axes, beside the line: never under the legend (upper right)
    ax.annotate(
        f"k = {k}",
        xy=(k + 0.5, 0.0),
        xycoords=("data", "axes fraction"),
        xytext=(4, 4),
        textcoords="offset points",
        va="bottom",
        ha="left",
        fontsize=9,
        color="0.25",
    )
    method = getattr(lfa, "n_factors_method_", None)
    layer = getattr(lfa, "layer_name_", "")
    ax.set_title(f"Scree plot{' of ' + layer if layer else ''}" + (f" (n_factors: {method})" if method else ""))
    ax.set_xlabel("component")
    ax.set_ylabel("eigenvalue of R")
    if ev.size <= 30:
        ax.set_xticks(x)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_loadings(
    lfa: Any,
    dead: str = "omit",
    cmap: Any = "RdBu_r",
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Heatmap of the loadings (channels x factors), channels grouped by dominant factor.

    Channels are sorted by the factor with their largest absolute loading, then by that loading's
    magnitude, so the channels that load on the same factor (redundant channels) form blocks;
    thin lines separate the blocks. The colormap is diverging and centred at 0.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        dead (str): ``"omit"`` leaves dead (constant) channels out; ``"grey"`` draws them as
                    grey rows at the bottom. Default: ``"omit"``.
        cmap (str or Colormap): a diverging colormap. Default: ``"RdBu_r"``.
        figsize (tuple of float, optional): default grows with the number of channels.

    Returns:
        matplotlib.figure.Figure: two axes, the heatmap and its colorbar.

    Examples::

        >>> fig = plot_loadings(lfa)
        >>> fig.savefig("loadings.png", dpi=150)
    """
    _check_lfa(lfa, "plot_loadings")
    if dead not in ("omit", "grey"):
        raise CaptumElfaError(f"dead={dead!r} is not valid; choose one of ['omit', 'grey']")
    from matplotlib import colormaps

    w = _np(lfa.loadings_)
    k = w.shape[1]
    order = list(_channel_order(lfa))
    dead_idx = [int(i) for i in _np(lfa.dead_channels_).astype(int)] if dead == "grey" else []
    rows = order + dead_idx
    mask = np.zeros((len(rows), k), dtype=bool)
    mask[len(order) :] = True  # the dead channels, listed after the live ones
    data = np.ma.masked_array(w[rows], mask=mask)
    vmax = float(np.abs(w[order]).max()) if order else 1.0
    vmax = vmax if vmax > 0 else 1.0
    colormap = (colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad="0.75")
    if figsize is None:
        figsize = (min(MAX_WIDTH_IN, 2.5 + 0.55 * k), min(2.0 + 0.18 * len(rows), 12.0))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, cmap=colormap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    dom, _ = _dominant(lfa)
    doms = dom[order]
    for i in range(1, len(order)):
        if doms[i] != doms[i - 1]:
            ax.axhline(i - 0.5, color="k", lw=0.8)
    if dead_idx:
        ax.axhline(len(order) - 0.5, color="k", lw=1.2, ls="--")
    _factor_ticks(ax, k, "x")
    _channel_ticks(ax, rows, "y")
    ax.set_xlabel("factor")
    ax.set_ylabel("channel")
    n_dead = len(_np(lfa.dead_channels_))
    note = f", {n_dead} dead {'(grey)' if dead_idx else 'omitted'}" if n_dead else ""
    ax.set_title(f"Loadings ({len(order)} channels{note})", fontsize=10)
    fig.colorbar(im, ax=ax, label="loading", shrink=0.8 if len(rows) < 80 else 0.4)
    return fig


def redundancy_groups(lfa: Any, threshold: float = 0.4) -> Dict[int, List[int]]:
    r"""Groups of redundant channels: for every factor, the live channels whose dominant factor
    it is with an absolute loading of at least ``threshold``.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        threshold (float): smallest absolute loading for a channel to belong to its dominant
                    factor's group. Default: 0.4.

    Returns:
        dict: factor index -> sorted list of channel indices (every factor is a key; a group
        may be empty or hold one channel).

    Examples::

        >>> redundancy_groups(lfa, 0.5)
        {0: [1, 4, 9], 1: [2, 7], 2: []}
    """
    _check_lfa(lfa, "redundancy_groups")
    threshold = _check_threshold(threshold)
    dom, load = _dominant(lfa)
    groups: Dict[int, List[int]] = {f: [] for f in range(int(lfa.loadings_.shape[1]))}
    for j in _live(lfa):
        if abs(load[j]) >= threshold:
            groups[int(dom[j])].append(int(j))
    return groups


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= float(threshold) < np.inf:
        raise CaptumElfaError(f"threshold={threshold!r} is not valid; use a non-negative number (0.4 is usual)")
    return float(threshold)


def channel_insights(lfa: Any, threshold: float = 0.4) -> List[Dict[str, Any]]:
    r"""Per-channel insights of a fitted ELFA model (METHODS.md, "Channel insights").

    For every channel: its communality ``h2`` (how much of it the shared factors explain, its
    importance to the layer's summary), its uniqueness (what is specific to it), the factor it
    belongs to (largest absolute loading) and the channels it is redundant with (same dominant
    factor, both with an absolute loading of at least ``threshold``).

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        threshold (float): smallest absolute loading for a channel to join its dominant factor's
                    redundancy group. Default: 0.4.

    Returns:
        list of dict, one per channel in channel order, with keys ``"channel"`` (int),
        ``"dead"`` (bool), ``"communality"`` (float), ``"uniqueness"`` (float),
        ``"dominant_factor"`` (int, None for a dead channel), ``"loading"`` (float, the
        signed dominant loading; 0 for a dead channel), ``"group"`` (int factor index if the
        channel belongs to a redundancy group, else None) and ``"redundant_with"`` (sorted list
        of the other channels of its group).

    Examples::

        >>> rows = channel_insights(lfa, threshold=0.5)
        >>> [r["channel"] for r in rows if r["group"] == 0]       # the channels of factor 1
        >>> import pandas as pd; pd.DataFrame(rows)                # a table
    """
    _check_lfa(lfa, "channel_insights")
    groups = redundancy_groups(lfa, threshold)
    member = {j: f for f, chans in groups.items() for j in chans}
    dom, load = _dominant(lfa)
    h2 = _np(lfa.metrics_.communalities)
    psi = _np(lfa.uniquenesses_)
    out: List[Dict[str, Any]] = []
    for j in range(int(lfa.loadings_.shape[0])):
        is_dead = bool(dom[j] < 0)
        g = member.get(j)
        out.append(
            {
                "channel": j,
                "dead": is_dead,
                "communality": float(h2[j]),
                "uniqueness": float(psi[j]),
                "dominant_factor": None if is_dead else int(dom[j]),
                "loading": float(load[j]),
                "group": g,
                "redundant_with": [] if g is None else [c for c in groups[g] if c != j],
            }
        )
    return out


def plot_channel_insights(
    lfa: Any,
    threshold: float = 0.4,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Channel insights as a figure: communality and uniqueness of every live channel, coloured
    by the factor it belongs to, and the list of redundancy groups.

    Channels are in the order of :func:`plot_loadings` (by dominant factor). A bar is the
    channel's communality (coloured by its dominant factor; hatched when its dominant loading is
    below ``threshold``, i.e. it is in no redundancy group) stacked with its uniqueness (grey).

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        threshold (float): as in :func:`channel_insights`. Default: 0.4.
        figsize (tuple of float, optional): default grows with the number of channels.

    Returns:
        matplotlib.figure.Figure: two axes, the bars and a text panel of the groups.

    Examples::

        >>> plot_channel_insights(lfa, threshold=0.5).savefig("insights.png")
    """
    _check_lfa(lfa, "plot_channel_insights")
    rows = channel_insights(lfa, threshold)
    order = _channel_order(lfa)
    k = int(lfa.loadings_.shape[1])
    colors = _factor_colors(k)
    if figsize is None:
        figsize = (min(MAX_WIDTH_IN, max(6.0, 2.5 + 0.22 * len(order))), 6.0)
    fig = Figure(figsize=figsize, layout="constrained")
    ax, tx = fig.subplots(2, 1, height_ratios=[3, 1.3])
    x = np.arange(len(order))
    h2 = np.array([rows[j]["communality"] for j in order])
    psi = np.array([rows[j]["uniqueness"] for j in order])
    dom = np.array([rows[j]["dominant_factor"] for j in order], dtype=int)
    grouped = np.array([rows[j]["group"] is not None for j in order], dtype=bool)
    # three bar calls instead of two per channel (512 channels: 1024 calls took seconds):
    # the communalities (grouped, then hatched ungrouped), then the uniquenesses stacked on top
    lw = 0.3 if len(order) <= 128 else 0.0
    for sel, hatch, gid in ((grouped, None, "communality"), (~grouped, "//", "communality_ungrouped")):
        if sel.any():
            fc = [colors[f] for f in dom[sel]]
            _bars(ax, x[sel], h2[sel], facecolors=fc, edgecolors="k", linewidths=lw, hatch=hatch, gid=gid)
    _bars(ax, x, psi, bottom=h2, facecolors="0.85", edgecolors="0.6", linewidths=lw, gid="uniqueness")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, max(1.0, float((h2 + psi).max()) * 1.02) if len(order) else 1.0)
    _channel_ticks(ax, order, "x")
    ax.set_xlabel("channel (ordered by dominant factor)")
    ax.set_ylabel("communality + uniqueness")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[f], label=f"F{f + 1}") for f in range(k)] if k <= 12 else []
    handles.append(Patch(facecolor="0.85", edgecolor="0.6", label="uniqueness"))
    handles.append(Patch(facecolor="white", edgecolor="k", hatch="//", label=f"|loading| < {threshold:g}"))
    # outside the axes, at the right: it covers neither the bars nor the title
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if k > 12 and len(order):  # too many factors for a legend: name the blocks on the top axis
        top = ax.secondary_xaxis("top")
        starts = [0] + [i for i in range(1, len(order)) if dom[i] != dom[i - 1]]
        ends = starts[1:] + [len(order)]
        per = 1.6 * 6 / max(_axis_length_pt(ax, "x"), 1.0) * len(order)  # data units per label
        pos, labels, last = [], [], -np.inf
        for s0, e0 in zip(starts, ends):
            c = 0.5 * (s0 + e0 - 1)
            if c - last >= per:
                pos.append(c)
                labels.append(f"F{dom[s0] + 1}")
                last = c
        top.set_xticks(pos)
        top.set_xticklabels(labels, fontsize=6, rotation=90)
        top.tick_params(length=2, pad=1)
    n_dead = sum(r["dead"] for r in rows)
    ax.set_title(
        f"Channel insights: {len(order)} channels, {k} factors"
        + (f" ({n_dead} dead channels omitted)" if n_dead else "")
        + ("; colour = dominant factor" if k > 12 else ""),
        fontsize=10,
    )

    tx.axis("off")
    groups = redundancy_groups(lfa, threshold)
    filled = sorted(((f, c) for f, c in groups.items() if c), key=lambda fc: (-len(fc[1]), fc[0]))
    n_empty = sum(1 for c in groups.values() if not c)
    max_chars = max(40, int(figsize[0] * 72 / (0.62 * 8)) - 4)
    max_lines = max(2, int(figsize[1] * 1.3 / 4.3 * 72 / (8 * 1.25)) - 2)
    lines = [
        f"Redundant channels (dominant |loading| >= {threshold:g}), largest groups first"
        + (f"; {n_empty} factor(s) with no such channel" if n_empty else "")
        + ":"
    ]
    for f, chans in filled[:max_lines]:
        lines.append(_shorten(f"F{f + 1} ({len(chans)}): " + ", ".join(str(c) for c in chans), max_chars))
    if len(filled) > max_lines:
        lines.append(f"... and {len(filled) - max_lines} more groups (all in channel_insights() / metrics.json)")
    if not filled:
        lines.append("(none)")
    tx.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", transform=tx.transAxes)
    return fig


def plot_fit_summary(lfa: Any, figsize: Tuple[float, float] = (10.0, 7.0)) -> Figure:
    r"""Adequacy and fit of a fitted ELFA model in four panels.

    (1) KMO (measure of sampling adequacy) of every live channel with the overall KMO and the
    0.6 acceptability line; (2) the distribution of the squared correlation coefficients
    ``gamma2`` of the channels with their 20th percentile; (3) the variance explained by each
    factor (bars) and cumulatively (line); (4) the validity metrics D1, D>, Res, R2, the
    Bartlett test and the total variance explained, as text.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        figsize (tuple of float): figure size in inches. Default: ``(10, 7)``.

    Returns:
        matplotlib.figure.Figure: four axes.

    Examples::

        >>> plot_fit_summary(lfa).savefig("fit.png")
    """
    _check_lfa(lfa, "plot_fit_summary")
    live = _live(lfa)
    adq, met = lfa.adequacy_, lfa.metrics_
    fig = Figure(figsize=figsize, layout="constrained")
    (a_kmo, a_g2), (a_var, a_txt) = fig.subplots(2, 2)

    kmo = _np(adq.kmo_per_channel)[live]
    _bars(a_kmo, np.arange(live.size), kmo, facecolors=np.where(kmo >= 0.6, "tab:blue", "tab:orange"), gid="kmo")
    a_kmo.set_xlim(-0.6, live.size - 0.4)
    a_kmo.axhline(float(adq.kmo), color="k", lw=1, label=f"overall KMO = {float(adq.kmo):.3f}")
    a_kmo.axhline(0.6, color="tab:red", ls="--", lw=1, label="0.6")
    a_kmo.set_ylim(0, 1.05)
    _channel_ticks(a_kmo, live, "x", max_labels=32)
    a_kmo.set_xlabel("channel")
    a_kmo.set_ylabel("KMO (MSA)")
    a_kmo.set_title("Sampling adequacy per channel", fontsize=10)
    a_kmo.legend(fontsize=8, loc="lower right")

    g2 = _np(met.gamma2)[live]
    p20 = float(met.gamma2_p20)
    a_g2.hist(
        g2,
        bins=min(30, max(5, live.size // 2)),
        range=(0.0, max(1.0, float(g2.max()))),
        color="tab:purple",
        alpha=0.8,
        edgecolor="white",
    )
    a_g2.axvline(p20, color="k", ls="--", lw=1.2, label=f"20th percentile = {p20:.3f}")
    a_g2.set_xlabel(r"$\gamma^2$ (squared correlation with the factors)")
    a_g2.set_ylabel("channels")
    a_g2.set_title(r"Distribution of $\gamma^2$", fontsize=10)
    a_g2.legend(fontsize=8, loc="upper left")

    prop = _np(met.proportional_variance)
    cum = _np(met.cumulative_variance)
    xf = np.arange(1, prop.size + 1)
    a_var.bar(xf, prop, color=_factor_colors(prop.size), label="per factor")
    a_var.plot(xf, cum, "o-", color="k", ms=4 if prop.size <= 20 else 2, label="cumulative")
    # percentages and factor names thinned so that they never overlap (60 factors: every 5th)
    step = _label_step(prop.size, _axis_length_pt(a_var, "x"), 7 * 0.62 * 4 + 4)
    shown = list(range(prop.size - 1, -1, -step))[::-1]  # from the last: the total is always labelled
    for i in shown:
        a_var.annotate(
            f"{cum[i]:.0%}", (xf[i], cum[i]), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7
        )
    _factor_ticks(a_var, prop.size, "x", offset=1)
    a_var.set_ylim(0, min(1.1, max(1e-3, float(cum.max())) * 1.25))
    a_var.set_ylabel("proportion of variance")
    a_var.set_title("Variance explained", fontsize=10)
    a_var.legend(fontsize=8, loc="lower right")

    a_txt.axis("off")
    lines = [
        f"factors            {int(lfa.n_factors_)} ({getattr(lfa, 'n_factors_method_', '?')}, rotation {getattr(lfa, 'rotation_', None)})",
        f"channels           {int(lfa.loadings_.shape[0])} ({int(lfa.loadings_.shape[0]) - live.size} dead)",
        f"samples            {int(lfa.n_samples_)}",
        f"KMO                {float(adq.kmo):.3f}",
        f"Bartlett chi2      {float(adq.bartlett_chi2):.4g} (dof {adq.bartlett_dof}, p = {float(adq.bartlett_p):.3g})",
        f"D1                 {float(met.d1):.3f}   (close to 1 is good)",
        f"D>                 {float(met.d_greater):.3f}   (larger is better)",
        f"Res                {float(met.res):.4f}  (small is good)",
        f"gamma2 p20         {p20:.3f}",
        f"R2                 {float(met.r2):.4f}",
        f"variance explained {float(met.total_variance_explained):.1%}",
    ]
    a_txt.text(
        0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8.5, transform=a_txt.transAxes
    )
    a_txt.set_title("Validity metrics", fontsize=10)
    return fig


def plot_efam(
    lfa: Any,
    images: Tensor,
    factors: FactorsArg = "auto",
    alpha: float = 0.5,
    cmap: Any = "jet",
    additional_forward_args: Any = None,
    figsize: Optional[Tuple[float, float]] = None,
    factor_cmap: Any = "RdBu_r",
    max_factors: int = 4,
) -> Figure:
    r"""EFAM and per-factor maps overlaid on a batch of images.

    One row per image: the input image, the combined EFAM (``lfa.attribute(images)``, min-max
    scaled per image to [0, 1], drawn with ``cmap``) and, per requested factor, that factor's
    raw score map (``lfa.attribute(images, factors=..., normalize=None)``: signed, standardised
    scores, drawn with the diverging ``factor_cmap`` centred at 0 on limits symmetric about 0
    and shared by every factor panel). Every map is upsampled to the image size with
    ``LayerAttribution.interpolate(..., "bilinear")`` and drawn over the image (min-max
    scaled, grayscale or RGB) with opacity ``alpha``; one colorbar for the EFAM and one for
    the factor scores. The title says how many of the factors are shown.

    Args:
        lfa (LayerFactorAnalysis): the fitted model (attached to its model and layer).
        images (Tensor): ``[N, C, H, W]`` with C = 1 or 3.
        factors (None, "auto", "all", int or list of int): the per-factor maps to draw; None
                    draws only the combined EFAM; ``"auto"`` the first ``max_factors``
                    factors. Default: ``"auto"``.
        alpha (float): opacity of the maps over the images, in [0, 1]. Default: 0.5.
        cmap (str or Colormap): colormap of the EFAM (values in [0, 1]). Default: ``"jet"``.
        additional_forward_args (Any, optional): extra model arguments.
        figsize (tuple of float, optional): default up to 2 inches per panel, at most 12
                    inches wide.
        factor_cmap (str or Colormap): diverging colormap of the signed factor scores.
                    Default: ``"RdBu_r"``.
        max_factors (int): factors drawn by ``factors="auto"``. Default: 4.

    Returns:
        matplotlib.figure.Figure: ``N * (2 + k')`` image axes in an ``N x (2 + k')`` grid (k'
        the number of per-factor maps; 0 when ``factors`` is None), row-major, first in
        ``fig.axes``; then the colorbars.

    Examples::

        >>> fig = plot_efam(lfa, images[:4])                # EFAM and the first 4 factors
        >>> fig = plot_efam(lfa, images[:4], factors=[0, 2], alpha=0.4)
        >>> fig = plot_efam(lfa, images[:2], factors="all")  # every factor
    """
    _check_lfa(lfa, "plot_efam")
    images = _check_images(images, "plot_efam")
    alpha = _check_alpha(alpha)
    max_factors = _check_positive_int("max_factors", max_factors)
    k = int(lfa.n_factors_)
    if isinstance(factors, str) and factors == "auto":
        idx = list(range(min(k, max_factors)))
    else:
        idx = lfa._factor_indices(factors) if factors is not None else []
    size = tuple(images.shape[2:])
    efam = _upsample(lfa.attribute(images, additional_forward_args=additional_forward_args), size)
    per = None
    if idx:
        raw = lfa.attribute(images, factors=idx, normalize=None, additional_forward_args=additional_forward_args)
        per = _upsample(raw, size)
    n, cols = images.shape[0], 2 + len(idx)
    if figsize is None:
        panel = min(2.0, (MAX_WIDTH_IN - 1.6) / cols)
        figsize = (panel * cols + 1.6, panel * n + 0.7)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    vmax = 1.0
    if per is not None:
        finite = np.abs(per[np.isfinite(per)])
        vmax = float(np.quantile(finite, 0.99)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    im_efam = im_factor = None
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        im_efam = _overlay(axes[i, 1], images[i], efam[i, 0], alpha, cmap)
        if per is not None:  # the per-factor maps, when factors were requested
            for c in range(len(idx)):
                _show_image(axes[i, 2 + c], images[i])
                im_factor = axes[i, 2 + c].imshow(
                    per[i, c], cmap=factor_cmap, alpha=alpha, vmin=-vmax, vmax=vmax, interpolation="bilinear"
                )
        axes[i, 0].set_ylabel(f"image {i}", fontsize=8)
    fs = 9 if cols <= 8 else 7
    axes[0, 0].set_title("input", fontsize=fs)
    axes[0, 1].set_title("EFAM", fontsize=fs)
    for c, f in enumerate(idx):
        axes[0, 2 + c].set_title(f"F{f + 1}" if cols > 8 else f"factor F{f + 1}", fontsize=fs)
    if im_efam is not None:
        fig.colorbar(im_efam, ax=axes[:, 1].tolist(), location="bottom", shrink=0.9, aspect=15).set_label(
            "EFAM (per image, 0-1)", fontsize=7
        )
    if im_factor is not None:
        cb = fig.colorbar(im_factor, ax=axes[:, 2:].ravel().tolist(), location="bottom", shrink=0.5, aspect=30)
        cb.set_label("factor score (signed, standardised)", fontsize=7)
    shown = (
        f"factors {', '.join(f'F{f + 1}' for f in idx[:6])}{', ...' if len(idx) > 6 else ''}" if idx else "no factor"
    )
    fig.suptitle(f"EFAM and {shown} ({len(idx)} of {k} shown)", fontsize=9)
    return fig


def plot_cam_vs_efam(
    model: Any,
    lfa: Any,
    images: Tensor,
    layer: nn.Module,
    target: Any = None,
    alpha: float = 0.5,
    cmap: Any = "jet",
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Grad-CAM of a layer side by side with the EFAM of a fitted ELFA model, per image.

    One row per image: the input, Grad-CAM (``analyze(images, GradCAM(model, layer), target)``,
    ReLU-ed and upsampled to the input, then min-max scaled per image) and EFAM (upsampled
    bilinearly), both overlaid on the image. Grad-CAM explains one class (``target``, or each
    image's top class); EFAM is class-agnostic: it shows what the layer's essential features see.

    Args:
        model (nn.Module): the model.
        lfa (LayerFactorAnalysis): the fitted model (its layer may differ from ``layer``).
        images (Tensor): ``[N, C, H, W]`` with C = 1 or 3.
        layer (nn.Module): the layer of Grad-CAM.
        target (None, int, list of int or Tensor): the class(es) of Grad-CAM; None for each
                    image's top class. Default: None.
        alpha (float): opacity of the maps over the images. Default: 0.5.
        cmap (str or Colormap): colormap of the maps. Default: ``"jet"``.
        figsize (tuple of float, optional): default 2 inches per panel.

    Returns:
        matplotlib.figure.Figure: ``3 * N`` axes in an ``N x 3`` grid (input, Grad-CAM, EFAM).

    Examples::

        >>> fig = plot_cam_vs_efam(model, lfa, images[:4], model.layer4, target=281)
    """
    _check_lfa(lfa, "plot_cam_vs_efam")
    images = _check_images(images, "plot_cam_vs_efam")
    alpha = _check_alpha(alpha)
    from captum_elfa.attr.analyze import GradCAM, analyze

    expl = analyze(images, GradCAM(model, layer), target)
    cam = _minmax_per_map(_np(expl.val.sum(1, keepdim=True)))
    size = tuple(images.shape[2:])
    efam = _upsample(lfa.attribute(images), size)
    targets = None if expl.target is None else expl.target.tolist()
    n = images.shape[0]
    if figsize is None:
        figsize = (6.6, 2.0 * n + 0.4)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(n, 3, squeeze=False))
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        _overlay(axes[i, 1], images[i], cam[i, 0], alpha, cmap)
        _overlay(axes[i, 2], images[i], efam[i, 0], alpha, cmap)
        label = f"image {i}" + (f" (class {targets[i]})" if targets is not None else "")
        axes[i, 0].set_ylabel(label, fontsize=8)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].set_title("Grad-CAM", fontsize=9)
    axes[0, 2].set_title("EFAM", fontsize=9)
    return fig
