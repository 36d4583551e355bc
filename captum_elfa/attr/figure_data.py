"""The data of the image figures, computed once: the model runs here, never in
:mod:`captum_elfa.visualization`.

:func:`efam_maps`, :func:`cam_and_efam_maps` and :func:`top_channel_activations` run the model
(EFAM, Grad-CAM, a forward hook on a PCACE layer) and return plain arrays; the figures
(:func:`~captum_elfa.visualization.plot_efam`, :func:`~captum_elfa.visualization.plot_cam_vs_efam`,
:func:`~captum_elfa.visualization.plot_top_channel_maps`) take them through their ``maps``
argument and only draw. Given no ``maps``, a figure calls the function here itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, check_int

__all__ = ["EfamMaps", "CamEfamMaps", "ChannelMaps", "efam_maps", "cam_and_efam_maps", "top_channel_activations"]

FactorsArg = Union[None, str, int, Sequence[int]]


@dataclass
class EfamMaps:
    """EFAM and per-factor maps of a batch, upsampled to the image size.

    Attributes:
        efam (ndarray): ``[N, 1, H, W]`` the combined EFAM (``lfa.attribute(images)``, in [0, 1]).
        factors (ndarray or None): ``[N, k', H, W]`` the raw (signed, standardised) score maps of
                    the factors in ``factor_indices``; None when no factor was asked for.
        factor_indices (list of int): the factors of ``factors``.
        n_factors (int): the model's number of factors.
    """

    efam: np.ndarray
    factors: Optional[np.ndarray]
    factor_indices: List[int]
    n_factors: int


@dataclass
class CamEfamMaps:
    """Grad-CAM and EFAM of a batch, upsampled to the image size.

    Attributes:
        cam (ndarray): ``[N, 1, H, W]`` Grad-CAM, min-max scaled per image to [0, 1].
        efam (ndarray): ``[N, 1, H, W]`` the combined EFAM.
        targets (list of int or None): the class of each image's Grad-CAM.
    """

    cam: np.ndarray
    efam: np.ndarray
    targets: Optional[List[int]]


@dataclass
class ChannelMaps:
    """Activation maps of the top PCACE channels.

    Attributes:
        channels (list of int): the channels, highest score first.
        scores (list of float): their PCACE scores.
        maps (ndarray): ``[n, k, h, w]`` their activations at the layer's resolution.
        n_channels (int): the layer's number of channels.
    """

    channels: List[int]
    scores: List[float]
    maps: np.ndarray
    n_channels: int


def _np(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def _upsample(maps: Tensor, size: Tuple[int, ...]) -> np.ndarray:
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(maps.detach().float().cpu(), tuple(size), "bilinear")
    return _np(up)


def _minmax_per_map(maps: np.ndarray) -> np.ndarray:
    """Scale every ``[H, W]`` map of ``[..., H, W]`` to [0, 1]; a constant map becomes zeros."""
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    lo = flat.min(-1)[..., None, None]
    hi = flat.max(-1)[..., None, None]
    rng = hi - lo
    return np.where(rng > 0, (maps - lo) / np.where(rng > 0, rng, 1.0), 0.0)


def _check_images(images: Any, what: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise CaptumElfaError(f"{what}: images must be a non-empty Tensor [N, C, H, W], got {shape}")
    return images


def factor_selection(lfa: Any, factors: FactorsArg = "auto", max_factors: int = 4) -> List[int]:
    """The factor indices drawn for ``factors`` (``"auto"``: the first ``max_factors``)."""
    max_factors = check_int("max_factors", max_factors, minimum=1)
    if isinstance(factors, str) and factors == "auto":
        return list(range(min(int(lfa.n_factors_), max_factors)))
    from captum_elfa.attr._lfa_maps import factor_indices

    return list(factor_indices(factors, int(lfa.n_factors_)) or [])


def efam_maps(
    lfa: Any,
    images: Tensor,
    factors: FactorsArg = "auto",
    max_factors: int = 4,
    additional_forward_args: Any = None,
) -> EfamMaps:
    r"""EFAM and per-factor score maps of ``images``, upsampled (bilinear) to the image size.

    Args:
        lfa (LayerFactorAnalysis): the fitted model (attached to its model and layer).
        images (Tensor): ``[N, C, H, W]``.
        factors (None, "auto", "all", int or list of int): the per-factor maps; ``"auto"`` the
                    first ``max_factors``. Default: ``"auto"``.
        max_factors (int): factors of ``"auto"``. Default: 4.
        additional_forward_args (Any, optional): extra model arguments.

    Returns:
        EfamMaps: the maps.

    Examples::

        >>> maps = efam_maps(lfa, images[:4])
        >>> fig = plot_efam(lfa, images[:4], maps=maps)
    """
    images = _check_images(images, "efam_maps")
    idx = factor_selection(lfa, factors, max_factors)
    size = tuple(images.shape[2:])
    efam = _upsample(lfa.attribute(images, additional_forward_args=additional_forward_args), size)
    per = None
    if idx:
        raw = lfa.attribute(images, factors=idx, normalize=None, additional_forward_args=additional_forward_args)
        per = _upsample(raw, size)
    return EfamMaps(efam=efam, factors=per, factor_indices=idx, n_factors=int(lfa.n_factors_))


def cam_and_efam_maps(
    model: nn.Module,
    lfa: Any,
    images: Tensor,
    layer: nn.Module,
    target: Any = None,
    efam: Optional[np.ndarray] = None,
) -> CamEfamMaps:
    r"""Grad-CAM of ``layer`` (ReLU-ed, upsampled, min-max scaled per image) and EFAM of ``images``.

    Args:
        model (nn.Module): the model.
        lfa (LayerFactorAnalysis): the fitted model.
        images (Tensor): ``[N, C, H, W]``.
        layer (nn.Module): the layer of Grad-CAM; when it is ``lfa``'s layer, Grad-CAM reads it
                    with ``lfa``'s layout (``channel_dim``, tokens, ``call_index``).
        target (None, int, list of int or Tensor): the class(es); None for each image's top class.
        efam (ndarray, optional): ``[N, 1, H, W]`` an EFAM already computed (``efam_maps(...).efam``),
                    so that the layer is not run again.

    Returns:
        CamEfamMaps: the maps and the classes.

    Examples::

        >>> maps = cam_and_efam_maps(model, lfa, images[:4], model.layer4, target=281)
    """
    from captum_elfa.attr.analyze import GradCAM, analyze

    images = _check_images(images, "cam_and_efam_maps")
    layout = {}
    lay = getattr(lfa, "layout", None)
    if lay is not None and layer is getattr(lfa, "layer", None):
        # Grad-CAM reads the layer as the factor model does (channels-last, tokens, which call)
        if lay.call_index == "all":
            raise CaptumElfaError(
                "cam_and_efam_maps: the factor model pools every call of the layer (call_index='all'); "
                "Grad-CAM weights one activation: pass a layer called once, or fit with an int call_index"
            )
        layout = lay.kwargs()
    expl = analyze(images, GradCAM(model, layer, **layout), target)
    cam = _minmax_per_map(_np(expl.val.sum(1, keepdim=True)))
    if efam is None:
        efam = _upsample(lfa.attribute(images), tuple(images.shape[2:]))
    targets = None if expl.target is None else [int(t) for t in expl.target.tolist()]
    return CamEfamMaps(cam=cam, efam=np.asarray(efam, dtype=np.float64), targets=targets)


def top_channel_activations(
    pc: Any,
    images: Tensor,
    k: int = 5,
    n_images: int = 4,
    additional_forward_args: Any = None,
) -> ChannelMaps:
    r"""Activation maps of the top-``k`` PCACE channels on the first ``n_images`` images.

    The images run through ``pc``'s model once (no gradients, eval mode, model state restored);
    a forward hook on ``pc.layer`` captures the activations.

    Args:
        pc (NeuronPCACE): after ``pc.attribute(inputs, target)``.
        images (Tensor): ``[N, C, H, W]``.
        k (int): number of top channels, at most the number of channels. Default: 5.
        n_images (int): number of images. Default: 4.
        additional_forward_args (Any, optional): extra model arguments.

    Returns:
        ChannelMaps: the channels, their scores and their maps.

    Examples::

        >>> maps = top_channel_activations(pc, images, k=5)
        >>> fig = plot_top_channel_maps(pc, images, k=5, maps=maps)
    """
    from captum_elfa._capture import LayerCapture, check_activation_shape

    images = _check_images(images, "top_channel_activations")
    k = check_int("k", k, minimum=1)
    n_images = check_int("n_images", n_images, minimum=1)
    channels, scores = pc.rank_channels()
    c = int(channels.numel())
    if k > c:
        raise CaptumElfaError(f"k={k} is larger than the layer's {c} channels; choose 1 <= k <= {c}")
    x = images[:n_images]
    captured: List[Tensor] = []
    lay = getattr(pc, "layout", None)  # the PCACE object's layout: the same maps it scored
    layout_kw = {} if lay is None else lay.kwargs()
    cap = LayerCapture(
        pc.forward_func,
        pc.layer,
        lambda a, i: captured.append(check_activation_shape(a, cap.layer_name).detach().cpu().double()),
        **layout_kw,
    )
    with cap:
        cap.run(x, 0, additional_forward_args)
    acts = captured[0]
    if acts.shape[1] != c:
        raise CaptumElfaError(
            f"layer '{cap.layer_name}' gives {acts.shape[1]} channels but the PCACE scores have {c}; "
            "use the NeuronPCACE object of this layer"
        )
    top = [int(j) for j in channels[:k].tolist()]
    return ChannelMaps(
        channels=top,
        scores=[float(s) for s in scores[:k].tolist()],
        maps=acts[:, top].numpy(),
        n_channels=c,
    )
