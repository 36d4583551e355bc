"""The figure of :func:`~captum_elfa.compare_layers` (``LayerComparison.figure`` delegates here)."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
from matplotlib.figure import Figure

from captum_elfa._validation import CaptumElfaError

__all__ = ["plot_layer_comparison"]


def _outside_legend(ax: Any) -> Any:
    """A legend at the right of the axes, outside them: it covers no line or box."""
    return ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def plot_layer_comparison(comparison: Any, figsize: Tuple[float, float] = (11.0, 7.0)) -> Figure:
    r"""A :class:`matplotlib.figure.Figure` comparing the layers of a
    :class:`~captum_elfa.attr.compare_layers.LayerComparison` (never shown).

    Panels: adequacy and fit (KMO, R², total variance explained, γ² 20th percentile, with the
    0.6 KMO line); number of factors and the fraction of dead channels; Res and D1; and, when
    PCACE ran, the distribution of the channels' PCACE scores per layer (box plot, maximum
    marked). The legends sit at the right of their panels, outside the data.

    Args:
        comparison (LayerComparison): the result of :func:`~captum_elfa.compare_layers`.
        figsize (tuple of float): figure size in inches. Default: ``(11, 7)``.

    Returns:
        matplotlib.figure.Figure: 2x2 panels (the fourth empty without PCACE scores).

    Examples::

        >>> cmp = compare_layers(model, [model.layer2, model.layer3], images, target=3)
        >>> plot_layer_comparison(cmp).savefig("layers.png")
    """
    if not hasattr(comparison, "rows") or not hasattr(comparison, "names"):
        raise CaptumElfaError(
            f"plot_layer_comparison needs a LayerComparison (from compare_layers), got {type(comparison).__name__}"
        )
    rows, names = comparison.rows, list(comparison.names)
    pcace = getattr(comparison, "pcace", {}) or {}
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(2, 2)
    x = np.arange(len(names))

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    ax = axes[0, 0]
    for key, label, marker in (
        ("kmo", "KMO", "o"),
        ("r2", "R²", "s"),
        ("total_variance_explained", "variance explained", "^"),
        ("gamma2_p20", "γ² p20", "v"),
    ):
        ax.plot(x, col(key), marker=marker, label=label, gid=key)
    ax.axhline(0.6, color="grey", lw=0.8, ls="--", label="KMO 0.6")
    ax.set_title("Adequacy and fit")
    _outside_legend(ax)

    ax = axes[0, 1]
    ax.bar(x, col("n_factors"), color="C0", label="factors")
    ax.set_ylabel("number of factors")
    ax.set_title("Factors and dead channels")
    ax2 = ax.twinx()
    ax2.plot(x, col("dead") / col("channels"), color="C3", marker="o", label="dead fraction")
    ax2.set_ylabel("dead channels (fraction)", color="C3")
    ax2.set_ylim(0, 1)

    ax = axes[1, 0]
    ax.plot(x, col("res"), marker="o", label="Res")
    ax.plot(x, col("d1"), marker="s", label="D1")
    ax.set_title("Residual correlations")
    _outside_legend(ax)

    ax = axes[1, 1]
    if pcace:
        data = [pcace[n].detach().cpu().double().numpy() for n in names]
        ax.boxplot(data, positions=x, widths=0.5)
        ax.plot(x, col("pcace_max"), "r*", label="max")
        thresholds = [r.get("pcace_threshold") for r in rows]
        if any(t is not None for t in thresholds):
            # each layer's family-wise 5% permutation threshold: channels below it are chance
            ax.plot(
                x,
                [np.nan if t is None else t for t in thresholds],
                "_",
                color="tab:red",
                ms=22,
                mew=1.5,
                label="FWER 5% null threshold",
            )
        ax.set_ylim(0, 1.02)
        ax.set_title("PCACE scores per channel")
        _outside_legend(ax)
    else:
        ax.set_title("PCACE not computed")
        ax.set_axis_off()
    for a in axes.flat:
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    return fig
