"""Heatmap presets for explanations, after VisionHeatmaps.jl (ExplainableAI.jl's heatmapping).

- ``"sensitivity"``: reduce ``"norm"``, rangescale ``"extrema"``, colormap ``"gray"``
  (black = smallest, white = largest);
- ``"attribution"``: reduce ``"sum"``, rangescale ``"centered"``, colormap ``"seismic"``
  (blue < 0, white = 0, red > 0);
- ``"cam"``: reduce ``"sum"``, rangescale ``"extrema"``, colormap ``"jet"``
  (dark blue = smallest, dark red = largest).

``reduce`` collapses the channels of each pixel (nothing to reduce for one channel, as in
VisionHeatmaps): ``"sum"``, ``"norm"`` (2-norm), ``"maxabs"``, ``"sumabs"``, ``"abssum"``.
``rangescale`` maps the reduced map to [0, 1] before the colormap: ``"extrema"`` sends the
minimum to 0 and the maximum to 1 (a constant map gives 0); ``"centered"`` sends
``-max|v|`` to 0, zero to 0.5 and ``max|v|`` to 1 (an all-zero map is 0.5, white in
``seismic``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, check_choice, is_int, is_real

__all__ = ["heatmap", "visualize_explanation", "HEATMAP_PRESETS", "REDUCTIONS", "RANGESCALES"]

#: preset -> (reduce, rangescale, colormap), as VisionHeatmaps.jl's HEATMAP_PRESETS.
HEATMAP_PRESETS: Dict[str, Tuple[str, str, str]] = {
    "sensitivity": ("norm", "extrema", "gray"),
    "attribution": ("sum", "centered", "seismic"),
    "cam": ("sum", "extrema", "jet"),
}
REDUCTIONS: Tuple[str, ...] = ("sum", "norm", "maxabs", "sumabs", "abssum")
RANGESCALES: Tuple[str, ...] = ("extrema", "centered")

ArrayLike = Union[Tensor, np.ndarray]


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise CaptumElfaError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _unpack(expl: Any) -> Tuple[np.ndarray, str]:
    """(val as float64 [N, C, H, W], preset)."""
    from captum_elfa.attr.analyze import Explanation

    val: ArrayLike
    if isinstance(expl, Explanation):
        val, preset = expl.val, expl.heatmap
    elif isinstance(expl, (Tensor, np.ndarray)):
        val, preset = expl, "attribution"
    else:
        raise CaptumElfaError(
            f"heatmap takes an Explanation (from analyze) or an attribution Tensor, got {type(expl).__name__}"
        )
    arr = np.asarray(_as_numpy(val, "val"), dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise CaptumElfaError(
            f"heatmap draws images: the attribution must have shape [N, C, H, W] or [N, H, W], got {tuple(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise CaptumElfaError(
            f"the attribution contains {int((~np.isfinite(arr)).sum())} NaN/Inf values; heatmap needs finite values"
        )
    return arr, preset


def _reduce(val: np.ndarray, reduce: str) -> np.ndarray:
    """[N, C, H, W] -> [N, H, W]."""
    if val.shape[1] == 1:
        return val[:, 0]
    if reduce == "sum":
        return val.sum(axis=1)
    if reduce == "norm":
        return np.sqrt((val**2).sum(axis=1))
    if reduce == "maxabs":
        return np.abs(val).max(axis=1)
    if reduce == "sumabs":
        return np.abs(val).sum(axis=1)
    return np.abs(val.sum(axis=1))  # abssum


def _rangescale(maps: np.ndarray, rangescale: str) -> np.ndarray:
    """Rescale an array to [0, 1] as a whole."""
    if rangescale == "centered":
        m = np.abs(maps).max()
        return np.full_like(maps, 0.5) if m == 0 else maps / (2 * m) + 0.5
    lo, hi = maps.min(), maps.max()
    return np.zeros_like(maps) if hi == lo else (maps - lo) / (hi - lo)


def _get_cmap(cmap: Any) -> Any:
    import matplotlib
    from matplotlib.colors import Colormap

    if isinstance(cmap, Colormap):
        return cmap
    if isinstance(cmap, str):
        try:
            return matplotlib.colormaps[cmap]
        except KeyError:
            raise CaptumElfaError(
                f"cmap={cmap!r} is not a matplotlib colormap; use e.g. 'seismic', 'bwr', "
                "'gray', 'jet', 'turbo', 'inferno' or a matplotlib Colormap"
            ) from None
    raise CaptumElfaError(f"cmap must be a colormap name or a matplotlib Colormap, got {type(cmap).__name__}")


def _odd_resampled(colormap: Any, n_colors: int = 255) -> Any:
    if hasattr(colormap, "resampled"):
        return colormap.resampled(n_colors)
    return colormap._resample(n_colors)  # matplotlib < 3.6


def _prepare_overlay(overlay: ArrayLike, n_samples: int) -> np.ndarray:
    """The images as float RGB in [0, 1], [N, H, W, 3]."""
    is_tensor = isinstance(overlay, Tensor)
    img = _as_numpy(overlay, "overlay")
    shape = tuple(img.shape)
    if is_tensor:  # channel-first: [N, C, H, W], [C, H, W] or [H, W]
        if img.ndim == 2:
            img = img[None, None]
        elif img.ndim == 3:
            img = img[None]
        if img.ndim == 4:
            img = np.moveaxis(img, 1, -1)
    else:  # channel-last: [N, H, W, C], [H, W, C] or [H, W]
        if img.ndim == 2:
            img = img[None, ..., None]
        elif img.ndim == 3:
            img = img[None]
    if img.ndim != 4 or img.shape[-1] not in (1, 3, 4):
        layout = "[N, C, H, W], [C, H, W] or [H, W]" if is_tensor else "[N, H, W, C], [H, W, C] or [H, W]"
        raise CaptumElfaError(
            f"overlay has shape {shape}; a {'Tensor' if is_tensor else 'numpy array'} image "
            f"must be {layout} with C in (1, 3, 4)"
        )
    img = img[..., :3]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.shape[0] not in (1, n_samples):
        raise CaptumElfaError(
            f"overlay holds {img.shape[0]} images for {n_samples} heatmaps; give one image or {n_samples}"
        )
    if img.dtype == np.uint8:
        out = img.astype(np.float64) / 255.0
    else:
        out = np.asarray(img, dtype=np.float64)
        if not np.isfinite(out).all():
            raise CaptumElfaError("overlay contains NaN/Inf values")
        if out.min() < 0 or out.max() > 1:  # rescale each image to [0, 1]
            lo = out.min(axis=(1, 2, 3), keepdims=True)
            hi = out.max(axis=(1, 2, 3), keepdims=True)
            out = np.where(hi > lo, (out - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    if out.shape[0] != n_samples:
        out = np.repeat(out, n_samples, axis=0)
    return out


def _resize(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _save(rgb: np.ndarray, save: Union[str, os.PathLike]) -> List[Path]:
    from matplotlib.image import imsave

    path = Path(save)
    if path.suffix.lower() not in ("", ".png"):
        raise CaptumElfaError(f"save={str(save)!r}: heatmaps are written as PNG; use a .png path")
    if path.suffix == "":
        path = path.with_suffix(".png")
    if not path.parent.exists():
        raise CaptumElfaError(f"save={str(save)!r}: the folder {str(path.parent)!r} does not exist")
    if rgb.shape[0] == 1:
        paths = [path]
    else:
        paths = [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(rgb.shape[0])]
    for p, img in zip(paths, rgb):
        imsave(p, img, format="png")
    return paths


def heatmap(
    expl: Any,
    reduce: Optional[str] = None,
    rangescale: Optional[str] = None,
    cmap: Any = None,
    overlay: Optional[ArrayLike] = None,
    alpha: float = 0.6,
    process_batch: bool = False,
    save: Union[None, str, os.PathLike] = None,
) -> np.ndarray:
    r"""Colour an explanation as RGB images, with the preset of its analyzer (VisionHeatmaps.jl).

    Args:
        expl (captum_elfa.attr.analyzers.Explanation or Tensor): the explanation, or an attribution ``[N, C, H, W]`` /
                    ``[N, H, W]`` (drawn with the ``"attribution"`` preset).
        reduce (str, optional): channel reduction, one of ``"sum"``, ``"norm"``,
                    ``"maxabs"``, ``"sumabs"``, ``"abssum"``; default from the preset.
        rangescale (str, optional): ``"extrema"`` or ``"centered"``; default from the preset.
        cmap (str or matplotlib Colormap, optional): default from the preset (``"gray"``,
                    ``"seismic"``, ``"jet"``); e.g. ``"turbo"`` or ``"inferno"`` for CAMs.
        overlay (Tensor or ndarray, optional): images to blend under the heatmaps: a Tensor is
                    channel-first (``[N, C, H, W]``, ``[C, H, W]``, ``[H, W]``), a numpy array
                    channel-last (``[N, H, W, C]``, ``[H, W, C]``, ``[H, W]``); C is 1 or 3
                    (4: alpha dropped). uint8 images are used as they are, float images in
                    [0, 1] too, other floats are rescaled per image to [0, 1]. One image is
                    used for every heatmap. A map of another size is resized (bilinear) to
                    the image size before colouring.
        alpha (float): opacity of the heatmap over the image, in [0, 1]. Default: 0.6
                    (VisionHeatmaps.jl's).
        process_batch (bool): rescale the whole batch together instead of each image on its
                    own. Default: False.
        save (str or PathLike, optional): write PNG files: the path itself for one image,
                    ``<stem>_<i>.png`` for a batch.

    Returns:
        *ndarray* of dtype uint8 and shape ``[N, H, W, 3]``: one RGB image per sample.

    Examples::

        >>> expl = analyze(x, InputTimesGradient(model))
        >>> rgb = heatmap(expl)                               # red > 0, white 0, blue < 0
        >>> rgb = heatmap(expl, overlay=x, alpha=0.5, save="itg.png")
        >>> # Captum's own figure, from the same explanation (or use visualize_explanation):
        >>> from captum.attr import visualization as viz
        >>> fig, ax = viz.visualize_image_attr(expl.val[0].permute(1, 2, 0).numpy(),
        ...                                    sign="all", cmap="seismic", use_pyplot=False)
    """
    val, preset = _unpack(expl)
    check_choice("preset", preset, list(HEATMAP_PRESETS))
    default_reduce, default_scale, default_cmap = HEATMAP_PRESETS[preset]
    reduce = check_choice("reduce", default_reduce if reduce is None else reduce, REDUCTIONS)
    rangescale = check_choice("rangescale", default_scale if rangescale is None else rangescale, RANGESCALES)
    colormap = _get_cmap(default_cmap if cmap is None else cmap)
    if cmap is None and rangescale == "centered":
        # an odd number of colours puts 0.5 (a zero attribution) on the exact centre: white
        colormap = _odd_resampled(colormap)
    if not is_real(alpha) or not 0 <= float(alpha) <= 1:
        raise CaptumElfaError(f"alpha={alpha!r} is not valid; use a number in [0, 1]")

    maps = _reduce(val, reduce)
    image = None
    if overlay is not None:
        image = _prepare_overlay(overlay, maps.shape[0])
        if image.shape[1:3] != maps.shape[1:]:
            maps = _resize(maps, image.shape[1:3])
    if process_batch:
        scaled = _rangescale(maps, rangescale)
    else:
        scaled = np.stack([_rangescale(m, rangescale) for m in maps])
    rgb = colormap(scaled, bytes=True)[..., :3]
    if image is not None:
        blended = (1 - alpha) * image * 255.0 + alpha * rgb.astype(np.float64)
        rgb = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if save is not None:
        _save(rgb, save)
    return rgb


_CAPTUM_SIGN = {"attribution": "all", "sensitivity": "absolute_value"}


def visualize_explanation(
    expl: Any,
    index: int = 0,
    original_image: Optional[ArrayLike] = None,
    method: str = "heat_map",
    sign: Optional[str] = None,
    cmap: Any = None,
    use_pyplot: bool = False,
    **kwargs: Any,
) -> Tuple[Any, Any]:
    r"""Draw one sample of an :class:`~captum_elfa.Explanation` with Captum's
    ``captum.attr.visualization.visualize_image_attr``
    (``from captum.attr import visualization as viz``).

    The explanation's ``val[index]`` (channel-first) is moved to Captum's ``(H, W, C)`` layout;
    ``sign`` and ``cmap`` follow the preset unless given: attribution -> ``"all"`` with
    ``"seismic"``; sensitivity -> ``"absolute_value"`` with ``"gray"``; cam -> ``"positive"``
    (``"all"`` if the map has negative values) with ``"jet"``. ``use_pyplot`` defaults to False,
    so a ``Figure`` is returned and nothing is shown.

    Args:
        expl (captum_elfa.attr.analyzers.Explanation): the explanation.
        index (int): the sample to draw. Default: 0.
        original_image (Tensor or ndarray, optional): the input image, a channel-first Tensor
                    ``[C, H, W]`` or a channel-last array ``[H, W, C]``; needed by Captum's
                    ``"original_image"``, ``"blended_heat_map"`` and ``"masked_image"``
                    methods.
        method (str): Captum's visualisation method. Default: ``"heat_map"``.
        sign (str, optional): Captum's ``sign``; default from the preset.
        cmap (str or Colormap, optional): default from the preset.
        use_pyplot (bool): passed to Captum. Default: False.
        **kwargs: further arguments of Captum's ``visualize_image_attr`` (``outlier_perc``,
                    ``alpha_overlay``, ``show_colorbar``, ``title``, ``fig_size``,
                    ``plt_fig_axis``).

    Returns:
        2-element tuple of **figure**, **axis** (matplotlib), as Captum.

    Examples::

        >>> fig, ax = visualize_explanation(analyze(x, IntegratedGradients(model)), 0,
        ...                                original_image=x[0], method="blended_heat_map")
    """
    from captum.attr import visualization as captum_viz

    from captum_elfa.attr.analyze import Explanation

    if not isinstance(expl, Explanation):
        raise CaptumElfaError(f"expected an Explanation, got {type(expl).__name__}")
    n = expl.val.shape[0]
    if not is_int(index) or not -n <= int(index) < n:
        raise CaptumElfaError(f"index={index!r} is not valid; the explanation has {n} samples")
    attr = expl.val[index].detach().cpu().double()
    if attr.dim() == 2:
        attr = attr[None]
    if attr.dim() != 3:
        raise CaptumElfaError(
            f"visualize_image_attr draws images; val[{index}] has shape {tuple(expl.val[index].shape)}"
        )
    attr_np = attr.permute(1, 2, 0).numpy()
    if sign is None:
        if expl.heatmap == "cam":
            sign = "positive" if attr_np.min() >= 0 else "all"
        else:
            sign = _CAPTUM_SIGN[expl.heatmap]
    if cmap is None:
        cmap = HEATMAP_PRESETS[expl.heatmap][2]
    image = None
    if original_image is not None:
        if isinstance(original_image, Tensor):
            t = original_image.detach().cpu()
            image = (t.permute(1, 2, 0) if t.dim() == 3 else t).numpy()
        else:
            image = np.asarray(original_image)
    return captum_viz.visualize_image_attr(
        attr_np,
        original_image=image,
        method=method,
        sign=sign,
        cmap=cmap,
        use_pyplot=use_pyplot,
        **kwargs,
    )
