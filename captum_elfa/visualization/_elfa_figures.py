"""Matplotlib figures of a fitted :class:`~captum_elfa.LayerFactorAnalysis`: the scree plot, the
loadings, the channel insights and the fit summary (re-exported by
:mod:`captum_elfa.visualization.figures`). The insights they draw are computed by
:mod:`captum_elfa.stats.insights`; the image figures (EFAM, Grad-CAM) are in ``_efam_figures``."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.insights import channel_insights, redundancy_groups
from captum_elfa.visualization._figure_utils import (
    MAX_WIDTH_IN,
    _axis_length_pt,
    _bars,
    _channel_order,
    _channel_ticks,
    _check_lfa,
    _dominant,
    _factor_colors,
    _factor_ticks,
    _label_step,
    _live,
    _np,
    _shorten,
)

__all__ = ["plot_scree", "plot_loadings", "plot_channel_insights", "plot_fit_summary"]


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
    a_kmo.set_ylim(0, 1.3)  # headroom above 1 for the legend: it covers no bar
    a_kmo.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    _channel_ticks(a_kmo, live, "x", max_labels=32)
    a_kmo.set_xlabel("channel")
    a_kmo.set_ylabel("KMO (MSA)")
    a_kmo.set_title("Sampling adequacy per channel", fontsize=10)
    a_kmo.legend(fontsize=8, loc="upper right", ncol=2, borderaxespad=0.2)

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
    a_var.legend(fontsize=8, loc="upper left")  # the cumulative curve starts low: the corner is free

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
