"""Layouts of a layer's output: the channel dimension, token grids, the conversion to (N, C, H, W)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, check_int, is_int

__all__ = [
    "CHANNELS_FIRST_MODULES",
    "CallIndex",
    "LayerLayout",
    "TokenGrid",
    "check_activation_shape",
    "check_call_index",
    "resolve_channel_dim",
    "to_nchw",
]

TokenGrid = Union[None, str, Tuple[int, int]]
#: which call of a module called several times per forward pass: None (refuse more than one
#: call), an int (negative counts from the last) or ``"all"``
CallIndex = Union[None, int, str]

#: modules whose output is channels-first by construction
CHANNELS_FIRST_MODULES: Tuple[type, ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def _acts_on_last_dim(module: Optional[nn.Module], shape: Tuple[int, ...]) -> bool:
    if isinstance(module, nn.Linear):
        return shape[-1] == module.out_features
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1 and shape[-1] == module.normalized_shape[0]
    return False


def resolve_channel_dim(
    shape: Sequence[int], channel_dim: Optional[int] = None, module: Optional[nn.Module] = None, name: str = "layer"
) -> int:
    r"""The (non-negative) channel dimension of a layer output of ``shape``; see the module docstring.

    Args:
        shape (sequence of int): the output's shape, batch first.
        channel_dim (int, optional): the user's ``channel_dim`` (negative counts from the end);
                    None decides from ``module`` and ``shape`` or raises.
        module (nn.Module, optional): the hooked module.
        name (str): the layer's name for messages.

    Returns:
        int: the channel dimension, in ``1 .. len(shape) - 1``.

    Raises:
        CaptumElfaError: an invalid ``channel_dim``, or an ambiguous output with
                    ``channel_dim=None`` (the message names the shape and the fix).
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    kind = type(module).__name__ if module is not None else "module"
    if nd < 2 or nd > 5:
        raise CaptumElfaError(
            f"layer '{name}' ({kind}) output has shape {shape}; expected (N, C), (N, C, L), (N, L, C), "
            "(N, C, H, W), (N, H, W, C) or (N, C, D, H, W)"
        )
    if channel_dim is not None:
        cd = check_int("channel_dim", channel_dim, minimum=-(nd - 1), maximum=nd - 1)
        cd = cd % nd
        if cd == 0:
            raise CaptumElfaError(
                f"channel_dim={channel_dim} is the batch dimension of layer '{name}' output {shape}; "
                f"use 1 (channels first) or -1 (channels last)"
            )
        return cd
    if nd == 2 or isinstance(module, CHANNELS_FIRST_MODULES):
        return 1
    if _acts_on_last_dim(module, shape):
        what = "tokens (N, L, C)" if nd == 3 else "channels-last (N, ..., C)"
        raise CaptumElfaError(
            f"layer '{name}' is an nn.{kind}, which acts on the last dimension: its output {shape} is {what}, "
            "not channels-first; pass channel_dim=-1"
            + (" (with drop_tokens=1 for a CLS token and token_grid=(h, w) or 'auto')" if nd == 3 else "")
            + " to read the last dimension as the channels"
        )
    if nd == 3:
        raise CaptumElfaError(
            f"layer '{name}' ({kind}) output {shape} is ambiguous: (N, C, L) or tokens (N, L, C)? Pass "
            f"channel_dim=1 for {shape[1]} channels at {shape[2]} positions, or channel_dim=-1 for "
            f"{shape[2]} channels at {shape[1]} tokens (ViT: add drop_tokens=1 and token_grid='auto')"
        )
    if shape[-1] > shape[1] and shape[-2] != shape[-1]:
        raise CaptumElfaError(
            f"layer '{name}' ({kind}) output {shape} looks channels-last (N, H, W, C) with C = {shape[-1]}: "
            f"read as (N, C, H, W) it would have {shape[1]} channels. Pass channel_dim=-1 for channels-last "
            f"(ConvNeXt, Swin), or channel_dim=1 if it really has {shape[1]} channels"
        )
    return 1


def _grid(n_tokens: int, token_grid: TokenGrid, name: str, drop_tokens: int, total: int) -> Tuple[int, int]:
    if isinstance(token_grid, str):
        if token_grid != "auto":
            raise CaptumElfaError(f"token_grid={token_grid!r} is not valid; use None, 'auto' or (h, w)")
        s = math.isqrt(n_tokens)
        if s * s == n_tokens:
            return s, s
        hint = ""
        for k in range(1, 9):
            r = math.isqrt(n_tokens - k) if n_tokens > k else 0
            if r > 0 and r * r == n_tokens - k:
                hint = (
                    f"; {n_tokens - k} = {r}x{r} after {k} more prefix token(s): pass drop_tokens={drop_tokens + k}"
                    + (" (ViT's CLS token)" if drop_tokens + k == 1 else "")
                )
                break
        raise CaptumElfaError(
            f"layer '{name}' has {n_tokens} tokens after drop_tokens={drop_tokens} (of {total}), not a square "
            f"number, so token_grid='auto' cannot place them{hint}; or pass token_grid=(h, w)"
        )
    if (
        not isinstance(token_grid, (tuple, list))
        or len(token_grid) != 2
        or not all(is_int(v) and int(v) > 0 for v in token_grid)
    ):
        raise CaptumElfaError(f"token_grid={token_grid!r} is not valid; use None, 'auto' or (h, w) positive ints")
    h, w = int(token_grid[0]), int(token_grid[1])
    if h * w != n_tokens:
        raise CaptumElfaError(
            f"token_grid=({h}, {w}) holds {h * w} tokens but layer '{name}' has {n_tokens} after "
            f"drop_tokens={drop_tokens} (of {total}); the grid must hold every remaining token"
        )
    return h, w


def to_nchw(
    act: Tensor,
    channel_dim: int = 1,
    grid: TokenGrid = None,
    drop_tokens: int = 0,
    name: str = "layer",
) -> Tensor:
    r"""A layer output as ``(N, C, H, W)``: the channels in dimension 1, positions after them.

    ``(N, C)`` becomes ``(N, C, 1, 1)``; ``(N, C, L)`` (or tokens ``(N, L, C)`` with
    ``channel_dim=-1``) becomes ``(N, C, L', 1)`` with ``L' = L - drop_tokens``, or
    ``(N, C, h, w)`` with ``grid=(h, w)`` (``"auto"``: a square); channels-last
    ``(N, H, W, C)`` becomes ``(N, C, H, W)``; ``(N, C, D, H, W)`` becomes ``(N, C, D*H, W)``.
    The result may be a view of ``act``.

    Args:
        act (Tensor): the layer output, batch first.
        channel_dim (int): the channel dimension (from :func:`resolve_channel_dim`). Default: 1.
        grid (None, "auto" or (h, w)): the token grid of a 3-D output. Default: None.
        drop_tokens (int): leading tokens of a 3-D output to leave out (ViT's CLS: 1). Default: 0.
        name (str): the layer's name for messages.

    Returns:
        Tensor: ``(N, C, H, W)``.

    Examples::

        >>> to_nchw(torch.zeros(2, 197, 768), -1, grid="auto", drop_tokens=1).shape
        torch.Size([2, 768, 14, 14])
    """
    if not isinstance(act, Tensor):
        raise CaptumElfaError(
            f"layer '{name}' returned a {type(act).__name__}, not a Tensor; choose a layer whose output is a "
            "Tensor (N, C, ...) or (N, ..., C)"
        )
    if act.is_complex():
        raise CaptumElfaError(
            f"layer '{name}' output is complex ({act.dtype}); the statistics need real activations: hook a "
            "layer after the complex part, or a module returning e.g. x.abs() or torch.view_as_real(x)"
        )
    if act.dtype == torch.bool:
        raise CaptumElfaError(f"layer '{name}' output is boolean; hook a layer with numeric activations")
    nd = act.dim()
    if nd < 2 or nd > 5:
        raise CaptumElfaError(
            f"layer '{name}' output has shape {tuple(act.shape)}; expected (N, C), (N, C, L), (N, L, C), "
            "(N, C, H, W), (N, H, W, C) or (N, C, D, H, W)"
        )
    cd = channel_dim % nd
    if cd == 0:
        raise CaptumElfaError(f"channel_dim={channel_dim} is the batch dimension of layer '{name}'")
    drop = check_int("drop_tokens", drop_tokens, minimum=0)
    if nd != 3 and (drop or grid is not None):
        raise CaptumElfaError(
            f"drop_tokens/token_grid apply to token layers (N, L, C) but layer '{name}' output is "
            f"{tuple(act.shape)}; leave them at their defaults"
        )
    a = act if cd == 1 else act.movedim(cd, 1)
    if nd == 2:
        return a[:, :, None, None]
    if nd == 4:
        return a
    if nd == 5:
        n, c, d, h, w = a.shape
        return a.reshape(n, c, d * h, w)
    total = a.shape[2]
    if drop >= total:
        raise CaptumElfaError(f"drop_tokens={drop} leaves no token of the {total} of layer '{name}'")
    if drop:
        a = a[:, :, drop:]
    if grid is None:
        return a[..., None]
    h, w = _grid(a.shape[2], grid, name, drop, total)
    return a.reshape(a.shape[0], a.shape[1], h, w)


def check_call_index(call_index: CallIndex) -> CallIndex:
    """Validate ``call_index``: None, an int or ``"all"``."""
    if call_index is None or (isinstance(call_index, str) and call_index == "all"):
        return call_index
    if isinstance(call_index, str) or not is_int(call_index):
        raise CaptumElfaError(
            f"call_index={call_index!r} is not valid; use None (refuse a module called more than once per "
            "forward pass), an int (0 for the first call, -1 for the last) or 'all' (every call's output)"
        )
    return int(call_index)


@dataclass(frozen=True)
class LayerLayout:
    r"""How to read one layer's output: see the module docstring of :mod:`captum_elfa._capture`.

    Attributes:
        channel_dim (int, optional): the channel dimension, None to decide (or refuse).
        token_grid (None, "auto" or (h, w)): grid of the tokens of a 3-D output.
        drop_tokens (int): leading (prefix) tokens left out of a 3-D output.
        call_index (None, int or "all"): which call of a module called several times per forward
                    pass: None (default) refuses a module called more than once, with a message
                    naming its parent block; an int selects one call (negative counts from the
                    last: -1 is the call Captum's layer attributions use); ``"all"`` hands every
                    call's output over as its own batch of samples.
    """

    channel_dim: Optional[int] = None
    token_grid: TokenGrid = None
    drop_tokens: int = 0
    call_index: CallIndex = None

    def kwargs(self) -> Dict[str, Any]:
        """The layout as the keyword arguments of :class:`LayerCapture`, ``LayerFactorAnalysis``,
        ``NeuronPCACE`` and ``GradCAM`` (``channel_dim``, ``token_grid``, ``drop_tokens``,
        ``call_index``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __post_init__(self) -> None:
        if self.channel_dim is not None:
            check_int("channel_dim", self.channel_dim, minimum=-4, maximum=4)
        check_int("drop_tokens", self.drop_tokens, minimum=0)
        check_call_index(self.call_index)
        g = self.token_grid
        if g is not None and not (isinstance(g, str) and g == "auto"):
            if not (isinstance(g, (tuple, list)) and len(g) == 2 and all(is_int(v) and int(v) > 0 for v in g)):
                raise CaptumElfaError(f"token_grid={g!r} is not valid; use None, 'auto' or (h, w) positive ints")


def check_activation_shape(act: Tensor, layer_name: str) -> Tensor:
    """Return a channels-first activation as (N, C, H, W) (see :func:`to_nchw`; refuses complex)."""
    if isinstance(act, Tensor) and act.dim() in (2, 4) and not act.is_complex():
        return act if act.dim() == 4 else act[:, :, None, None]
    return to_nchw(act, 1, name=layer_name)
