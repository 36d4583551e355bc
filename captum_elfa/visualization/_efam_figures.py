"""Matplotlib figures of EFAM over images: :func:`plot_efam` and :func:`plot_cam_vs_efam`
(re-exported by :mod:`captum_elfa.visualization.figures`). They draw maps computed by
:mod:`captum_elfa.attr.figure_data` (passed as ``maps``, or computed there when not given)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.figure_data import CamEfamMaps, EfamMaps, cam_and_efam_maps, efam_maps
from captum_elfa.visualization._figure_utils import (
    MAX_WIDTH_IN,
    FactorsArg,
    _check_alpha,
    _check_images,
    _check_lfa,
    _check_positive_int,
    _overlay,
    _show_image,
)

__all__ = ["plot_efam", "plot_cam_vs_efam"]


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
    maps: Optional[EfamMaps] = None,
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
        maps (EfamMaps, optional): the maps already computed by
                    :func:`captum_elfa.attr.figure_data.efam_maps` (then ``factors``,
                    ``max_factors`` and ``additional_forward_args`` are not used and the model
                    does not run); computed here when None.

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
    if maps is None:
        maps = efam_maps(lfa, images, factors, max_factors, additional_forward_args)
    elif not isinstance(maps, EfamMaps):
        raise CaptumElfaError(f"maps must be an EfamMaps (from efam_maps), got {type(maps).__name__}")
    k, idx, efam, per = maps.n_factors, list(maps.factor_indices), maps.efam, maps.factors
    if efam.shape[0] != images.shape[0]:
        raise CaptumElfaError(f"maps hold {efam.shape[0]} images for {images.shape[0]} images; compute them on images")
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
    maps: Optional[CamEfamMaps] = None,
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
        maps (CamEfamMaps, optional): the maps already computed by
                    :func:`captum_elfa.attr.figure_data.cam_and_efam_maps` (the model does not
                    run); computed here when None.

    Returns:
        matplotlib.figure.Figure: ``3 * N`` axes in an ``N x 3`` grid (input, Grad-CAM, EFAM).

    Examples::

        >>> fig = plot_cam_vs_efam(model, lfa, images[:4], model.layer4, target=281)
    """
    _check_lfa(lfa, "plot_cam_vs_efam")
    images = _check_images(images, "plot_cam_vs_efam")
    alpha = _check_alpha(alpha)
    if maps is None:
        maps = cam_and_efam_maps(model, lfa, images, layer, target)
    elif not isinstance(maps, CamEfamMaps):
        raise CaptumElfaError(f"maps must be a CamEfamMaps (from cam_and_efam_maps), got {type(maps).__name__}")
    cam, efam, targets = maps.cam, maps.efam, maps.targets
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
