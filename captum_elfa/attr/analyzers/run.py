"""``analyze``: run an analyzer on a batch and return an :class:`Explanation`."""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_elfa._capture import format_additional_args, model_device, model_guard
from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.analyzers.base import Analyzer, Explanation
from captum_elfa.attr.analyzers.captum_adapter import as_analyzer

__all__ = ["analyze", "TargetLike"]

TargetLike = Union[None, int, Sequence[int], np.ndarray, Tensor]


# -- checks ------------------------------------------------------------------------------------
def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        if type(inputs).__module__ == "numpy":
            raise CaptumElfaError(
                f"inputs is a numpy {type(inputs).__name__}; convert it, e.g. torch.from_numpy(x).float()"
            )
        raise CaptumElfaError(
            f"inputs must be a torch.Tensor with the batch in dimension 0, got {type(inputs).__name__}"
        )
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise CaptumElfaError(
            f"inputs has shape {tuple(inputs.shape)}; expected a batch (N, ...) with N >= 1, "
            "e.g. x.unsqueeze(0) for a single image"
        )
    if not inputs.is_floating_point():
        raise CaptumElfaError(
            f"inputs has dtype {inputs.dtype}; gradients need a floating-point Tensor, e.g. inputs.float()"
            + (" / 255 for uint8 image bytes" if inputs.dtype == torch.uint8 else "")
        )
    finite = torch.isfinite(inputs)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(inputs).sum())
        n_inf = int(torch.isinf(inputs).sum())
        first = tuple(int(i) for i in (~finite).nonzero()[0])
        raise CaptumElfaError(
            f"inputs contain {n_nan} NaN and {n_inf} Inf values (first at index {first}); analyze needs finite inputs"
        )
    return inputs


def _check_output(output: Any, n_samples: int) -> Tensor:
    if not isinstance(output, Tensor):
        raise CaptumElfaError(
            f"the model returned a {type(output).__name__}; analyze needs a Tensor of shape "
            "(N, K) (or (N,)), e.g. wrap the model to return its logits"
        )
    if output.dim() not in (1, 2) or output.shape[0] != n_samples:
        raise CaptumElfaError(
            f"the model output has shape {tuple(output.shape)} for {n_samples} samples; "
            f"analyze explains outputs of shape ({n_samples}, K) or ({n_samples},)"
        )
    return output


def _resolve_target(target: TargetLike, output: Tensor) -> Optional[Tensor]:
    n_samples = output.shape[0]
    if output.dim() == 1:
        if target is not None:
            raise CaptumElfaError(
                f"target={_short(target)} but the model has one output per sample (output shape "
                f"{tuple(output.shape)}); leave target=None"
            )
        return None
    n_out = output.shape[1]
    if target is None:
        return output.detach().argmax(dim=1)
    valid = f"valid output indices are 0..{n_out - 1}"
    if isinstance(target, bool):
        raise CaptumElfaError(f"target={target!r} is not valid; {valid}")
    if isinstance(target, numbers.Integral):
        t = int(target)
        if not 0 <= t < n_out:
            raise CaptumElfaError(f"target={t} is outside the model output; {valid}")
        return torch.full((n_samples,), t, dtype=torch.long, device=output.device)
    if isinstance(target, (list, tuple, np.ndarray)):
        try:
            target = torch.as_tensor(np.asarray(target))
        except (TypeError, ValueError) as exc:
            raise CaptumElfaError(f"target={_short(target)} is not a sequence of ints ({exc})") from None
    if not isinstance(target, Tensor):
        raise CaptumElfaError(
            f"target must be None, an int or one int per sample (list or Tensor), got {type(target).__name__}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise CaptumElfaError(f"target has dtype {target.dtype}; it must hold integer output indices ({valid})")
    if target.dim() == 0:
        target = target.reshape(1).expand(n_samples)
    if target.dim() != 1 or target.shape[0] != n_samples:
        raise CaptumElfaError(
            f"target has shape {tuple(target.shape)} but inputs have {n_samples} samples; "
            f"give one output index per sample (shape ({n_samples},)) or a single int"
        )
    bad = (target < 0) | (target >= n_out)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise CaptumElfaError(f"target[{i}]={int(target[i])} is outside the model output; {valid}")
    return target.to(device=output.device, dtype=torch.long)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _analyzer_layers(an: Any) -> List[nn.Module]:
    """The layers an analyzer hooks (GradCAM, EFAM, wrapped analyzers, Captum layer methods)."""
    out: List[nn.Module] = []
    seen = 0
    while an is not None and seen < 8:
        seen += 1
        for holder in (an, getattr(an, "lfa", None), getattr(an, "method", None)):
            layer = getattr(holder, "layer", None)
            if isinstance(layer, nn.Module):
                out.append(layer)
        an = getattr(an, "analyzer", None)
    return out


# -- analyze -----------------------------------------------------------------------------------
def analyze(
    inputs: Tensor,
    analyzer: Any,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    **attribute_kwargs: Any,
) -> Explanation:
    r"""Explain a model's outputs for a batch of inputs (ExplainableAI.jl's ``analyze``).

    The model runs once (without gradients) to give ``Explanation.output``; the explained
    output of each sample is its top output unless ``target`` says otherwise. The attribution
    itself is Captum's. The model always runs in eval mode (dropout off, batch-norm running
    statistics): a model in training mode gets a ``UserWarning`` and is explained as it predicts,
    then put back in training mode (gradients of a training-mode model, with its batch-dependent
    batch norm, are Captum's own: call the Captum method directly for those). The model is left
    as it was (:func:`captum_elfa._capture.model_guard`): Captum removes its hooks, and the
    training flags, ``requires_grad`` flags and buffers (BatchNorm running statistics) are
    restored, also when the analyzer raises; ``inputs`` is not modified (its ``requires_grad``
    and ``grad`` are untouched). Inputs and extra Tensor arguments are moved to the model's
    device.

    Args:
        inputs (Tensor): a batch ``(N, ...)`` of finite floating-point inputs.
        analyzer (Analyzer or captum.attr.Attribution): one of :class:`Gradient`,
                    :class:`InputTimesGradient`, :class:`SmoothGrad`,
                    :class:`IntegratedGradients`, :class:`GradCAM`, :class:`EFAM`,
                    :class:`NoiseAugmentation`, :class:`InterpolationAugmentation`, or a Captum
                    attribution object such as ``captum.attr.Saliency(model)`` (its preset is
                    chosen from its class, see
                    :class:`~captum_elfa.attr.analyzers.CaptumAttribution`).
        target (None, int, list of int or Tensor): the output to explain: None for each
                    sample's argmax, an int for the same output in every sample, or one index
                    per sample. Default: None.
        additional_forward_args (Any, optional): further arguments of the model's forward,
                    as in Captum (Tensors are repeated along dimension 0 by augmentations).
        **attribute_kwargs: for a raw Captum attribution only, further keyword arguments of
                    its ``attribute`` (e.g. ``nt_samples=10``, ``abs=False``).

    Returns:
        :class:`Explanation`: ``val``, ``output``, ``target`` (LongTensor ``[N]``), ``method``,
        ``heatmap`` and ``extras``.

    Raises:
        CaptumElfaError: for non-finite inputs, a target outside the output or of the wrong
                    length, an analyzer that is neither ours nor a Captum attribution.

    Examples::

        >>> expl = analyze(x, SmoothGrad(model, n=50, std=0.1))  # top output of each sample
        >>> expl = analyze(x, Gradient(model), target=3)
        >>> expl = analyze(x, captum.attr.Saliency(model))       # preset "sensitivity"
        >>> img = heatmap(expl)                                   # uint8 [N, H, W, 3]
    """
    an = as_analyzer(analyzer, **attribute_kwargs)
    x = _check_inputs(inputs).detach()
    layers = _analyzer_layers(an)
    device = model_device(an.model, layers[0] if layers else None)
    if device is not None and x.device != device:
        x = x.to(device)
    if additional_forward_args is not None:
        additional_forward_args = tuple(
            a.to(device) if device is not None and isinstance(a, Tensor) and a.device != device else a
            for a in format_additional_args(additional_forward_args)
        )
    an._validate(x)
    n_samples = x.shape[0]
    extras: Dict[str, Any] = {}
    with model_guard(an.model, layers, what="analyze", stacklevel=4):
        with torch.no_grad():
            output = an.model(x, *(additional_forward_args or ()))
        output = _check_output(output, n_samples).detach()
        target_used = _resolve_target(target, output)
        rows = torch.arange(n_samples, device=x.device)
        val = an._attribute(x, target_used, additional_forward_args, rows, extras)
    if not isinstance(val, Tensor) or val.dim() == 0 or val.shape[0] != n_samples:
        shape = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
        raise CaptumElfaError(f"{an.name} returned an attribution of shape {shape} for {n_samples} samples")
    return Explanation(
        val=val.detach(),
        output=output,
        target=target_used,
        method=an.name,
        heatmap=an.preset,
        extras=extras,
    )


Analyzer._runner = analyze
