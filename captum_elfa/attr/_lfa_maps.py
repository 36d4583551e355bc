"""The maps of a fitted LayerFactorAnalysis: the contraction, the factors chosen, the normalisation (private)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_elfa._capture import LayerCapture
from captum_elfa._validation import CaptumElfaError, is_int

__all__ = ["NORMALIZATIONS", "contract", "factor_indices", "normalize_maps", "short_repr"]

#: the per-image normalisations of :meth:`LayerFactorAnalysis.attribute`
NORMALIZATIONS = ("max_min", "relu", "max", None)


def factor_indices(factors: Union[None, str, int, Sequence[int]], k: int) -> Optional[List[int]]:
    """The factor indices ``factors`` selects among ``k`` (None: the combined map), checked."""
    if factors is None:
        return None
    if isinstance(factors, str):
        if factors != "all":
            raise CaptumElfaError(
                f"factors={factors!r} is not valid; use None, 'all', an int or a list of ints in [0, {k - 1}]"
            )
        return list(range(k))
    scalar = is_int(factors) or not isinstance(factors, Iterable) or (isinstance(factors, Tensor) and not factors.dim())
    items: List[Any] = [factors] if scalar else list(factors)  # type: ignore[arg-type]
    for i in items:
        if not is_int(i) or not 0 <= int(i) < k:
            raise CaptumElfaError(f"factor index {i!r} is not valid; the model has {k} factors (0 to {k - 1})")
    if not items:
        raise CaptumElfaError("factors is an empty list; use None, 'all' or factor indices")
    return [int(i) for i in items]


def short_repr(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_maps(maps: Tensor, method: Optional[str]) -> Tensor:
    """Per-image, per-map normalisation; constant maps become zeros, never NaN."""
    if method is None:
        return maps
    flat = maps.flatten(2)
    mx = flat.max(2).values[..., None, None]
    mn = flat.min(2).values[..., None, None]
    if method == "max_min":
        rng = mx - mn
        return torch.where(
            rng > 0, (maps - mn) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(maps)
        )
    if method == "relu":
        return torch.where(
            mx > 0, torch.clamp(maps, min=0) / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(maps)
        )
    amax = flat.abs().max(2).values[..., None, None]
    return torch.where(amax > 0, maps / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(maps))


def contract(
    make_capture: Callable[[Callable[[Tensor, int], None]], LayerCapture],
    batches: Iterable[Tuple[Any, Any]],
    n_channels: int,
    weights: Tensor,
    bias: Tensor,
    dtype: torch.dtype,
) -> Tensor:
    """``weights @ activation + bias`` over the channels at every position of the captured layer.

    Args:
        make_capture (Callable): builds the :class:`LayerCapture` from the per-batch callback.
        batches (iterable): ``(batch, extra_args)`` pairs (:func:`iter_batches_with_args`).
        n_channels (int): the channels the model was fitted on (a layer with others is refused).
        weights (Tensor): [rows, C]; bias (Tensor): [rows]; dtype: the dtype of the product.

    Returns:
        Tensor: ``[N, rows, H, W]``.
    """
    chunks: list[Tensor] = []

    def on_output(a: Tensor, index: int) -> None:
        if a.shape[1] != n_channels:
            raise CaptumElfaError(
                f"layer '{cap.layer_name}' has {a.shape[1]} channels but the model was fitted "
                f"on {n_channels}; use the layer it was fitted on"
            )
        if not torch.isfinite(a).all():
            raise CaptumElfaError(f"layer '{cap.layer_name}' produced NaN or Inf activations in batch {index}")
        n, c, h, w = a.shape
        wt = weights.to(device=a.device, dtype=dtype)
        out = (
            torch.matmul(wt, a.detach().reshape(n, c, h * w).to(dtype)) + bias.to(device=a.device, dtype=dtype)[:, None]
        )
        chunks.append(out.reshape(n, -1, h, w))

    cap = make_capture(on_output)
    with cap:
        for i, (batch, extra) in enumerate(batches):
            cap.run(batch, i, extra)
    if not chunks:
        raise CaptumElfaError("inputs yielded no batch; pass at least one image")
    sizes = sorted({tuple(c.shape[2:]) for c in chunks})
    if len(sizes) > 1:
        raise CaptumElfaError(
            f"the batches give maps of different sizes {sizes}; maps are returned as one "
            "Tensor, so pass images of one size (or call attribute once per size)"
        )
    return torch.cat(chunks, 0)
