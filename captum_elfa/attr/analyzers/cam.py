"""The CAM family: Grad-CAM on any layer layout and EFAM, both upsampled to the input.

Both read the layer through :class:`~captum_elfa._capture.LayerCapture`, so they take the same
layouts as ELFA: ``channel_dim`` (channels-last and token layers), ``token_grid`` and
``drop_tokens`` (a ViT block on its patch grid) and ``call_index`` (modules called several
times per forward pass). The layer-sized map is put back in the layer's own spatial layout
(``(N, 1, L)`` for a 1-D layer, ``(N, 1, D, H, W)`` for a 3-D one, ``(N, 1, h, w)`` for tokens on
their grid) and upsampled to the input with ``LayerAttribution.interpolate``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_elfa._capture import (
    CallIndex,
    LayerCapture,
    LayerLayout,
    TokenGrid,
    check_call_index,
    parent_block,
    resolve_channel_dim,
    to_nchw,
)
from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.analyzers._checks import _check_interpolate_mode, _check_model, _grad_leaf, _upsample
from captum_elfa.attr.analyzers.base import Analyzer

__all__ = ["GradCAM", "EFAM", "layer_layout_map"]


def layer_layout_map(maps: Tensor, raw_shape: Sequence[int], channel_dim: int, layout: LayerLayout) -> Tensor:
    r"""Put ``(N, k, H', W')`` maps (from :func:`~captum_elfa._capture.to_nchw` activations) back
    in the spatial layout of the layer output of shape ``(N,) + raw_shape``.

    ``(N, C)`` gives ``(N, k)``; ``(N, C, L)`` and tokens without a grid ``(N, k, L')``;
    ``(N, C, D, H, W)`` (or channels-last) ``(N, k, D, H, W)``; images and tokens on their grid
    keep ``(N, k, h, w)``.

    Args:
        maps (Tensor): ``(N, k, H', W')``.
        raw_shape (sequence of int): the layer output's shape without the batch dimension.
        channel_dim (int): the resolved (non-negative) channel dimension of the output.
        layout (LayerLayout): the layout used to read the output.

    Returns:
        Tensor: the maps in the layer's spatial layout.
    """
    nd = len(raw_shape) + 1
    n, k = maps.shape[0], maps.shape[1]
    spatial = [int(raw_shape[i - 1]) for i in range(1, nd) if i != channel_dim]
    if nd == 2:
        return maps.reshape(n, k)
    if nd == 3 and layout.token_grid is None:
        return maps.reshape(n, k, spatial[0] - layout.drop_tokens)
    if nd == 5:
        return maps.reshape(n, k, *spatial)
    return maps


class GradCAM(Analyzer):
    r"""Grad-CAM upsampled to the input size with ``LayerAttribution.interpolate``. Heatmap
    preset ``"cam"``.

    The map is Captum's ``LayerGradCam``: the gradients of the selected output with respect
    to the layer's activation are averaged over the positions, the activation is weighted by
    them channel by channel and summed (then a ReLU). It is computed on the activation read
    through :class:`~captum_elfa._capture.LayerCapture`, so any layout works: channels-last
    outputs (ConvNeXt, Swin) with ``channel_dim=-1`` (an output that looks channels-last is
    refused without it, never averaged over the wrong dimensions), ViT token layers with
    ``channel_dim=-1, drop_tokens=1, token_grid="auto"``, 1-D and 3-D layers. For a channels-first
    layer called once it gives Captum's ``LayerGradCam`` numbers.

    ``val`` is the upsampled map ``[N, 1, H, W]``; ``extras["layer_attribution"]`` keeps the
    layer-sized map ``[N, 1, h, w]`` (in the layer's own spatial layout).

    Args:
        model (nn.Module or Callable): the model (its forward function).
        layer (nn.Module): the layer whose activations are weighted.
        relu_attributions (bool): apply a ReLU to the map, as the Grad-CAM paper and
                    ExplainableAI.jl do (Captum's own default is False). Default: True.
        interpolate_mode (str, optional): ``torch.nn.functional.interpolate`` mode; None picks
                    ``"bilinear"`` for images (``"linear"`` / ``"trilinear"`` for 1-D / 3-D).
        channel_dim (int, optional): the channel dimension of the layer output, as for
                    :class:`~captum_elfa.LayerFactorAnalysis` (None: decided from the module, or
                    refused when ambiguous). Default: None.
        token_grid (None, "auto" or (h, w)): the grid of a token layer's tokens (needed to
                    upsample a token map onto an image). Default: None.
        drop_tokens (int): leading tokens left out (ViT's CLS token: 1). Default: 0.
        call_index (None or int): which call of a module run several times per forward pass
                    (ResNet's ``BasicBlock.relu``): None (default) refuses such a module with a
                    message naming its parent block; ``-1`` is the last call, the one Captum's
                    ``LayerGradCam`` uses. ``"all"`` is not available: Grad-CAM explains one
                    activation.

    Examples::

        >>> expl = analyze(x, GradCAM(model, model.layer4))
        >>> expl.val.shape[2:] == x.shape[2:]
        True
        >>> expl = analyze(x, GradCAM(resnet, resnet.layer1[0].relu, call_index=-1))
        >>> expl = analyze(x, GradCAM(vit, vit.encoder.layers[1], channel_dim=-1, drop_tokens=1,
        ...                           token_grid="auto"))
    """

    name = "GradCAM"
    preset = "cam"

    def __init__(
        self,
        model: Callable,
        layer: nn.Module,
        relu_attributions: bool = True,
        interpolate_mode: Optional[str] = None,
        *,
        channel_dim: Optional[int] = None,
        token_grid: TokenGrid = None,
        drop_tokens: int = 0,
        call_index: CallIndex = None,
    ) -> None:
        self.model = _check_model(model, "GradCAM")
        if not isinstance(layer, nn.Module):
            raise CaptumElfaError(f"GradCAM: layer must be a torch.nn.Module, got {type(layer).__name__}")
        if isinstance(self.model, nn.Module) and not any(m is layer for m in self.model.modules()):
            names = [n for n, _ in self.model.named_modules() if n][:6]
            raise CaptumElfaError(
                f"GradCAM: layer {type(layer).__name__} is not a submodule of the model; "
                f"pass one of its modules, e.g. {', '.join('model.' + n for n in names)}"
            )
        if check_call_index(call_index) == "all":
            raise CaptumElfaError(
                "GradCAM: call_index='all' is not available (Grad-CAM weights one activation); pass "
                "an int (0 for the first call, -1 for the last, as Captum's LayerGradCam) or None"
            )
        self.layer = layer
        self.layout = LayerLayout(channel_dim, token_grid, drop_tokens, call_index)
        self.relu_attributions = bool(relu_attributions)
        self.interpolate_mode = _check_interpolate_mode(interpolate_mode)

    def _layer_map(
        self, inputs: Tensor, target: Optional[Tensor], additional_forward_args: Optional[Tuple[Any, ...]]
    ) -> Tensor:
        lay = self.layout
        got: List[Tuple[Tensor, Tensor]] = []
        # every call is collected in the hook (the tensors themselves, which the model's output
        # depends on, and their values before any later in-place op); the call is chosen here
        cap = LayerCapture(
            self.model,
            self.layer,
            lambda a, i: got.append((a, a.detach().clone())),
            grad=True,
            channel_dim=lay.channel_dim,
            token_grid=lay.token_grid,
            drop_tokens=lay.drop_tokens,
            call_index="all",
            layout=False,  # the raw output: the one the model's output depends on
            what="GradCAM",
        )
        with cap:  # the gradient inside: the guard restores the buffers (BatchNorm statistics) on exit
            output = cap.run(_grad_leaf(inputs), 0, additional_forward_args)
            name = cap.layer_name
            calls, ci = len(got), lay.call_index
            if ci is None and calls > 1:
                raise CaptumElfaError(
                    f"layer '{name}' is called {calls} times per forward pass "
                    f"({parent_block(self.model, self.layer)}); pass call_index=0..{calls - 1}, -1 for the "
                    "last call (the one Captum's LayerGradCam uses)"
                )
            k = 0 if ci is None else int(ci)
            if not -calls <= k < calls:
                raise CaptumElfaError(
                    f"call_index={k} is not valid for layer '{name}', which is called {calls} time(s) per forward "
                    f"pass; use 0..{calls - 1} or -1 (the last call)"
                )
            out, raw_values = got[k]
            cd = resolve_channel_dim(out.shape, lay.channel_dim, self.layer, name)
            if not isinstance(output, Tensor):
                raise CaptumElfaError(f"GradCAM: the model returned a {type(output).__name__}, expected a Tensor")
            if not out.requires_grad:
                raise CaptumElfaError(f"GradCAM: layer '{name}' output does not depend on anything that requires grad")
            with torch.enable_grad():  # also inside Captum's NoiseTunnel, which runs under no_grad
                if target is None:
                    selected = output.reshape(output.shape[0], -1).sum(1)
                else:
                    selected = output.gather(1, target.to(output.device).view(-1, 1))[:, 0]
                (raw_grads,) = torch.autograd.grad(selected.sum(), out, allow_unused=True)
            if raw_grads is None:
                raw_grads = torch.zeros_like(out)
        grads = to_nchw(raw_grads, cd, lay.token_grid, lay.drop_tokens, name)
        values = to_nchw(raw_values, cd, lay.token_grid, lay.drop_tokens, name)
        flat = grads.reshape(grads.shape[0], -1)
        dead = (~flat.any(1)).nonzero().flatten().tolist()  # one device sync, not one per image
        if dead:
            warnings.warn(
                f"GradCAM: the gradient of the selected output with respect to layer '{name}' is 0 at every "
                f"position it maps, for {len(dead)} of {flat.shape[0]} input(s) (rows {dead[:8]}"
                f"{' ...' if len(dead) > 8 else ''}): the output does not depend on these maps, so their "
                "Grad-CAM is 0 and says nothing (a ViT's last block, whose patch tokens never reach the "
                "head, only its CLS token does; a head initialised at 0; a ReLU dead on the whole image). "
                "Choose an earlier layer, e.g. the block before or the last block's ln_1",
                stacklevel=4,
            )
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * values).sum(dim=1, keepdim=True)
        if self.relu_attributions:
            cam = torch.relu(cam)
        return layer_layout_map(cam.detach(), tuple(out.shape[1:]), cd, lay)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        layer_map = self._layer_map(inputs.detach(), target, additional_forward_args)
        if extras is not None:
            extras["layer_attribution"] = layer_map.detach()
        return _upsample(layer_map, inputs, self.interpolate_mode, "GradCAM")

    def __repr__(self) -> str:
        return f"GradCAM(layer={type(self.layer).__name__}, relu_attributions={self.relu_attributions})"


class EFAM(Analyzer):
    r"""The Essential Feature Attribution Map of a fitted
    :class:`~captum_elfa.LayerFactorAnalysis`, upsampled to the input size. Heatmap preset
    ``"cam"``. The map does not depend on the output selection (the factors summarise the
    layer), but ``Explanation.output``/``target`` still report the model's top output.

    ``val`` is ``[N, 1, H, W]`` (``[N, k', H, W]`` for a list of factors);
    ``extras["layer_attribution"]`` keeps the layer-sized map, in the layer's own spatial layout.

    The layout (``channel_dim``, ``token_grid``, ``drop_tokens``, ``call_index``) is the one
    ``lfa`` was built with (``lfa.layout``), as for :class:`GradCAM`: a ViT block with
    ``token_grid`` set upsamples onto the image like a conv map; a 1-D or 3-D layer gives a
    ``(N, 1, L)`` or ``(N, 1, D, H, W)`` map upsampled to 1-D or 3-D inputs. A token layer
    without ``token_grid`` cannot be upsampled onto an image and is refused.

    An ``lfa`` built with ``call_index="all"`` (fitted on every call of a module run several
    times per forward pass) maps one call at a time: pass ``call_index`` here to choose it.

    Args:
        lfa (LayerFactorAnalysis): a fitted layer factor analysis; its ``forward_func`` is the
                    model.
        factors (None, "all" or list of int): passed to ``lfa.attribute``. Default: None (the
                    combined EFAM).
        normalize (str or None): per-image normalisation passed to ``lfa.attribute``
                    (None: no normalisation). Default: ``"max_min"``.
        interpolate_mode (str, optional): as for :class:`GradCAM`.
        call_index (int, optional): for an ``lfa`` with ``call_index="all"`` only (and then
                    required): the call whose maps are shown (negative counts from the last).
                    Default: None.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer3).fit(images)
        >>> expl = analyze(x, EFAM(lfa))
        >>> lfa = LayerFactorAnalysis(resnet, resnet.layer1[0].relu, call_index="all").fit(images)
        >>> expl = analyze(x, EFAM(lfa, call_index=-1))   # the maps of the block's last ReLU
    """

    name = "EFAM"
    preset = "cam"

    def __init__(
        self,
        lfa: Any,
        factors: Any = None,
        normalize: Optional[str] = "max_min",
        interpolate_mode: Optional[str] = None,
        *,
        call_index: Optional[int] = None,
    ) -> None:
        if (
            isinstance(lfa, Analyzer)
            or not callable(getattr(lfa, "attribute", None))
            or not callable(getattr(lfa, "forward_func", None))
        ):
            raise CaptumElfaError(f"EFAM needs a fitted captum_elfa.LayerFactorAnalysis, got {type(lfa).__name__}")
        if getattr(lfa, "loadings_", None) is None:
            raise CaptumElfaError("EFAM needs a fitted LayerFactorAnalysis; call lfa.fit(inputs) first")
        self.lfa = lfa
        self.model = lfa.forward_func
        self.factors = factors
        self.normalize = normalize
        self.interpolate_mode = _check_interpolate_mode(interpolate_mode)
        layout = getattr(lfa, "layout", None)
        every_call = isinstance(layout, LayerLayout) and layout.call_index == "all"
        if call_index is not None:
            if isinstance(call_index, str) or check_call_index(call_index) is None:
                raise CaptumElfaError(f"EFAM: call_index={call_index!r} is not valid; pass an int")
            if not every_call:
                raise CaptumElfaError(
                    "EFAM: call_index applies to a LayerFactorAnalysis built with call_index='all'; this one "
                    f"reads call_index={getattr(layout, 'call_index', None)!r} already: leave call_index=None"
                )
        elif every_call:
            raise CaptumElfaError(
                "EFAM: the LayerFactorAnalysis was fitted on every call of its layer (call_index='all'); "
                "pass EFAM(lfa, call_index=k) with the call to map (0 for the first, -1 for the last)"
            )
        self.call_index = call_index

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        n = inputs.shape[0]
        shapes: List[Tuple[int, ...]] = []
        layer = getattr(self.lfa, "layer", None)
        handle = (
            layer.register_forward_hook(
                lambda m, i, o: shapes.append(tuple(o.shape[1:])) if isinstance(o, Tensor) else None
            )
            if isinstance(layer, nn.Module)
            else None
        )
        try:
            layer_map = self.lfa.attribute(
                inputs.detach(),
                factors=self.factors,
                normalize=self.normalize,
                additional_forward_args=additional_forward_args,
                batch_size=n,  # one batch: with call_index='all' the maps are call after call
            )
        finally:
            if handle is not None:
                handle.remove()
        k = 0
        layout = getattr(self.lfa, "layout", None)
        if isinstance(layout, LayerLayout) and isinstance(layout.call_index, int):
            k = layout.call_index
        if self.call_index is not None:
            calls = layer_map.shape[0] // n
            k = self.call_index
            if not -calls <= k < calls:
                raise CaptumElfaError(
                    f"EFAM: call_index={k} is not valid; the layer is called {calls} time(s) per forward pass "
                    f"(use 0..{calls - 1} or -1 for the last call)"
                )
            layer_map = layer_map.reshape((calls, n) + tuple(layer_map.shape[1:]))[k]
        if shapes:
            shapes = [shapes[k if -len(shapes) <= k < len(shapes) else 0]]
        layout = getattr(self.lfa, "layout", None)
        if isinstance(layout, LayerLayout) and shapes and isinstance(layer, nn.Module):
            raw = shapes[0]
            cd = resolve_channel_dim((1,) + raw, layout.channel_dim, layer, "layer")
            layer_map = layer_layout_map(layer_map, raw, cd, layout)
        if extras is not None:
            extras["layer_attribution"] = layer_map.detach()
        return _upsample(layer_map, inputs, self.interpolate_mode, "EFAM")
