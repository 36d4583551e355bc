"""Argument checks and helpers shared by the analyzers."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, check_choice, is_int, is_real
from captum_elfa.attr.analyzers.base import Analyzer

Baseline = Union[None, float, Tensor]
Distribution = Union[torch.distributions.Distribution, Callable[[torch.Size], Tensor]]


def _check_n(n: Any, owner: str, minimum: int = 1) -> int:
    if not is_int(n) or int(n) < minimum:
        raise CaptumElfaError(
            f"{owner}: n={n!r} is not valid; n is the number of samples and must be an int >= {minimum}"
        )
    return int(n)


def _check_batch_size(batch_size: Any, owner: str) -> Optional[int]:
    if batch_size is None:
        return None
    if not is_int(batch_size) or int(batch_size) < 1:
        raise CaptumElfaError(f"{owner}: batch_size={batch_size!r} is not valid; use None (all at once) or an int >= 1")
    return int(batch_size)


def _check_std(std: Any, owner: str) -> float:
    if not is_real(std) or not math.isfinite(float(std)) or float(std) < 0:
        raise CaptumElfaError(
            f"{owner}: std={std!r} is not valid; the noise standard deviation must be a finite "
            "number >= 0 (Smilkov et al. suggest 10-20% of the input range), or pass a "
            "torch.distributions.Distribution or a callable shape -> noise Tensor"
        )
    return float(std)


def _check_model(model: Any, owner: str) -> Callable:
    if isinstance(model, (Analyzer, Attribution)):
        raise CaptumElfaError(
            f"{owner} takes the model, got the analyzer {type(model).__name__}; "
            "to wrap an analyzer use NoiseAugmentation(analyzer, n, std) or "
            "InterpolationAugmentation(analyzer, n)"
        )
    if not callable(model):
        raise CaptumElfaError(
            f"{owner}: model must be a torch.nn.Module or a callable forward function, got {type(model).__name__}"
        )
    return model


def _check_baseline(baseline: Any, owner: str) -> Baseline:
    if baseline is None:
        return None
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise CaptumElfaError(f"{owner}: baseline={baseline!r} is not finite")
        return float(baseline)
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise CaptumElfaError(f"{owner}: baseline has dtype {baseline.dtype}; use a floating-point Tensor")
        if not bool(torch.isfinite(baseline).all()):
            raise CaptumElfaError(f"{owner}: baseline contains NaN or Inf values")
        return baseline.detach()
    raise CaptumElfaError(
        f"{owner}: baseline must be None (zeros), a number or a Tensor, got {type(baseline).__name__}"
    )


def _validate_baseline_shape(baseline: Baseline, inputs: Tensor, owner: str) -> None:
    if not isinstance(baseline, Tensor):
        return
    shape, n = tuple(inputs.shape[1:]), inputs.shape[0]
    b = baseline
    if b.dim() == inputs.dim() - 1:
        b = b.unsqueeze(0)
    if b.dim() != inputs.dim() or tuple(b.shape[1:]) != shape or b.shape[0] not in (1, n):
        raise CaptumElfaError(
            f"{owner}: baseline has shape {tuple(baseline.shape)}; valid shapes for inputs of "
            f"shape {tuple(inputs.shape)} are {shape} or {(1,) + shape} (one reference for "
            f"every sample) or {(n,) + shape} (one per sample), or pass a number"
        )


def _baseline_rows(baseline: Baseline, inputs: Tensor, rows: Tensor) -> Union[float, Tensor]:
    """The baseline for each row of ``inputs`` (0.0 for None, as Captum)."""
    if baseline is None:
        return 0.0
    if not isinstance(baseline, Tensor):
        return baseline
    b = baseline.to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() == inputs.dim() - 1:
        b = b.unsqueeze(0)
    if b.shape[0] == 1:
        return b
    return b[rows.to(b.device)]


def _grad_leaf(inputs: Tensor) -> Tensor:
    """A fresh leaf with the values of ``inputs`` that requires grad (the user's tensor is untouched)."""
    return inputs.detach().requires_grad_()


INTERPOLATE_MODES: Tuple[str, ...] = (
    "nearest",
    "nearest-exact",
    "linear",
    "bilinear",
    "bicubic",
    "trilinear",
    "area",
)


def _check_interpolate_mode(mode: Optional[str]) -> Optional[str]:
    return None if mode is None else check_choice("interpolate_mode", mode, INTERPOLATE_MODES)


def _upsample(layer_map: Tensor, inputs: Tensor, mode: Optional[str], owner: str) -> Tensor:
    if layer_map.dim() != inputs.dim() or layer_map.dim() not in (3, 4, 5):
        raise CaptumElfaError(
            f"{owner}: the layer map has shape {tuple(layer_map.shape)} but the inputs have "
            f"shape {tuple(inputs.shape)}; choose a layer with the inputs' spatial layout "
            "(a convolutional layer for image inputs; a token layer (N, L, C) needs channel_dim=-1 and "
            "token_grid=(h, w) or 'auto' to be placed on the image)"
        )
    if mode is None:
        mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[layer_map.dim()]
    return LayerAttribution.interpolate(layer_map, tuple(inputs.shape[2:]), mode)
