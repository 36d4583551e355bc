"""Batches: cutting inputs and per-sample ``additional_forward_args``; devices and layer names."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture.guard import find_model
from captum_elfa._validation import CaptumElfaError, check_int

__all__ = [
    "Inputs",
    "check_input_tensor",
    "format_additional_args",
    "iter_batches",
    "iter_batches_with_args",
    "layer_name",
    "model_device",
    "split_additional_args",
]

Inputs = Union[Tensor, Iterable]


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


def _valid_layer_examples(model: nn.Module, limit: int = 6) -> str:
    names = [n for n, _ in model.named_modules() if n][:limit]
    return ", ".join(f"model.{n}" for n in names) if names else "the model itself"


def _move(x: Any, device: Optional[torch.device]) -> Any:
    if device is not None and isinstance(x, Tensor) and x.device != device:
        return x.to(device, non_blocking=True)
    return x
