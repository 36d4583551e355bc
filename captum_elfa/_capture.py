"""Activation capture: run a model batch by batch and hand one layer's output to a callback.

Everything that touches the user's model lives here, so that every method restores it the same
way: the hook is removed, the training flags and ``requires_grad`` flags are put back, also when a
batch raises.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_elfa._validation import CaptumElfaError

Inputs = Union[Tensor, Iterable]

__all__ = ["LayerCapture", "iter_batches", "model_device", "format_additional_args"]


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
    raise CaptumElfaError(
        f"batch {index} is a {type(batch).__name__}; expected a Tensor or a tuple/list whose "
        "first element is the input Tensor (as a DataLoader yields (x, y) pairs)"
    )


def iter_batches(inputs: Inputs, batch_size: int = 64) -> Iterator[Tensor]:
    """Yield input batches from a Tensor, an iterable of Tensors or a DataLoader.

    A Tensor is cut into chunks of ``batch_size`` samples along its first dimension. Items of
    an iterable that are tuples or lists (a DataLoader yielding ``(x, y, ...)``) give their
    first element.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CaptumElfaError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise CaptumElfaError(
                f"inputs is an empty Tensor of shape {tuple(inputs.shape)}; "
                "expected at least one sample along dimension 0"
            )
        yield from torch.split(inputs, batch_size, dim=0)
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise CaptumElfaError(
            f"inputs must be a Tensor, an iterable of Tensors or a DataLoader, got {type(inputs).__name__}"
        )
    for i, batch in enumerate(inputs):
        yield _first_tensor(batch, i)


def model_device(forward_func: Callable, layer: Optional[nn.Module] = None) -> Optional[torch.device]:
    """The device of the model's first parameter or buffer (``None`` if it has none)."""
    for mod in (forward_func, layer):
        if isinstance(mod, nn.Module):
            for t in mod.parameters():
                return t.device
            for b in mod.buffers():
                return b.device
    return None


def _layer_name(root: Any, layer: nn.Module) -> str:
    if isinstance(root, nn.Module):
        for name, mod in root.named_modules():
            if mod is layer:
                return name or type(layer).__name__
    return type(layer).__name__


class LayerCapture:
    """Context manager that hooks ``layer`` and runs ``forward_func`` batch by batch.

    Inside the ``with`` block, :meth:`run` feeds one batch through the model and calls
    ``on_output(activation, batch_index)`` from inside the layer's forward hook, before any
    later in-place operation (a ``ReLU(inplace=True)``) can change the tensor. On exit the hook is
    removed and the training and ``requires_grad`` flags of every module and parameter of the
    model are restored, whatever happened.

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layer (nn.Module): the layer whose output is captured.
        on_output (Callable): called with the layer's output Tensor and the batch index.
        eval_mode (bool): put an ``nn.Module`` model in eval mode for the run (warning if it was
                    in training mode). Default: True.
        grad (bool): run with autograd enabled. Default: False (``torch.no_grad``).
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        on_output: Callable[[Tensor, int], None],
        eval_mode: bool = True,
        grad: bool = False,
    ) -> None:
        if not isinstance(layer, nn.Module):
            raise CaptumElfaError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        if not callable(forward_func):
            raise CaptumElfaError(f"forward_func must be callable, got {type(forward_func).__name__}")
        if isinstance(forward_func, nn.Module) and not any(m is layer for m in forward_func.modules()):
            raise CaptumElfaError(
                f"layer {type(layer).__name__} is not a submodule of the model "
                f"{type(forward_func).__name__}; pass one of its modules, e.g. "
                f"{_valid_layer_examples(forward_func)}"
            )
        self.forward_func = forward_func
        self.layer = layer
        self.layer_name = _layer_name(forward_func, layer)
        self.on_output = on_output
        self.eval_mode = eval_mode
        self.grad = grad
        self.device = model_device(forward_func, layer)
        self._handle: Optional[RemovableHandle] = None
        self._calls = 0
        self._batch_index = -1
        self._lock = threading.Lock()
        self._training: list[tuple[nn.Module, bool]] = []
        self._requires_grad: list[tuple[Tensor, bool]] = []

    # -- model state -------------------------------------------------------------------------
    def _modules(self) -> list[nn.Module]:
        mods: dict[int, nn.Module] = {}
        for root in (self.forward_func, self.layer):
            if isinstance(root, nn.Module):
                for m in root.modules():
                    mods[id(m)] = m
        return list(mods.values())

    def __enter__(self) -> LayerCapture:
        mods = self._modules()
        self._training = [(m, m.training) for m in mods]
        params: dict[int, Tensor] = {}
        for m in mods:
            for p in m.parameters(recurse=False):
                params[id(p)] = p
        self._requires_grad = [(p, p.requires_grad) for p in params.values()]
        if self.eval_mode and isinstance(self.forward_func, nn.Module) and self.forward_func.training:
            warnings.warn(
                f"{type(self.forward_func).__name__} is in training mode; captum_elfa computes "
                "its statistics in eval mode (dropout off, batch-norm running statistics) and "
                "restores training mode afterwards",
                UserWarning,
                stacklevel=3,
            )
        if self.eval_mode:
            for m in mods:
                m.eval()
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for m, flag in self._training:
            m.train(flag)
        for p, flag in self._requires_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)

    # -- running -----------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inp: Any, out: Any) -> None:
        with self._lock:
            self._calls += 1
            if self._calls > 1:
                raise CaptumElfaError(
                    f"layer '{self.layer_name}' was called {self._calls} times in one forward "
                    "pass (a module shared between several places); hook a module that runs "
                    "once per forward pass"
                )
            if not isinstance(out, Tensor):
                raise CaptumElfaError(
                    f"layer '{self.layer_name}' returned a {type(out).__name__}, not a Tensor; "
                    "choose a layer whose output is a Tensor of shape (N, C, H, W) or (N, C)"
                )
            self.on_output(out, self._batch_index)

    def run(self, batch: Tensor, index: int, additional_forward_args: Any = None) -> Any:
        """Run one batch through the model; returns the model's output."""
        if not isinstance(batch, Tensor):
            raise CaptumElfaError(f"batch {index} is a {type(batch).__name__}, expected a Tensor")
        if batch.shape[0] == 0:
            raise CaptumElfaError(f"batch {index} is empty (shape {tuple(batch.shape)})")
        if self.device is not None and batch.device != self.device:
            batch = batch.to(self.device, non_blocking=True)
        extra = format_additional_args(additional_forward_args)
        self._calls = 0
        self._batch_index = index
        with torch.set_grad_enabled(self.grad):
            output = self.forward_func(batch, *extra)
        if self._calls == 0:
            raise CaptumElfaError(
                f"layer '{self.layer_name}' was never called by the model's forward pass; "
                "choose a layer that the forward function actually runs"
            )
        return output


def _valid_layer_examples(model: nn.Module, limit: int = 6) -> str:
    names = [n for n, _ in model.named_modules() if n][:limit]
    return ", ".join(f"model.{n}" for n in names) if names else "the model itself"


def check_activation_shape(act: Tensor, layer_name: str) -> Tensor:
    """Return the activation as (N, C, H, W); (N, C) becomes (N, C, 1, 1)."""
    if act.dim() == 2:
        return act[:, :, None, None]
    if act.dim() == 4:
        return act
    raise CaptumElfaError(f"layer '{layer_name}' output has shape {tuple(act.shape)}; expected (N, C, H, W) or (N, C)")
