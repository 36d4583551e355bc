"""Channel activation maximisation (the PCACE authors' ``activation_maximization.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture import CallIndex
from captum_elfa._validation import CaptumElfaError, check_int, is_int
from captum_elfa.optim._engine import (
    LayerProbe,
    check_seed,
    check_steps_lr,
    input_shape4,
    make_param,
    optimise,
    resolve_device,
    resolve_transforms,
)

__all__ = ["ActivationMaxResult", "maximize_channel", "maximize_channels"]


@dataclass
class ActivationMaxResult:
    """The result of :func:`maximize_channel` / :func:`maximize_channels`.

    Attributes:
        images (Tensor): ``[K, C, H, W]`` one optimised image per channel, detached, on the
                    model's device.
        channels (list of int): the maximised channels, in the order of ``images``.
        losses (list of float): the objective (minus the sum of the channels' mean
                    activations) at every step, on the transformed images.
        initial_activation (Tensor): ``[K]`` each channel's mean activation for its initial
                    image (no transforms).
        final_activation (Tensor): ``[K]`` the same for the final images.
        scores (Tensor, optional): ``[K]`` the channels' scores when they came from a
                    ``ChannelRanking`` (PCACE).
        value_range (tuple): the images' valid pixel range.
        method (str), seed (int), layer_name (str).
    """

    images: Tensor
    channels: List[int]
    losses: List[float]
    initial_activation: Tensor
    final_activation: Tensor
    value_range: Tuple[float, float]
    method: str
    seed: int
    layer_name: str = ""
    scores: Optional[Tensor] = None

    @property
    def image(self) -> Tensor:
        """``[1, C, H, W]``: the first (for :func:`maximize_channel`, the only) image."""
        return self.images[:1]

    def figure(self, ncols: int = 6, size: float = 1.8) -> Any:
        """The images, one panel per channel; a matplotlib ``Figure`` (nothing is shown), drawn by
        :func:`captum_elfa.visualization.plot_channel_images`."""
        from captum_elfa.visualization.figures import plot_channel_images

        return plot_channel_images(self, ncols, size)


def _channel_list(channels: Any, top_k: Optional[int]) -> Tuple[List[int], Optional[Tensor]]:
    scores = None
    if hasattr(channels, "channels") and hasattr(channels, "scores"):  # a PCACE ChannelRanking
        chans, scores = channels.channels, channels.scores
    else:
        chans = channels
    if isinstance(chans, Tensor):
        if chans.dim() != 1 or chans.dtype.is_floating_point or chans.dtype == torch.bool:
            raise CaptumElfaError(
                f"channels must be a 1-D integer Tensor, got dtype {chans.dtype} and shape {tuple(chans.shape)}"
            )
        chans = [int(c) for c in chans.tolist()]
    if isinstance(chans, (str, bytes)) or not isinstance(chans, (list, tuple)):
        raise CaptumElfaError(f"channels must be a sequence of ints or a ChannelRanking, got {type(channels).__name__}")
    out = []
    for c in chans:
        if not is_int(c):
            raise CaptumElfaError(f"channel {c!r} is not an int")
        out.append(int(c))
    if top_k is not None:
        out = out[: check_int("top_k", top_k, minimum=1)]
        if scores is not None:
            scores = scores[:top_k]
    if not out:
        raise CaptumElfaError("channels is empty; give at least one channel")
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu()[: len(out)]
    return out, scores


def maximize_channels(
    model: Callable,
    layer: nn.Module,
    channels: Any,
    input_shape: Sequence[int],
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    seed: int = 0,
    method: str = "fft",
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    top_k: Optional[int] = None,
    value_range: Sequence[float] = (0.0, 1.0),
    transforms: Any = "auto",
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    additional_forward_args: Any = None,
    *,
    channel_dim: Optional[int] = None,
    token_grid: Any = None,
    drop_tokens: int = 0,
    call_index: CallIndex = None,
) -> ActivationMaxResult:
    r"""One image per channel maximising the channel's mean activation at ``layer``, all
    channels optimised together (a batch of images, one forward pass per step).

    The objective is ``-sum_k mean_{h,w} A[k, c_k, h, w]`` where image ``k`` is fed to the model
    and ``A`` is the layer's output (a linear layer's ``(N, C)`` output is one pixel). Each image
    has its own parameters, so the images are optimised independently; the random transforms
    are shared by the batch at each step.

    Args:
        model (Callable or nn.Module): the model (``forward_func``).
        layer (nn.Module): the layer whose channels are maximised.
        channels: a sequence (or 1-D Tensor) of channel indices, or a PCACE ``ChannelRanking``
                    (``NeuronPCACE.rank(...)``), highest first; with ``top_k`` only the first
                    ``top_k`` are used.
        input_shape: one input image's shape ``(C, H, W)``.
        steps (int, optional): default 256 (``fft``) or 100 (``pixel``).
        lr (float, optional): default 0.05 (``fft``, Adam) or 0.01 (``pixel``, normalised
                    gradient ascent with clipping).
        seed (int): seeds the initial images and the transforms (local ``torch.Generator``).
        method (str): ``"fft"`` (decorrelated Fourier image + transforms, default) or ``"pixel"``.
        progress (bool): tqdm progress bar. Default: True.
        device: default the model's device.
        top_k (int, optional): keep the first ``top_k`` channels.
        value_range, transforms, sd, decay_power, decorrelate, additional_forward_args: as in
                    :func:`~captum_elfa.optim.invert_factor`.
        channel_dim, token_grid, drop_tokens, call_index: the layout of the layer's output
                    (keyword-only), as in :class:`~captum_elfa.LayerFactorAnalysis`.

    Returns:
        ActivationMaxResult: ``images`` ``[K, C, H, W]``, ``channels``, ``losses``,
        ``initial_activation``, ``final_activation`` and ``figure()``.

    Examples::

        >>> ranking = NeuronPCACE(model, model.conv2).rank(images, target=3)
        >>> res = maximize_channels(model, model.conv2, ranking, (1, 28, 28), top_k=6)
        >>> fig = res.figure()
    """
    chans, scores = _channel_list(channels, top_k)
    steps, lr = check_steps_lr(method, steps, lr)
    seed = check_seed(seed)
    shape = input_shape4(input_shape, len(chans))
    dev = resolve_device(model, layer, device)
    transform = resolve_transforms(transforms, method, min(shape[2:]))
    param = make_param(method, shape, seed, value_range, dev, sd, decay_power, decorrelate, None)
    generator = torch.Generator().manual_seed(seed + 1)

    with LayerProbe(
        model,
        layer,
        additional_forward_args,
        channel_dim=channel_dim,
        token_grid=token_grid,
        drop_tokens=drop_tokens,
        call_index=call_index,
    ) as probe:
        with torch.no_grad():
            img0 = param()
        act0 = probe(img0).detach()
        c = int(act0.shape[1])
        bad = [ch for ch in chans if not 0 <= ch < c]
        if bad:
            raise CaptumElfaError(
                f"channels {bad} are out of range; layer '{probe.layer_name}' has {c} channels: choose 0 <= channel < {c}"
            )
        idx = torch.tensor(chans, device=act0.device)
        rows = torch.arange(len(chans), device=act0.device)

        def channel_means(act: Tensor) -> Tensor:
            return act[rows, idx].flatten(1).mean(1)

        def loss_fn(x: Tensor) -> Tensor:
            return -channel_means(probe(x)).sum()

        initial = channel_means(act0).cpu()
        losses = optimise(
            param, loss_fn, method, steps, lr, transform, generator, progress, f"maximise {len(chans)} channel(s)"
        )
        with torch.no_grad():
            images = param().detach()
        final = channel_means(probe(images).detach()).cpu()
        name = probe.layer_name

    return ActivationMaxResult(
        images=images,
        channels=chans,
        losses=losses,
        initial_activation=initial,
        final_activation=final,
        value_range=param.value_range,
        method=method,
        seed=seed,
        layer_name=name,
        scores=scores,
    )


def maximize_channel(
    model: Callable,
    layer: nn.Module,
    channel: int,
    input_shape: Sequence[int],
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    seed: int = 0,
    method: str = "fft",
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs: Any,
) -> ActivationMaxResult:
    r"""The image maximising one channel's mean activation at ``layer``.

    :func:`maximize_channels` with a single channel: the result's ``image`` is ``[1, C, H, W]``.

    Examples::

        >>> res = maximize_channel(model, model.conv2, 5, (3, 32, 32), seed=0)
        >>> res.image.shape, res.final_activation > res.initial_activation
    """
    if not is_int(channel):
        raise CaptumElfaError(f"channel={channel!r} is not valid; expected an int")
    return maximize_channels(
        model,
        layer,
        [channel],
        input_shape,
        steps=steps,
        lr=lr,
        seed=seed,
        method=method,
        progress=progress,
        device=device,
        **kwargs,
    )
