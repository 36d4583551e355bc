"""Matplotlib figures of ELFA and PCACE results.

Every function returns a :class:`matplotlib.figure.Figure` built with ``Figure()`` directly:
nothing is registered with ``pyplot``, nothing is shown, and no global state changes. Save a
figure with ``fig.savefig("name.png")`` or display it in a notebook by evaluating it.

ELFA (:class:`~captum_elfa.LayerFactorAnalysis`, fitted): :func:`plot_scree`,
:func:`plot_loadings`, :func:`channel_insights` / :func:`plot_channel_insights`,
:func:`plot_fit_summary`, :func:`plot_efam`, :func:`plot_cam_vs_efam`.

PCACE (:class:`~captum_elfa.NeuronPCACE`, after ``attribute``): :func:`plot_pcace_ranking`,
:func:`plot_top_channel_maps`, :func:`plot_ace_transforms`.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, NotFittedError

__all__ = [
    "plot_scree",
    "plot_loadings",
    "channel_insights",
    "redundancy_groups",
    "plot_channel_insights",
    "plot_fit_summary",
    "plot_efam",
    "plot_cam_vs_efam",
    "plot_pcace_ranking",
    "plot_top_channel_maps",
    "plot_ace_transforms",
]

FactorsArg = Union[None, str, int, Sequence[int]]


# ----------------------------------------------------------------------------------------------
# checks and helpers
# ----------------------------------------------------------------------------------------------
def _check_lfa(lfa: Any, what: str) -> None:
    if not hasattr(lfa, "loadings_") or not hasattr(lfa, "metrics_"):
        raise NotFittedError(
            f"{what} needs a fitted LayerFactorAnalysis, got {type(lfa).__name__} without fitted "
            "results; call lfa.fit(inputs) first (or LayerFactorAnalysis.load(path, model, layer))"
        )


def _check_pc(pc: Any, what: str) -> None:
    if not hasattr(pc, "scores_") or not hasattr(pc, "rank_channels"):
        raise NotFittedError(
            f"{what} needs a NeuronPCACE with scores, got {type(pc).__name__} without them; "
            "call pc.attribute(inputs, target) first"
        )


def _np(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def _check_images(images: Any, what: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise CaptumElfaError(f"{what}: images must be a Tensor [N, C, H, W], got {shape}")
    if images.shape[0] == 0:
        raise CaptumElfaError(f"{what}: images is an empty batch; pass at least one image")
    if images.shape[1] not in (1, 3):
        raise CaptumElfaError(
            f"{what}: images must have 1 (grayscale) or 3 (RGB) channels to be drawn, got {images.shape[1]}"
        )
    return images


def _display_image(img: Tensor) -> np.ndarray:
    """``[C, H, W]`` (C = 1 or 3) to ``[H, W]`` or ``[H, W, 3]`` min-max scaled to [0, 1]."""
    a = _np(img)
    lo, hi = a.min(), a.max()
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _minmax_per_map(maps: np.ndarray) -> np.ndarray:
    """Scale every ``[H, W]`` map of ``[..., H, W]`` to [0, 1]; a constant map becomes zeros."""
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    lo = flat.min(-1)[..., None, None]
    hi = flat.max(-1)[..., None, None]
    rng = hi - lo
    return np.where(rng > 0, (maps - lo) / np.where(rng > 0, rng, 1.0), 0.0)


def _show_image(ax: Any, img: Tensor) -> None:
    disp = _display_image(img)
    if disp.ndim == 2:
        ax.imshow(disp, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(disp, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Any, img: Tensor, heat: np.ndarray, alpha: float, cmap: Any) -> Any:
    _show_image(ax, img)
    return ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= float(alpha) <= 1:
        raise CaptumElfaError(f"alpha={alpha!r} is not valid; use a number in [0, 1]")
    return float(alpha)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise CaptumElfaError(f"{name}={value!r} is not valid; use a positive int")
    return int(value)


def _upsample(maps: Tensor, size: Tuple[int, ...]) -> np.ndarray:
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(maps.detach().float().cpu(), tuple(size), "bilinear")
    return _np(up)


def _live(lfa: Any) -> np.ndarray:
    c = int(lfa.loadings_.shape[0])
    dead = (
        set(int(i) for i in _np(lfa.dead_channels_).astype(int).tolist()) if hasattr(lfa, "dead_channels_") else set()
    )
    return np.array([j for j in range(c) if j not in dead], dtype=int)


def _dominant(lfa: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Dominant factor of every channel and its signed loading (-1 and 0 for dead channels)."""
    w = _np(lfa.loadings_)
    dom = np.abs(w).argmax(1)
    load = w[np.arange(w.shape[0]), dom]
    is_live = np.zeros(w.shape[0], dtype=bool)
    is_live[_live(lfa)] = True
    return np.where(is_live, dom, -1), np.where(is_live, load, 0.0)


def _channel_order(lfa: Any) -> np.ndarray:
    """Live channels ordered by dominant factor, then by decreasing |dominant loading|."""
    dom, load = _dominant(lfa)
    live = _live(lfa)
    return live[np.lexsort((live, -np.abs(load[live]), dom[live]))]


def _factor_colors(k: int) -> List[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _channel_ticks(ax: Any, channels: Union[Sequence[int], np.ndarray], axis: str = "y", max_labels: int = 64) -> None:
    n = len(channels)
    step = max(1, int(np.ceil(n / max_labels)))
    pos = list(range(0, n, step))
    labels = [str(int(channels[i])) for i in pos]
    if axis == "y":
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=7 if n > 24 else 9)
    else:
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=7 if n > 24 else 9, rotation=90 if n > 24 else 0)


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
    ax.annotate(
        f"k = {k}",
        xy=(k + 0.5, ev.max()),
        xytext=(4, -4),
        textcoords="offset points",
        va="top",
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
        figsize = (2.5 + 0.55 * k, min(2.0 + 0.18 * len(rows), 16.0))
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
    ax.set_xticks(range(k))
    ax.set_xticklabels([f"F{j + 1}" for j in range(k)])
    _channel_ticks(ax, rows, "y")
    ax.set_xlabel("factor")
    ax.set_ylabel("channel")
    n_dead = len(_np(lfa.dead_channels_))
    note = f", {n_dead} dead {'(grey)' if dead_idx else 'omitted'}" if n_dead else ""
    ax.set_title(f"Loadings ({len(order)} channels{note})", fontsize=10)
    fig.colorbar(im, ax=ax, label="loading", shrink=0.8)
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
        figsize = (max(6.0, 1.5 + 0.22 * len(order)), 6.0)
    fig = Figure(figsize=figsize, layout="constrained")
    ax, tx = fig.subplots(2, 1, height_ratios=[3, 1.3])
    x = np.arange(len(order))
    h2 = np.array([rows[j]["communality"] for j in order])
    psi = np.array([rows[j]["uniqueness"] for j in order])
    for xi, j, a, b in zip(x, order, h2, psi):
        r = rows[j]
        ax.bar(
            xi,
            a,
            color=colors[r["dominant_factor"]],
            edgecolor="k",
            lw=0.3,
            hatch=None if r["group"] is not None else "//",
        )
        ax.bar(xi, b, bottom=a, color="0.85", edgecolor="0.6", lw=0.3)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, max(1.0, float((h2 + psi).max()) * 1.02) if len(order) else 1.0)
    _channel_ticks(ax, order, "x")
    ax.set_xlabel("channel (ordered by dominant factor)")
    ax.set_ylabel("communality + uniqueness")
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[f], label=f"F{f + 1}") for f in range(k)]
    handles.append(Patch(facecolor="0.85", edgecolor="0.6", label="uniqueness"))
    handles.append(Patch(facecolor="white", edgecolor="k", hatch="//", label=f"|loading| < {threshold:g}"))
    ax.legend(
        handles=handles,
        fontsize=7,
        ncol=min(len(handles), 6),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    n_dead = sum(r["dead"] for r in rows)
    ax.set_title(f"Channel insights{f' ({n_dead} dead channels omitted)' if n_dead else ''}", fontsize=10, pad=28)

    tx.axis("off")
    groups = redundancy_groups(lfa, threshold)
    lines = [f"Redundant channels (dominant |loading| >= {threshold:g}):"]
    for f, chans in groups.items():
        shown = ", ".join(str(c) for c in chans[:40]) + (" ..." if len(chans) > 40 else "")
        lines.append(f"F{f + 1}: {shown if chans else '(none)'}")
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
    a_kmo.bar(np.arange(live.size), kmo, color=np.where(kmo >= 0.6, "tab:blue", "tab:orange"))
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
    a_var.plot(xf, cum, "o-", color="k", label="cumulative")
    for xi, c in zip(xf, cum):
        a_var.annotate(f"{c:.0%}", (xi, c), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7)
    a_var.set_xticks(xf)
    a_var.set_xticklabels([f"F{i}" for i in xf])
    a_var.set_ylim(0, min(1.1, max(1e-3, float(cum.max())) * 1.2))
    a_var.set_ylabel("proportion of variance")
    a_var.set_title("Variance explained", fontsize=10)
    a_var.legend(fontsize=8, loc="upper left")

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
    factors: FactorsArg = "all",
    alpha: float = 0.5,
    cmap: Any = "jet",
    additional_forward_args: Any = None,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""EFAM and per-factor maps overlaid on a batch of images.

    One row per image: the input image, the combined EFAM (``lfa.attribute(images)``) and, per
    requested factor, that factor's map (``lfa.attribute(images, factors=...)``); every map is
    upsampled to the image size with ``LayerAttribution.interpolate(..., "bilinear")`` and drawn
    over the image (min-max scaled, grayscale or RGB) with opacity ``alpha``.

    Args:
        lfa (LayerFactorAnalysis): the fitted model (attached to its model and layer).
        images (Tensor): ``[N, C, H, W]`` with C = 1 or 3.
        factors (None, "all", int or list of int): the per-factor maps to draw; None draws only
                    the combined EFAM. Default: ``"all"``.
        alpha (float): opacity of the maps over the images, in [0, 1]. Default: 0.5.
        cmap (str or Colormap): colormap of the maps (values in [0, 1]). Default: ``"jet"``.
        additional_forward_args (Any, optional): extra model arguments.
        figsize (tuple of float, optional): default 2 inches per panel.

    Returns:
        matplotlib.figure.Figure: ``N * (2 + k')`` axes in an ``N x (2 + k')`` grid (k' the
        number of per-factor maps; 0 when ``factors`` is None), row-major.

    Examples::

        >>> fig = plot_efam(lfa, images[:4])                # EFAM and every factor
        >>> fig = plot_efam(lfa, images[:4], factors=[0, 2], alpha=0.4)
    """
    _check_lfa(lfa, "plot_efam")
    images = _check_images(images, "plot_efam")
    alpha = _check_alpha(alpha)
    idx = lfa._factor_indices(factors) if factors is not None else []
    size = tuple(images.shape[2:])
    efam = _upsample(lfa.attribute(images, additional_forward_args=additional_forward_args), size)
    per = None
    if idx:
        per = _upsample(lfa.attribute(images, factors=idx, additional_forward_args=additional_forward_args), size)
    n, cols = images.shape[0], 2 + len(idx)
    if figsize is None:
        figsize = (2.0 * cols + 0.6, 2.0 * n + 0.4)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        _overlay(axes[i, 1], images[i], efam[i, 0], alpha, cmap)
        if per is not None:  # the per-factor maps, when factors were requested
            for c in range(len(idx)):
                _overlay(axes[i, 2 + c], images[i], per[i, c], alpha, cmap)
        axes[i, 0].set_ylabel(f"image {i}", fontsize=9)
    axes[0, 0].set_title("input", fontsize=9)
    axes[0, 1].set_title("EFAM", fontsize=9)
    for c, f in enumerate(idx):
        axes[0, 2 + c].set_title(f"factor F{f + 1}", fontsize=9)
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


# ----------------------------------------------------------------------------------------------
# PCACE
# ----------------------------------------------------------------------------------------------
def plot_pcace_ranking(
    pc: Any,
    top: Optional[int] = 20,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Bar chart of the PCACE scores of the top channels, highest first.

    Args:
        pc (NeuronPCACE): after ``pc.attribute(inputs, target)``.
        top (int, optional): number of channels shown; None shows all. Default: 20.
        figsize (tuple of float, optional): default grows with the number of bars.

    Returns:
        matplotlib.figure.Figure: one axes with ``min(top, C)`` bars.

    Examples::

        >>> pc.attribute(images, target=3)
        >>> plot_pcace_ranking(pc, top=10).savefig("ranking.png")
    """
    _check_pc(pc, "plot_pcace_ranking")
    channels, scores = pc.rank_channels()
    c = int(channels.numel())
    m = c if top is None else min(_check_positive_int("top", top), c)
    ch = channels[:m].tolist()
    sc = _np(scores[:m])
    constant = set(_np(getattr(pc, "constant_channels_", torch.empty(0))).astype(int).tolist())
    if figsize is None:
        figsize = (max(5.0, 1.2 + 0.32 * m), 3.8)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = ["0.7" if j in constant else "tab:blue" for j in ch]
    ax.bar(np.arange(m), sc, color=colors)
    ax.set_xticks(np.arange(m))
    ax.set_xticklabels([str(j) for j in ch], rotation=90 if m > 20 else 0, fontsize=8)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("channel (highest score first)")
    ax.set_ylabel("PCACE score")
    layer = getattr(pc, "layer_name_", "")
    ax.set_title(f"PCACE ranking{' of ' + layer if layer else ''}: top {m} of {c} channels", fontsize=10)
    return fig


def plot_top_channel_maps(
    pc: Any,
    images: Tensor,
    k: int = 5,
    n_images: int = 4,
    cmap: Any = "viridis",
    additional_forward_args: Any = None,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    r"""Activation maps of the top-``k`` PCACE channels over a few images (what the PCACE
    authors' ``visualize_act_maps`` scripts show).

    The images run through ``pc``'s model once (no gradients, eval mode, model state restored);
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
    channels, scores = pc.rank_channels()
    c = int(channels.numel())
    if k > c:
        raise CaptumElfaError(f"k={k} is larger than the layer's {c} channels; choose 1 <= k <= {c}")
    from captum_elfa._capture import LayerCapture, check_activation_shape

    x = images[:n_images]
    n = x.shape[0]
    captured: List[Tensor] = []
    cap = LayerCapture(
        pc.forward_func,
        pc.layer,
        lambda a, i: captured.append(check_activation_shape(a, cap.layer_name).detach().cpu().double()),
    )
    with cap:
        cap.run(x, 0, additional_forward_args)
    acts = captured[0]
    if acts.shape[1] != c:
        raise CaptumElfaError(
            f"layer '{cap.layer_name}' gives {acts.shape[1]} channels but the PCACE scores have {c}; "
            "use the NeuronPCACE object of this layer"
        )
    top = channels[:k].tolist()
    maps = acts[:, top].numpy()  # [n, k, h, w]
    if figsize is None:
        figsize = (1.8 * (k + 1) + 0.6, 1.8 * n + 0.5)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(n, k + 1, squeeze=False))
    for col, ch in enumerate(top):
        lo, hi = float(maps[:, col].min()), float(maps[:, col].max())
        if hi <= lo:
            hi = lo + 1.0
        for i in range(n):
            ax = axes[i, col + 1]
            ax.imshow(maps[i, col], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
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
