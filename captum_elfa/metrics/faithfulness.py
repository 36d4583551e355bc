"""Deletion and insertion curves: is an attribution map faithful to the model?

Petsiuk, Das & Saenko, *RISE: Randomized Input Sampling for Explanation of Black-box Models*
(BMVC 2018). Deletion removes the pixels a map ranks highest, a growing fraction at a time, and
records the class score: a faithful map makes the score drop fast (small area under the curve).
Insertion starts from a baseline image (e.g. blurred) and puts the top pixels back: a faithful
map makes the score rise fast (large area).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_elfa._capture import (
    check_input_tensor,
    format_additional_args,
    model_device,
    model_guard,
    split_additional_args,
)
from captum_elfa._validation import CaptumElfaError, check_choice, check_int

__all__ = ["deletion_curve", "insertion_curve", "auc", "SCORES", "BASELINES"]

TargetArg = Union[None, int, Sequence[int], Tensor, Callable[[Any], Tensor]]
BaselineArg = Union[float, str, Tensor]

#: what is recorded of the model's output
SCORES = ("prob", "logit")
#: named baselines (a float or a Tensor is also accepted)
BASELINES = ("blur", "mean")


def _check_inputs(inputs: Any) -> Tensor:
    if type(inputs).__module__ == "numpy":
        raise CaptumElfaError("inputs is a numpy array; convert it, e.g. torch.from_numpy(x).float()")
    if isinstance(inputs, Tensor):
        check_input_tensor(inputs)
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or inputs.shape[0] == 0:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise CaptumElfaError(f"inputs must be a non-empty image batch Tensor [N, C, H, W], got {shape}")
    if not inputs.is_floating_point():
        raise CaptumElfaError(f"inputs has dtype {inputs.dtype}; pass floating-point images")
    return inputs.detach()


def _check_maps(maps: Any, inputs: Tensor) -> Tensor:
    """Maps ``[N, 1, h, w]`` or ``[N, h, w]`` upsampled (bilinear) to the input size: ``[N, H*W]``."""
    if not isinstance(maps, Tensor):
        raise CaptumElfaError(f"maps must be a Tensor [N, 1, h, w], got {type(maps).__name__}")
    if maps.dim() == 3:
        maps = maps[:, None]
    if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[0] != inputs.shape[0]:
        raise CaptumElfaError(
            f"maps has shape {tuple(maps.shape)}; expected [N, 1, h, w] with N = {inputs.shape[0]} "
            "(one map per image; reduce channel attributions first, e.g. .abs().sum(1, keepdim=True))"
        )
    maps = maps.detach().to(device=inputs.device, dtype=torch.float32)
    if not bool(torch.isfinite(maps).all()):
        raise CaptumElfaError("maps contain NaN or Inf values; every map value must be finite")
    size = tuple(inputs.shape[2:])
    if tuple(maps.shape[2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.flatten(1)


def _pixel_ranks(maps: Tensor, seed: int) -> Tensor:
    """``ranks[n, p]``: position of pixel ``p`` when image ``n``'s pixels are sorted by the map,
    highest first; ties are broken by one seeded random permutation of the pixels."""
    n, p = maps.shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(p, generator=g).to(maps.device)
    order = perm[torch.sort(maps[:, perm], dim=1, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p, device=maps.device).expand(n, p).contiguous())
    return ranks


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(inputs: Tensor, baseline: BaselineArg, blur_sigma: Optional[float]) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.detach().to(inputs.device, inputs.dtype), inputs.shape)
        except RuntimeError:
            raise CaptumElfaError(
                f"baseline has shape {tuple(baseline.shape)}, which does not broadcast to the inputs "
                f"{tuple(inputs.shape)}"
            ) from None
    if isinstance(baseline, str):
        check_choice("baseline", baseline, BASELINES)
        if baseline == "mean":
            return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)
        sigma = max(1.0, min(inputs.shape[2:]) / 8.0) if blur_sigma is None else float(blur_sigma)
        if not sigma > 0:
            raise CaptumElfaError(f"blur_sigma must be positive, got {blur_sigma!r}")
        return _gaussian_blur(inputs, sigma)
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    raise CaptumElfaError(
        f"baseline={baseline!r} is not valid; use a number, 'blur', 'mean' or a Tensor broadcastable to the inputs"
    )


def _scores(output: Any, target: Any, score: str) -> Tensor:
    """The recorded score of every image: ``target`` is a LongTensor ``[n]`` or a callable."""
    if not isinstance(target, Tensor):
        y = target(output)
        if not isinstance(y, Tensor) or y.dim() == 0 or y.reshape(y.shape[0], -1).shape[1] != 1:
            raise CaptumElfaError(
                f"the target callable must return a Tensor [N] with one score per image, got "
                f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
            )
        return y.detach().reshape(-1).to(torch.float64)
    out = output.detach().to(torch.float64)
    if score == "prob":
        out = torch.softmax(out, dim=1)
    return out.gather(1, target[:, None].to(out.device)).squeeze(1)


def _resolve_target(target: TargetArg, output: Any, n: int) -> Any:
    """A LongTensor ``[N]`` of class indices, or the callable itself."""
    if callable(target) and not isinstance(target, (int, Tensor)):
        return target
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise CaptumElfaError(
            f"the model output is {shape}; a class target needs logits [N, K] (pass a callable "
            "target mapping the output to a Tensor [N] otherwise)"
        )
    k = output.shape[1]
    if target is None:
        return output.argmax(1)
    if isinstance(target, bool):
        raise CaptumElfaError(f"target={target!r} is not valid; use a class index in [0, {k - 1}]")
    if isinstance(target, numbers.Integral):
        t = torch.full((n,), int(target), dtype=torch.long, device=output.device)
    else:
        try:
            t = torch.as_tensor(target, device=output.device)
        except (TypeError, ValueError):
            raise CaptumElfaError(
                f"target={target!r} is not valid; use None, an int, one int per image or a callable"
            ) from None
        if t.dim() == 0:
            t = t.expand(n)
        if t.is_floating_point() or t.dim() != 1 or t.shape[0] != n:
            raise CaptumElfaError(
                f"target must hold one integer class index per image ({n}), got shape {tuple(t.shape)} dtype {t.dtype}"
            )
        t = t.long()
    if bool(((t < 0) | (t >= k)).any()):
        raise CaptumElfaError(
            f"target {t.tolist()[:10]} is outside the model output; valid class indices are 0..{k - 1}"
        )
    return t


def _curve(
    mode: str,
    model: Callable,
    inputs: Tensor,
    maps: Tensor,
    target: TargetArg,
    steps: int,
    baseline: BaselineArg,
    score: str,
    batch_size: int,
    additional_forward_args: Any,
    blur_sigma: Optional[float],
    seed: int,
) -> Tuple[Tensor, Tensor]:
    check_int("steps", steps, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    x = _check_inputs(inputs)
    device = model_device(model)
    if device is not None and x.device != device:
        x = x.to(device)
    if isinstance(target, (list, tuple)) or (isinstance(target, Tensor) and target.dim() == 1):
        target = torch.as_tensor(target)
        if target.dim() != 1 or target.shape[0] != x.shape[0]:
            raise CaptumElfaError(
                f"target has {target.shape[0] if target.dim() == 1 else tuple(target.shape)} entries "
                f"for {x.shape[0]} images; give one class index per image, an int or None"
            )
    check_choice("score", score, SCORES)
    flat = _check_maps(maps, x)
    n, c, h, w = x.shape
    p = h * w
    base = _baseline(x, baseline, blur_sigma)
    ranks = _pixel_ranks(flat, seed).view(n, 1, h, w)
    fractions = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    counts = [int(round(float(f) * p)) for f in fractions]
    extra_all = tuple(
        a.to(device) if device is not None and isinstance(a, Tensor) and a.device != device else a
        for a in format_additional_args(additional_forward_args)
    )
    scores = torch.empty(n, steps + 1, dtype=torch.float64)
    with model_guard(model, what=f"{mode}_curve", stacklevel=5), torch.no_grad():
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            xb, bb, rb = x[sl], base[sl], ranks[sl]
            extra = split_additional_args(extra_all, n, sl.start, sl.stop)
            out0 = model(xb, *extra)
            tb = target[sl] if isinstance(target, Tensor) and target.dim() == 1 else target
            tgt = _resolve_target(tb, out0, xb.shape[0])
            for j, k in enumerate(counts):
                if (mode == "deletion" and k == 0) or (mode == "insertion" and k == p):
                    out = out0  # the unperturbed image
                else:
                    top = rb < k  # the k highest-ranked pixels, all channels
                    img = torch.where(top, bb, xb) if mode == "deletion" else torch.where(top, xb, bb)
                    out = model(img, *extra)
                s = _scores(out, tgt, score)
                if s.shape[0] != xb.shape[0]:
                    raise CaptumElfaError(f"the score has {s.shape[0]} values for a batch of {xb.shape[0]} images")
                scores[sl, j] = s.cpu()
    return fractions, scores


_CURVE_ARGS = r"""
    Args:
        model (Callable or nn.Module): the model; run in eval mode without gradients, its
                    training and ``requires_grad`` flags and its buffers restored afterwards.
        inputs (Tensor): images ``[N, C, H, W]``.
        maps (Tensor): attribution maps ``[N, 1, h, w]`` (or ``[N, h, w]``), e.g. an EFAM or a
                    Grad-CAM at the layer's resolution; upsampled bilinearly to ``H x W``. Pixels
                    are ranked by the map, highest first (ties in a seeded random order, so a
                    constant map behaves like a random one). Reduce a per-channel attribution
                    first, e.g. ``saliency.abs().sum(1, keepdim=True)``.
        target (None, int, list/Tensor of int, or Callable): the class whose score is recorded:
                    None for each image's top class on the unperturbed input, an int, one index
                    per image, or a callable mapping the model's output to a Tensor ``[N]`` (then
                    ``score`` is ignored). Default: None.
        steps (int): number of increments; the curve has ``steps + 1`` points at fractions
                    ``0, 1/steps, ..., 1`` of the pixels (``round(fraction * H * W)`` pixels,
                    all channels of each). Default: 20.
        baseline (float, "blur", "mean" or Tensor): what a removed pixel becomes: a constant,
                    a Gaussian blur of the image (``blur_sigma``), the image's per-channel mean,
                    or a Tensor broadcastable to ``inputs``. Default: 0.0 for
                    :func:`deletion_curve`, ``"blur"`` for :func:`insertion_curve`.
        score (str): ``"prob"`` (softmax probability of the target) or ``"logit"``.
                    Default: ``"prob"``.
        batch_size (int): images per forward pass (each step runs every chunk once). Default: 64.
        additional_forward_args (Any, optional): extra model arguments, as in Captum; a
                    Tensor whose first dimension is ``N`` is per-image and cut with the batches.
        blur_sigma (float, optional): standard deviation in pixels of the blur baseline;
                    default ``max(1, min(H, W) / 8)``.
        seed (int): seed of the tie-breaking order. Default: 0.

    Returns:
        (fractions, scores): ``[steps + 1]`` float64 fractions of pixels changed and
        ``[N, steps + 1]`` float64 scores of every image (on the CPU).
"""


def deletion_curve(
    model: Callable,
    inputs: Tensor,
    maps: Tensor,
    target: TargetArg = None,
    steps: int = 20,
    baseline: BaselineArg = 0.0,
    score: str = "prob",
    batch_size: int = 64,
    additional_forward_args: Any = None,
    blur_sigma: Optional[float] = None,
    seed: int = 0,
) -> Tuple[Tensor, Tensor]:
    return _curve(
        "deletion",
        model,
        inputs,
        maps,
        target,
        steps,
        baseline,
        score,
        batch_size,
        additional_forward_args,
        blur_sigma,
        seed,
    )


def insertion_curve(
    model: Callable,
    inputs: Tensor,
    maps: Tensor,
    target: TargetArg = None,
    steps: int = 20,
    baseline: BaselineArg = "blur",
    score: str = "prob",
    batch_size: int = 64,
    additional_forward_args: Any = None,
    blur_sigma: Optional[float] = None,
    seed: int = 0,
) -> Tuple[Tensor, Tensor]:
    return _curve(
        "insertion",
        model,
        inputs,
        maps,
        target,
        steps,
        baseline,
        score,
        batch_size,
        additional_forward_args,
        blur_sigma,
        seed,
    )


deletion_curve.__doc__ = (
    r"""Deletion curve: the target score as the pixels the map ranks highest are
    replaced by ``baseline``, ``1/steps`` of the pixels at a time (RISE, Petsiuk et al. 2018).

    Point 0 is the unperturbed image; the last point is the baseline image. A faithful map makes
    the score fall fast: a smaller :func:`auc` is better.
"""
    + _CURVE_ARGS
    + r"""
    Examples::

        >>> efam = lfa.attribute(x)                                   # [N, 1, h, w]
        >>> f, s = deletion_curve(model, x, efam, target=y, steps=20)
        >>> auc(f, s).mean()                                          # lower is better
"""
)

insertion_curve.__doc__ = (
    r"""Insertion curve: start from the ``baseline`` image (blurred by default)
    and put back the pixels the map ranks highest, ``1/steps`` of them at a time.

    Point 0 is the baseline image; the last point is the unperturbed image. A faithful map makes
    the score rise fast: a larger :func:`auc` is better.
"""
    + _CURVE_ARGS
    + r"""
    Examples::

        >>> f, s = insertion_curve(model, x, efam, target=y, baseline="blur")
        >>> auc(f, s).mean()                                          # higher is better
"""
)


def auc(fractions: Tensor, scores: Tensor, normalize: Optional[str] = None) -> Tensor:
    r"""Area under a deletion or insertion curve (trapezoid rule over ``fractions``).

    Without normalisation the area is in the units of the score (for ``score="prob"`` it lies
    in [0, 1]). Normalised, each image's curve is first divided by its unperturbed score: the
    first point of a deletion curve (``normalize="first"``) or the last point of an insertion
    curve (``normalize="last"``), so that images the model is more or less sure of weigh alike
    (an area of 1 then means "as high as the unperturbed image throughout"). An image whose
    reference score is 0 gets NaN.

    Args:
        fractions (Tensor): ``[S]`` increasing fractions (from :func:`deletion_curve`).
        scores (Tensor): ``[S]`` or ``[N, S]`` scores.
        normalize (str, optional): None, ``"first"`` or ``"last"``. Default: None.

    Returns:
        Tensor: float64, ``[N]`` areas (a 0-d Tensor for a single curve ``[S]``).

    Examples::

        >>> auc(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.5000, dtype=torch.float64)
    """
    check_choice("normalize", normalize, (None, "first", "last"))
    if not isinstance(fractions, Tensor) or not isinstance(scores, Tensor):
        raise CaptumElfaError("fractions and scores must be Tensors (as returned by deletion_curve)")
    f = fractions.detach().to(torch.float64).cpu()
    s = scores.detach().to(torch.float64).cpu()
    if f.dim() != 1 or f.numel() < 2 or s.dim() not in (1, 2) or s.shape[-1] != f.numel():
        raise CaptumElfaError(
            f"fractions {tuple(f.shape)} and scores {tuple(s.shape)} do not match; expected [S] "
            "(S >= 2) and [S] or [N, S]"
        )
    if bool((f[1:] < f[:-1]).any()):
        raise CaptumElfaError("fractions must be non-decreasing")
    if normalize is not None:
        ref = s[..., 0:1] if normalize == "first" else s[..., -1:]
        s = s / torch.where(ref == 0, torch.full_like(ref, float("nan")), ref)
    return torch.trapezoid(s, f, dim=-1)
