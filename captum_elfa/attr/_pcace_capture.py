"""The capture side of :class:`~captum_elfa.NeuronPCACE`: the float32 activation store, the
target selection, the gathering over ``torch.distributed`` ranks and the layer resolution."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Union, cast

import torch
from torch import Tensor, nn

from captum_elfa import _distributed as _dist
from captum_elfa._capture import check_activation_shape
from captum_elfa._validation import CaptumElfaError, is_int
from captum_elfa.stats.pcace import MIN_IMAGES

Target = Union[None, int, Callable[[Any], Tensor]]


class _ActivationStore:
    """Holds the layer's activations as one float32 ``[C, N, H*W]`` Tensor.

    With a known number of images the buffer is allocated at the first batch and filled in
    place; otherwise the per-batch copies are concatenated once at the end.
    """

    def __init__(self, total: Optional[int], layer_name: str, n_components: int) -> None:
        self.total = total
        self.layer_name = layer_name
        self.n_components = n_components
        self.buffer: Optional[Tensor] = None
        self.parts: List[Tensor] = []
        self.count = 0
        self.spatial: Optional[tuple] = None

    def add(self, act: Tensor, index: int) -> None:
        a = check_activation_shape(act.detach(), self.layer_name)
        b, c, h, w = a.shape
        if self.spatial is None:
            self.spatial = (c, h, w)
            if self.n_components > h * w:
                raise CaptumElfaError(
                    f"n_components={self.n_components} is larger than the {h * w} pixels "
                    f"({h}x{w}) of layer '{self.layer_name}'; choose 1 <= n_components <= {h * w}"
                )
        elif (c, h, w) != self.spatial:
            raise CaptumElfaError(
                f"batch {index}: layer '{self.layer_name}' output is {(c, h, w)} per image, earlier "
                f"batches gave {self.spatial}; every image must give the same shape"
            )
        block = a.reshape(b, c, h * w).transpose(0, 1)
        if self.total is not None:
            if self.buffer is None:
                self.buffer = torch.empty(c, self.total, h * w, dtype=torch.float32, device=a.device)
            if self.count + b > self.total:
                raise CaptumElfaError(
                    f"layer '{self.layer_name}' produced more samples ({self.count + b}) than the "
                    f"{self.total} inputs; its output's first dimension must be the batch"
                )
            self.buffer[:, self.count : self.count + b].copy_(block)
        else:
            self.parts.append(block.to(dtype=torch.float32, copy=True))
        self.count += b

    def result(self) -> Tensor:
        if self.buffer is not None:
            return self.buffer[:, : self.count]
        out = torch.cat(self.parts, dim=1)
        self.parts = []
        return out


def _gather_ranks(local: Optional[tuple[Tensor, Tensor]], spatial: Optional[tuple]) -> tuple[Tensor, Tensor, tuple]:
    """All ranks' activations ``[C, N_r, P]`` and targets ``[N_r]``, concatenated in rank order
    (every rank gets the same), with the activation shape ``(C, H, W)``. A collective.

    Sizes go first (a rank may have no image), then the tensors padded to the largest ``N_r``,
    trimmed after the gather.
    """
    n_local = 0 if local is None else int(local[0].shape[1])
    shape = list(spatial) if local is not None and spatial is not None else [-1, -1, -1]
    headers = _dist.gather_header([n_local] + shape)
    shapes = [tuple(h[1:]) if h[0] > 0 else None for h in headers]
    common = _dist.single_value("activation shape (C, H, W)", shapes)
    if common is None:
        raise CaptumElfaError(
            f"inputs yielded no image on any of the {len(headers)} ranks (empty DataLoaders or "
            f"iterables); pass at least {MIN_IMAGES} images in all"
        )
    c, h, w = common
    sizes = [hd[0] for hd in headers]
    if local is None:
        device = _dist.comm_device()
        acts = torch.zeros(c, 0, h * w, dtype=torch.float32, device=device)
        y = torch.zeros(0, dtype=torch.float64, device=device)
    else:
        acts, y = local[0], local[1].to(torch.float64)
    all_acts = _dist.all_gather_padded(acts.to(torch.float32), sizes, 1)
    all_y = _dist.all_gather_padded(y, sizes, 0)
    return torch.cat(all_acts, 1), torch.cat(all_y), (c, h, w)


def _join_failed() -> None:
    """Join the first collective of :func:`_gather_ranks` as a failed rank (the others raise a
    ``DistributedError`` instead of waiting for the timeout)."""
    try:
        _dist.gather_header([0, -1, -1, -1], failed=True)
    except Exception:  # pragma: no cover - the original error matters more
        pass


def _resolve_layer(forward_func: Callable, layer: Any) -> nn.Module:
    """``layer`` itself, or the submodule of ``forward_func`` it names."""
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        if not isinstance(forward_func, nn.Module):
            raise CaptumElfaError(
                f"layer={layer!r} is a name, but forward_func is a {type(forward_func).__name__}, not an "
                "nn.Module to look it up in; pass the layer module itself"
            )
        modules = dict(forward_func.named_modules())
        if layer in modules and layer != "":
            return modules[layer]
        names = [name for name in modules if name][:12]
        raise CaptumElfaError(
            f"layer={layer!r} is not a submodule of the model; valid names include {names} (see model.named_modules())"
        )
    raise CaptumElfaError(
        f"layer must be an nn.Module or the name of a submodule, got {type(layer).__name__} {layer!r}"
    )


def _describe(t: Tensor) -> str:
    bad = (~torch.isfinite(t)).nonzero().squeeze(-1)
    return f"images {bad[:10].tolist()}"


def select_target(output: Any, target: Target, n: int, index: int = 0) -> Tensor:
    """The explained score of every image of a batch, float64 ``[n]`` (PCACE's target rule: a
    class index of an ``(N, K)`` output, a callable mapping the output to ``[N]``, or None for
    one output per image). Used by :class:`~captum_elfa.NeuronPCACE` and ``compare_layers``."""
    if is_int(target):
        target = int(cast(Any, target))
    if callable(target) and not isinstance(target, int):
        y = target(output)
        if not isinstance(y, Tensor):
            raise CaptumElfaError(f"target callable returned a {type(y).__name__}; it must return a Tensor [N]")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1 or y.shape[0] != n:
            raise CaptumElfaError(
                f"target callable returned shape {tuple(y.shape)} for batch {index} of {n} images; "
                f"it must return a Tensor [{n}]"
            )
        return y.detach().to(torch.float64)
    if not isinstance(output, Tensor):
        raise CaptumElfaError(
            f"the model returned a {type(output).__name__}, not a Tensor; pass target as a callable "
            "mapping the output to a Tensor [N]"
        )
    if output.dim() == 0 or output.shape[0] != n:
        raise CaptumElfaError(
            f"the model output has shape {tuple(output.shape)} for batch {index} of {n} images; "
            "expected the batch along the first dimension"
        )
    flat = output.detach().reshape(n, -1)
    k = flat.shape[1]
    if target is None:
        if k != 1:
            raise CaptumElfaError(
                f"target=None needs a network with one output per image (regression), but the "
                f"output has shape {tuple(output.shape)}; pass a class index 0..{k - 1} or a callable"
            )
        return flat[:, 0].to(torch.float64)
    if output.dim() != 2:
        raise CaptumElfaError(
            f"target={target} needs an output of shape (N, K), got {tuple(output.shape)}; pass a "
            "callable mapping the output to a Tensor [N]"
        )
    if not 0 <= target < k:
        raise CaptumElfaError(
            f"target={target} is out of range for an output with {k} classes; choose an index in [0, {k - 1}]"
        )
    return flat[:, target].to(torch.float64)


_select_target = select_target  # the name earlier versions used
