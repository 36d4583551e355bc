"""Figures of the feature-synthesis results of :mod:`captum_elfa.optim` (activation maximisation
and factor inversion): their ``.figure()`` methods and ``optim._engine.show`` delegate here."""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["display_image", "show_image", "plot_channel_images", "plot_inversion"]


def display_image(img: Tensor, value_range: Sequence[float]) -> Tuple[Any, dict]:
    """``[C, H, W]`` in ``value_range`` -> an array for ``imshow`` and its keyword arguments
    (RGB as ``[H, W, 3]``, anything else as the channels' mean in gray)."""
    lo, hi = value_range
    x = ((img.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy(), {}
    return x.mean(0).numpy(), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def show_image(ax: Any, img: Tensor, value_range: Sequence[float], title: str) -> None:
    """Draw ``img`` (``[C, H, W]`` in ``value_range``) on ``ax`` with a title and no ticks."""
    arr, kw = display_image(img, value_range)
    ax.imshow(arr, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_channel_images(result: Any, ncols: int = 6, size: float = 1.8) -> Figure:
    r"""The images of an activation maximisation, one panel per channel (never shown).

    Args:
        result (ActivationMaxResult): from :func:`~captum_elfa.optim.maximize_channels`.
        ncols (int): panels per row. Default: 6.
        size (float): inches per panel. Default: 1.8.

    Returns:
        matplotlib.figure.Figure: one axes per channel (the rest of the last row switched off).

    Examples::

        >>> plot_channel_images(maximize_channels(model, model.layer3, [1, 5])).savefig("act.png")
    """
    k = len(result.channels)
    ncols = max(1, min(int(ncols), k))
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(size * ncols, size * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.set_axis_off()
            continue
        title = f"channel {result.channels[i]}"
        if result.scores is not None:
            title += f"\nscore {float(result.scores[i]):.3f}"
        title += f"\nact {float(result.final_activation[i]):.3g}"
        show_image(ax, result.images[i], result.value_range, title)
    fig.suptitle(f"activation maximisation, {result.layer_name}", fontsize=10)
    return fig


def plot_inversion(result: Any, figsize: Tuple[float, float] = (7.0, 3.0)) -> Figure:
    r"""The image of a factor inversion and its loss curve (never shown).

    Args:
        result (InversionResult): from :func:`~captum_elfa.optim.invert_factor`.
        figsize (tuple of float): figure size in inches. Default: ``(7, 3)``.

    Returns:
        matplotlib.figure.Figure: two axes, the image and the loss per step.

    Examples::

        >>> plot_inversion(invert_factor(lfa, 0)).savefig("factor1.png")
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax_img, ax_loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    show_image(ax_img, result.image[0], result.value_range, f"factor {result.factor} ({result.layer_name})")
    ax_loss.plot(range(1, len(result.losses) + 1), result.losses, lw=1)
    ax_loss.axhline(result.final_loss, color="k", ls="--", lw=0.8, label=f"final {result.final_loss:.3g}")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("relative squared error")
    ax_loss.set_title(
        f"{result.method} inversion, {'standardised' if result.standardize else 'raw'} activations", fontsize=9
    )
    ax_loss.legend(fontsize=8)
    return fig
