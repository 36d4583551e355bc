"""Everything that touches the user's model: one guard, the hooks, the batches, the layouts.

Every entry point of captum_elfa (ELFA, PCACE, ``analyze``, the faithfulness curves,
``compare_layers``, inversion and activation maximisation) runs the model through this module:

- :func:`model_guard` finds the model, puts it in eval mode (optionally freezing
  ``requires_grad``) and restores the training flags, the ``requires_grad`` flags and every
  buffer (BatchNorm running statistics included) on exit, also when a batch raises or on
  ``KeyboardInterrupt``.
- :class:`LayerCapture` hooks one layer, or several layers (``{name: layer}``) in one pass, and
  hands each layer's output, converted to ``(N, C, H, W)`` (:func:`to_nchw`), to a callback.
- :func:`iter_batches` / :func:`iter_batches_with_args` cut the inputs, and the per-sample Tensors
  of ``additional_forward_args``, into batches; :meth:`LayerCapture.run` moves them to the
  model's device.

Layouts (``channel_dim``): a layer's output is read as ``N`` images of ``C`` channels at some
positions. ``channel_dim`` says which dimension holds the channels: ``1`` for ``(N, C)``,
``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``; ``-1`` for channels-last ``(N, H, W, C)``
(ConvNeXt's Linear layers, Swin) and tokens ``(N, L, C)`` (ViT). With ``channel_dim=None`` (the
default) it is ``1`` for 2-D outputs and for the outputs of channels-first modules (``ConvNd``,
``BatchNormNd``, ``GroupNorm``, ``InstanceNormNd``, pooling); any other 3-D output, any output of
an ``nn.Linear``/``nn.LayerNorm`` acting on the last dimension, and any 4-D/5-D output that looks
channels-last (its last dimension larger than dimension 1 and different from the one before it)
is refused with a message that names ``channel_dim``: a layout is never guessed silently.
Tokens: ``drop_tokens`` leading tokens (``1`` for ViT's CLS token) are left out and
``token_grid=(h, w)`` (or ``"auto"`` for a square number of tokens) puts the remaining tokens on
their patch grid, so that a ViT block gives ``(N, C, 14, 14)`` maps like a conv layer. Without a
grid the tokens become ``(N, C, L, 1)``. A 3-D volume ``(N, C, D, H, W)`` becomes
``(N, C, D*H, W)`` (every voxel a position; reshape maps back with ``.view(N, k, D, H, W)``).

Modules called several times per forward pass (ResNet's ``BasicBlock.relu``): ``call_index``
chooses the call whose output is captured; the default ``-1`` is the last call, what Captum's
layer attributions (``LayerGradCam``) use.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_elfa._validation import CaptumElfaError, check_int, is_int

Inputs = Union[Tensor, Iterable]
TokenGrid = Union[None, str, Tuple[int, int]]

__all__ = [
    "LayerCapture",
    "LayerLayout",
    "model_guard",
    "find_model",
    "to_nchw",
    "resolve_channel_dim",
    "iter_batches",
    "iter_batches_with_args",
    "split_additional_args",
    "model_device",
    "format_additional_args",
    "layer_name",
    "check_activation_shape",
]

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


# -- model discovery and the guard -------------------------------------------------------------
def _contains(root: nn.Module, layers: Sequence[nn.Module]) -> bool:
    mods = {id(m) for m in root.modules()}
    return all(id(layer) in mods for layer in layers)


def find_model(forward_func: Any, layers: Sequence[nn.Module] = ()) -> Optional[nn.Module]:
    """The ``nn.Module`` that ``forward_func`` runs, or None if it cannot be found.

    In this order: ``forward_func`` itself if it is an ``nn.Module``; the owner of a bound method
    (``model.forward``); the function of a ``functools.partial``; and for a plain function or a
    lambda, the ``nn.Module`` among the variables it closes over or the globals it names that
    contains every one of ``layers`` (the largest such module).
    """
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    if isinstance(forward_func, functools.partial):
        return find_model(forward_func.func, layers)
    candidates: List[nn.Module] = []
    for cell in getattr(forward_func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, nn.Module):
            candidates.append(value)
    code = getattr(forward_func, "__code__", None)
    glob = getattr(forward_func, "__globals__", None)
    if code is not None and isinstance(glob, dict):
        for name in code.co_names:
            value = glob.get(name)
            if isinstance(value, nn.Module):
                candidates.append(value)
    fitting = [c for c in candidates if _contains(c, layers)] if layers else candidates
    if not fitting:
        return None
    return max(fitting, key=lambda m: sum(1 for _ in m.modules()))


def _guarded_modules(forward_func: Any, layers: Sequence[nn.Module], stacklevel: int) -> List[nn.Module]:
    root = find_model(forward_func, layers)
    roots: List[nn.Module] = [root] if root is not None else []
    if root is None and layers:
        warnings.warn(
            f"forward_func is a {type(forward_func).__name__} and captum_elfa cannot find the model it "
            "runs: only the hooked layers' own modules are put in eval mode and restored (BatchNorm or "
            "Dropout elsewhere in the model run in their current mode). Pass the model itself "
            "(an nn.Module) or a bound method such as model.forward as forward_func",
            UserWarning,
            stacklevel=stacklevel,
        )
    roots.extend(layers)
    mods: Dict[int, nn.Module] = {}
    for r in roots:
        for m in r.modules():
            mods[id(m)] = m
    return list(mods.values())


@contextmanager
def model_guard(
    forward_func: Any,
    layers: Union[None, nn.Module, Sequence[nn.Module]] = None,
    *,
    eval_mode: bool = True,
    freeze_grad: bool = False,
    what: str = "captum_elfa",
    stacklevel: int = 3,
) -> Iterator[List[nn.Module]]:
    r"""Run the model in eval mode and give it back exactly as it was.

    The model is found by :func:`find_model`; if it cannot be (a plain function hiding the
    model), the modules of ``layers`` are guarded and a ``UserWarning`` says what to pass. On
    entry every guarded module is put in eval mode (a ``UserWarning`` if the model was in
    training mode: dropout is off and batch norm uses its running statistics) and, with
    ``freeze_grad``, every parameter's ``requires_grad`` is set to False. On exit, whatever
    happened (an exception in a batch, ``KeyboardInterrupt``), the training flag of every module,
    the ``requires_grad`` flag of every parameter and the value (and identity) of every buffer
    are restored, so BatchNorm's running statistics are unchanged even if some forward ran in
    training mode.

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layers (nn.Module or sequence of nn.Module, optional): the hooked layers (used to find
                    the model behind a plain function, and always guarded).
        eval_mode (bool): put the modules in eval mode. Default: True.
        freeze_grad (bool): set ``requires_grad=False`` on every parameter for the run (the
                    inputs of an optimisation keep theirs). Default: False.
        what (str): the name of the caller for the training-mode warning.
        stacklevel (int): ``stacklevel`` of the warnings.

    Yields:
        list of nn.Module: the guarded modules.

    Examples::

        >>> with model_guard(model):
        ...     out = model(x)     # eval mode; flags and BatchNorm statistics restored afterwards
    """
    if layers is None:
        layer_list: List[nn.Module] = []
    elif isinstance(layers, nn.Module):
        layer_list = [layers]
    else:
        layer_list = list(layers)
    mods = _guarded_modules(forward_func, layer_list, stacklevel + 2)
    training = [(m, m.training) for m in mods]
    params: Dict[int, nn.Parameter] = {}
    buffers: List[Tuple[nn.Module, str, Tensor, Tensor]] = []
    for m in mods:
        for p in m.parameters(recurse=False):
            params[id(p)] = p
        for name, b in m.named_buffers(recurse=False):
            buffers.append((m, name, b, b.detach().clone()))
    requires_grad = [(p, p.requires_grad) for p in params.values()]
    root = find_model(forward_func, layer_list)
    if eval_mode and root is not None and root.training:
        warnings.warn(
            f"{type(root).__name__} is in training mode; {what} runs it in eval mode (dropout off, "
            "batch-norm running statistics) and restores training mode afterwards",
            UserWarning,
            stacklevel=stacklevel,
        )
    try:
        if eval_mode:
            for m in mods:
                m.eval()
        if freeze_grad:
            for p, flag in requires_grad:
                if flag:
                    p.requires_grad_(False)
        yield mods
    finally:
        for m, flag in training:
            if m.training != flag:
                m.train(flag)
        for p, flag in requires_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        with torch.no_grad():
            for m, name, ref, saved in buffers:
                if m._buffers.get(name) is not ref:
                    m._buffers[name] = ref
                if ref.shape == saved.shape:
                    ref.copy_(saved)


# -- layouts -------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class LayerLayout:
    r"""How to read one layer's output: see the module docstring.

    Attributes:
        channel_dim (int, optional): the channel dimension, None to decide (or refuse).
        token_grid (None, "auto" or (h, w)): grid of the tokens of a 3-D output.
        drop_tokens (int): leading (prefix) tokens left out of a 3-D output.
        call_index (int): which call of a module called several times per forward pass
                    (negative counts from the last; default -1, the last call, as Captum).
    """

    channel_dim: Optional[int] = None
    token_grid: TokenGrid = None
    drop_tokens: int = 0
    call_index: int = -1

    def __post_init__(self) -> None:
        if self.channel_dim is not None:
            check_int("channel_dim", self.channel_dim, minimum=-4, maximum=4)
        check_int("drop_tokens", self.drop_tokens, minimum=0)
        check_int("call_index", self.call_index)
        g = self.token_grid
        if g is not None and not (isinstance(g, str) and g == "auto"):
            if not (isinstance(g, (tuple, list)) and len(g) == 2 and all(is_int(v) and int(v) > 0 for v in g)):
                raise CaptumElfaError(f"token_grid={g!r} is not valid; use None, 'auto' or (h, w) positive ints")


def check_activation_shape(act: Tensor, layer_name: str) -> Tensor:
    """Return a channels-first activation as (N, C, H, W) (see :func:`to_nchw`; refuses complex)."""
    if isinstance(act, Tensor) and act.dim() in (2, 4) and not act.is_complex():
        return act if act.dim() == 4 else act[:, :, None, None]
    return to_nchw(act, 1, name=layer_name)


# -- batches -----------------------------------------------------------------------------------------
def format_additional_args(additional_forward_args: Any) -> tuple:
    """Return ``additional_forward_args`` as a tuple, Captum's convention."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _first_tensor(batch: Any, index: int) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) > 0 and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        raise CaptumElfaError(
            f"batch {index} is a dict with keys {sorted(batch)[:5]}; pass an iterable yielding "
            "Tensors or (inputs, targets, ...) tuples, e.g. (b['image'] for b in loader)"
        )
    if type(batch).__module__ == "numpy":
        raise CaptumElfaError(
            f"batch {index} is a numpy {type(batch).__name__}; convert it, e.g. torch.from_numpy(b).float()"
        )
    raise CaptumElfaError(
        f"batch {index} is a {type(batch).__name__}; expected a Tensor or a tuple/list whose "
        "first element is the input Tensor (as a DataLoader yields (x, y) pairs)"
    )


def check_input_tensor(x: Tensor, what: str = "inputs") -> Tensor:
    """Refuse boolean and uint8 inputs with the conversion to use (other integer dtypes, e.g.
    token ids, pass)."""
    if x.dtype == torch.uint8:
        raise CaptumElfaError(
            f"{what} has dtype torch.uint8 (raw image bytes); models take floating-point images: convert, "
            "e.g. x.float() / 255 (then normalise as the model expects)"
        )
    if x.dtype == torch.bool:
        raise CaptumElfaError(f"{what} has dtype torch.bool; convert it, e.g. x.float()")
    return x


def _check_inputs_type(inputs: Any) -> None:
    if type(inputs).__module__ == "numpy":
        raise CaptumElfaError(
            f"inputs is a numpy {type(inputs).__name__}; convert it, e.g. torch.from_numpy(x).float() "
            "(or torch.as_tensor(x, dtype=torch.float32))"
        )
    if isinstance(inputs, (str, bytes)) or not (isinstance(inputs, (Tensor, Iterable))):
        raise CaptumElfaError(
            f"inputs must be a Tensor, an iterable of Tensors or a DataLoader, got {type(inputs).__name__}"
        )
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise CaptumElfaError(
                f"inputs is an empty Tensor of shape {tuple(inputs.shape)}; "
                "expected at least one sample along dimension 0"
            )
        check_input_tensor(inputs)


def iter_batches(inputs: Inputs, batch_size: int = 64) -> Iterator[Tensor]:
    """Yield input batches from a Tensor, an iterable of Tensors or a DataLoader.

    A Tensor is cut into chunks of ``batch_size`` samples along its first dimension. Items of
    an iterable that are tuples or lists (a DataLoader yielding ``(x, y, ...)``) give their
    first element. The arguments are checked at the call, before any batch is drawn: numpy
    arrays, uint8/bool Tensors and ``batch_size < 1`` raise ``CaptumElfaError``.
    """
    check_int("batch_size", batch_size, minimum=1)
    _check_inputs_type(inputs)
    return (b for b, _ in iter_batches_with_args(inputs, batch_size, None))


def split_additional_args(extra: tuple, n_total: Optional[int], start: int, stop: int) -> tuple:
    """The per-sample rule: a top-level Tensor of ``extra`` whose first dimension equals
    ``n_total`` (the number of inputs, known when the inputs are one Tensor) is sliced
    ``[start:stop]`` with the inputs; everything else is passed unchanged to every batch."""
    if n_total is None or (start == 0 and stop == n_total):
        return extra
    return tuple(a[start:stop] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n_total else a for a in extra)


def iter_batches_with_args(
    inputs: Inputs, batch_size: int = 64, additional_forward_args: Any = None
) -> Iterator[Tuple[Tensor, tuple]]:
    r"""Yield ``(batch, additional_args)`` pairs: :func:`iter_batches` with the per-sample
    Tensors of ``additional_forward_args`` cut with the batches.

    The rule: when ``inputs`` is one Tensor of ``N`` samples, every top-level Tensor of
    ``additional_forward_args`` whose first dimension is ``N`` is per-sample and sliced with the
    inputs; other arguments (and all of them when ``inputs`` is a DataLoader or an iterable,
    whose length is unknown) go unchanged to every batch. A shared argument whose first
    dimension happens to be ``N`` is therefore split too: pass it another way (e.g. in a
    closure) or use ``batch_size >= N``.

    Args:
        inputs (Tensor, iterable of Tensors or DataLoader): the inputs.
        batch_size (int): chunk size for a Tensor. Default: 64.
        additional_forward_args (Any, optional): extra model arguments, as in Captum.

    Yields:
        (Tensor, tuple): a batch and its extra arguments.
    """
    check_int("batch_size", batch_size, minimum=1)
    _check_inputs_type(inputs)
    extra = format_additional_args(additional_forward_args)

    def gen() -> Iterator[Tuple[Tensor, tuple]]:
        if isinstance(inputs, Tensor):
            n = int(inputs.shape[0])
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                yield inputs[start:stop], split_additional_args(extra, n, start, stop)
            return
        for i, batch in enumerate(inputs):
            yield _first_tensor(batch, i), extra

    return gen()


def model_device(forward_func: Callable, layer: Optional[nn.Module] = None) -> Optional[torch.device]:
    """The device of the model's first parameter or buffer (``None`` if it has none)."""
    for mod in (find_model(forward_func, [layer] if layer is not None else []), layer):
        if isinstance(mod, nn.Module):
            for t in mod.parameters():
                return t.device
            for b in mod.buffers():
                return b.device
    return None


def layer_name(root: Any, layer: nn.Module) -> str:
    """``layer``'s dotted path in the model behind ``root`` (its class name if not found)."""
    model = find_model(root, [layer])
    if isinstance(model, nn.Module):
        for name, mod in model.named_modules():
            if mod is layer:
                return name or type(layer).__name__
    return type(layer).__name__


_layer_name = layer_name  # older name, kept for callers


def _valid_layer_examples(model: nn.Module, limit: int = 6) -> str:
    names = [n for n, _ in model.named_modules() if n][:limit]
    return ", ".join(f"model.{n}" for n in names) if names else "the model itself"


def _move(x: Any, device: Optional[torch.device]) -> Any:
    if device is not None and isinstance(x, Tensor) and x.device != device:
        return x.to(device, non_blocking=True)
    return x


# -- capture -------------------------------------------------------------------------------------------
class _StopForward(BaseException):
    """Raised by a hook to end a forward pass once every hooked layer has delivered (a
    BaseException, so that a model's ``except Exception`` does not swallow it)."""


class LayerCapture:
    r"""Context manager that hooks one or several layers and runs ``forward_func`` batch by batch.

    Inside the ``with`` block, :meth:`run` feeds one batch through the model (moved, with the
    Tensors of its extra arguments, to the model's device) and hands each hooked layer's output,
    converted to ``(N, C, H, W)`` by its :class:`LayerLayout`, to ``on_output``. For a single
    layer ``on_output(activation, batch_index)`` is called; for ``layer={name: module}`` it is
    ``on_output(name, activation, batch_index)``. The call happens inside the layer's forward
    hook, before any later in-place operation (a ``ReLU(inplace=True)``) can change the tensor;
    only for the first batch of a module called several times with a negative ``call_index``
    is the output copied and handed over after the forward pass (then the number of calls is
    known). The model is guarded by :func:`model_guard` for the whole block.

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layer (nn.Module or dict of str to nn.Module): the layer(s) whose output is captured.
        on_output (Callable): see above.
        eval_mode (bool): run the model in eval mode (warning if it was in training mode).
                    Default: True.
        grad (bool): run with autograd enabled. Default: False (``torch.no_grad``).
        channel_dim, token_grid, drop_tokens, call_index: the layout (see :class:`LayerLayout`
                    and the module docstring); each may be one value for every layer or a dict
                    by layer name. Defaults: None (decided or refused), None, 0, -1 (last call).
        freeze_grad (bool): ``requires_grad=False`` on every parameter for the run. Default: False.
        layout (bool): convert the outputs to ``(N, C, H, W)``; False hands the raw output
                    (still refusing non-Tensor outputs). Default: True.
        what (str): the caller's name for the training-mode warning.
        stop_early (bool): from the second batch on, end the forward pass as soon as every
                    hooked layer has delivered its call (the rest of the network is not run;
                    :meth:`run` then returns None). The first batch always runs to the end, so
                    the number of calls of each layer is known and checked there. For callers
                    that need only the activations (ELFA's fit). Default: False.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Union[nn.Module, Mapping[str, nn.Module]],
        on_output: Callable[..., None],
        eval_mode: bool = True,
        grad: bool = False,
        *,
        channel_dim: Union[None, int, Mapping[str, Optional[int]]] = None,
        token_grid: Union[TokenGrid, Mapping[str, TokenGrid]] = None,
        drop_tokens: Union[int, Mapping[str, int]] = 0,
        call_index: Union[int, Mapping[str, int]] = -1,
        freeze_grad: bool = False,
        layout: bool = True,
        what: str = "captum_elfa",
        stop_early: bool = False,
    ) -> None:
        if not callable(forward_func):
            raise CaptumElfaError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self._single = isinstance(layer, nn.Module)
        if self._single:
            assert isinstance(layer, nn.Module)
            items = [(layer_name(forward_func, layer), layer)]
        elif isinstance(layer, Mapping):
            items = list(layer.items())
        else:
            raise CaptumElfaError(
                f"layer must be a torch.nn.Module (or a dict {{name: module}}), got {type(layer).__name__}"
            )
        if not items:
            raise CaptumElfaError("no layer to capture; pass at least one module")
        for name, mod in items:
            if not isinstance(mod, nn.Module):
                raise CaptumElfaError(f"layer {name!r} must be a torch.nn.Module, got {type(mod).__name__}")
            if isinstance(forward_func, nn.Module) and not any(m is mod for m in forward_func.modules()):
                raise CaptumElfaError(
                    f"layer {name!r} ({type(mod).__name__}) is not a submodule of the model "
                    f"{type(forward_func).__name__}; pass one of its modules, e.g. "
                    f"{_valid_layer_examples(forward_func)}"
                )

        def per(value: Any, name: str, default: Any) -> Any:
            if isinstance(value, Mapping):
                return value.get(name, default)
            return value

        self.layouts: Dict[str, LayerLayout] = {
            n: LayerLayout(
                per(channel_dim, n, None), per(token_grid, n, None), per(drop_tokens, n, 0), per(call_index, n, -1)
            )
            for n, _ in items
        }
        self.items = items
        self.forward_func = forward_func
        self.layer = items[0][1]
        self.layer_name = items[0][0]
        self.on_output = on_output
        self.eval_mode = eval_mode
        self.grad = grad
        self.freeze_grad = freeze_grad
        self.layout = layout
        self.what = what
        self.device = model_device(forward_func, self.layer)
        self.shapes: Dict[str, Tuple[int, ...]] = {}  # raw output shape (batch excluded) per layer
        self._handles: List[RemovableHandle] = []
        self._guard: Any = None
        self._calls: Dict[str, int] = {n: 0 for n, _ in items}
        self._resolved: Dict[str, int] = {}
        self._n_calls: Dict[str, int] = {}
        self._pending: Dict[str, List[Tensor]] = {}
        self._batch_index = -1
        self._lock = threading.Lock()
        self.stop_early = bool(stop_early) and not grad
        self._delivered: set = set()
        self._stopping = False
        self._complete = 0  # batches run to the end of the forward pass

    # -- model state -------------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        self._guard = model_guard(
            self.forward_func,
            [m for _, m in self.items],
            eval_mode=self.eval_mode,
            freeze_grad=self.freeze_grad,
            what=self.what,
            stacklevel=5,
        )
        self._guard.__enter__()
        try:
            for name, mod in self.items:
                self._handles.append(mod.register_forward_hook(self._make_hook(name, mod)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending = {}
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.__exit__(*(exc if len(exc) == 3 else (None, None, None)))

    # -- running -----------------------------------------------------------------------------
    def _deliver(self, name: str, mod: nn.Module, out: Tensor) -> None:
        if self.layout:
            lay = self.layouts[name]
            cd = resolve_channel_dim(out.shape, lay.channel_dim, mod, name)
            act = to_nchw(out, cd, lay.token_grid, lay.drop_tokens, name)
        else:
            act = out
        if name not in self.shapes:
            self.shapes[name] = tuple(int(s) for s in out.shape[1:])
        if self._single:
            self.on_output(act, self._batch_index)
        else:
            self.on_output(name, act, self._batch_index)
        self._delivered.add(name)
        if self._stopping and len(self._delivered) == len(self.items):
            raise _StopForward()

    def _make_hook(self, name: str, mod: nn.Module) -> Callable:
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            with self._lock:
                k = self._calls[name]
                self._calls[name] = k + 1
                if not isinstance(out, Tensor):
                    raise CaptumElfaError(
                        f"layer '{name}' returned a {type(out).__name__}, not a Tensor; choose a layer whose "
                        "output is a Tensor (N, C, ...) or (N, ..., C), e.g. a submodule of this one"
                    )
                if name in self._resolved:
                    if k == self._resolved[name]:
                        self._deliver(name, mod, out)
                    return
                ci = self.layouts[name].call_index
                if ci >= 0:
                    if k == ci:
                        self._deliver(name, mod, out)
                    return
                # negative call_index, first batch: keep every call until the count is known
                self._pending.setdefault(name, []).append(out.clone() if self.grad else out.detach().clone())

        return hook

    def run(self, batch: Tensor, index: int, additional_forward_args: Any = None) -> Any:
        """Run one batch through the model; returns the model's output."""
        if not isinstance(batch, Tensor):
            raise CaptumElfaError(f"batch {index} is a {type(batch).__name__}, expected a Tensor")
        if batch.dim() == 0 or batch.shape[0] == 0:
            raise CaptumElfaError(f"batch {index} is empty (shape {tuple(batch.shape)})")
        check_input_tensor(batch, f"batch {index}")
        batch = _move(batch, self.device)
        extra = tuple(_move(a, self.device) for a in format_additional_args(additional_forward_args))
        for n in self._calls:
            self._calls[n] = 0
        self._pending = {}
        self._batch_index = index
        self._delivered = set()
        # every layer's call is known after the first batch: later batches may stop there
        self._stopping = self.stop_early and self._complete > 0
        try:
            with torch.set_grad_enabled(self.grad):
                output = self.forward_func(batch, *extra)
        except _StopForward:
            self._pending = {}
            return None
        finally:
            self._stopping = False
        for name, mod in self.items:
            calls = self._calls[name]
            ci = self.layouts[name].call_index
            if calls == 0:
                raise CaptumElfaError(
                    f"layer '{name}' was never called by the model's forward pass; "
                    "choose a layer that the forward function actually runs"
                )
            if name in self._resolved:
                if calls != self._n_calls[name]:
                    raise CaptumElfaError(
                        f"layer '{name}' was called {calls} times in batch {index} but {self._n_calls[name]} "
                        f"times in the first batch; call_index={ci} needs the same number of calls every batch"
                    )
                continue
            if ci >= calls or ci < -calls:
                raise CaptumElfaError(
                    f"call_index={ci} is not valid for layer '{name}', which is called {calls} time(s) per "
                    f"forward pass; use 0..{calls - 1} or -1 (the last call)"
                )
            if ci < 0:
                self._resolved[name] = calls + ci
                self._n_calls[name] = calls
                pending = self._pending.pop(name)
                self._deliver(name, mod, pending[calls + ci])
        self._pending = {}
        self._complete += 1
        return output
