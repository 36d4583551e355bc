"""ELFA's intrinsic features inversion: the image whose layer activation reproduces a factor.

Reference: López-González et al., *Layer factor analysis in convolutional neural networks for
explainability*, Applied Soft Computing 150 (2024) 111094 (``elfa.inversion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, NotFittedError, is_int
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

__all__ = ["InversionResult", "invert_factor", "inversion_loss"]


@dataclass
class InversionResult:
    """The result of :func:`invert_factor`.

    Attributes:
        image (Tensor): ``[1, C, H, W]`` the optimised image, detached, on the model's device.
        losses (list of float): the objective at every step (on the transformed image when
                    random transforms are used, so it is noisy for ``method="fft"``).
        initial_loss (float): the objective of the initial image (no transforms).
        final_loss (float): the objective of the final image (no transforms).
        factor (int): the inverted factor.
        method (str): ``"fft"`` or ``"pixel"``.
        standardize (bool): whether standardised activations were compared to the loadings.
        value_range (tuple): the image's valid pixel range.
        seed (int): the seed.
    """

    image: Tensor
    losses: List[float]
    initial_loss: float
    final_loss: float
    factor: int
    method: str
    standardize: bool
    value_range: Tuple[float, float]
    seed: int
    layer_name: str = ""

    def figure(self, figsize: Tuple[float, float] = (7.0, 3.0)) -> Any:
        """The image and the loss curve; a matplotlib ``Figure`` (nothing is shown), drawn by
        :func:`captum_elfa.visualization.plot_inversion`."""
        from captum_elfa.visualization.figures import plot_inversion

        return plot_inversion(self, figsize)


def _check_lfa(lfa: Any, factor: Any) -> int:
    if not hasattr(lfa, "layer") or not hasattr(lfa, "forward_func"):
        raise CaptumElfaError(f"lfa must be a LayerFactorAnalysis, got {type(lfa).__name__}")
    if not hasattr(lfa, "loadings_"):
        raise NotFittedError(
            "invert_factor needs a fitted LayerFactorAnalysis; call lfa.fit(inputs) first "
            "(or LayerFactorAnalysis.load(path, model, layer))"
        )
    k = int(lfa.n_factors_)
    if not is_int(factor) or not 0 <= int(factor) < k:
        raise CaptumElfaError(f"factor={factor!r} is out of range; the model has {k} factors: choose 0 <= factor < {k}")
    return int(factor)


def inversion_loss(
    act: Tensor, target: Tensor, mean: Optional[Tensor] = None, inv_std: Optional[Tensor] = None
) -> Tensor:
    r"""``||A - tile(w)||^2 / (||tile(w)||^2 + 1e-8)``, summed over the batch.

    ``act`` is ``[N, C, H, W]``, ``target`` the ``[C]`` loading vector (tiled over every pixel).
    With ``mean`` and ``inv_std`` (``[C]``) the activation is first standardised:
    ``(A - mean) * inv_std``.
    """
    a = act
    if (mean is None) != (inv_std is None):
        raise CaptumElfaError("mean and inv_std standardise together: give both or neither")
    if mean is not None and inv_std is not None:
        a = (a - mean[None, :, None, None]) * inv_std[None, :, None, None]
    t = target[None, :, None, None].expand_as(a)
    return ((a - t) ** 2).sum() / ((t**2).sum() + 1e-8)


def invert_factor(
    lfa: Any,
    factor: int,
    input_shape: Sequence[int],
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    method: str = "fft",
    seed: int = 0,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    standardize: bool = True,
    value_range: Sequence[float] = (0.0, 1.0),
    transforms: Any = "auto",
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    init: Optional[Tensor] = None,
    additional_forward_args: Any = None,
) -> InversionResult:
    r"""Intrinsic features inversion (ELFA): an image whose activation at ``lfa.layer`` matches
    factor ``factor``'s loading vector tiled over every pixel of the layer.

    Minimises ``||A(img) - tile(W[:, k])||^2 / (||tile(W[:, k])||^2 + 1e-8)`` where ``A`` is the
    layer's output for ``img`` (captured by a forward hook on ``lfa.layer`` while running
    ``lfa.forward_func``; the rest of the model is not run).

    ``standardize=True`` (default) compares the *standardised* activation
    ``(A - lfa.mean_) / lfa.std_`` (dead channels: 0) with the loadings. This is the well-defined
    objective: the factor model ``x = W f + e`` is fitted on standardised channels, so
    ``W[:, k]`` is the expected standardised activation of a pixel whose factor ``k`` is one
    standard deviation above average and the other factors average; the loadings are
    correlations, in the units of the standardised channels. ``standardize=False`` is the
    reference's objective (raw activations against the loadings): it mixes units (a ReLU
    channel's raw activation is non-negative and on an arbitrary scale, a loading is a
    correlation in [-1, 1]), so its optimum depends on the channels' scales rather than on the
    factor alone.

    Args:
        lfa (LayerFactorAnalysis): a fitted ELFA model.
        factor (int): the factor, ``0 <= factor < lfa.n_factors_``.
        input_shape: one input image's shape ``(C, H, W)`` (or ``(1, C, H, W)``).
        steps (int, optional): optimisation steps. Default: 256 (``fft``), 100 (``pixel``, the
                    reference's).
        lr (float, optional): Adam's learning rate (``fft``) or the step size of the normalised
                    gradient (``pixel``). Default: 0.05 (``fft``), 0.01 (``pixel``, the reference's).
        method (str): ``"fft"`` (default): a Fourier-parameterised image with decorrelated colour
                    and random jitter / scale / rotation (lucid's recipe), optimised by Adam;
                    ``"pixel"``: the reference's plain gradient descent on pixels,
                    ``x <- clip(x - lr * g / std(g), low, high)``.
        seed (int): seeds the initial image and the random transforms (a local
                    ``torch.Generator``; the global RNG is untouched). Default: 0. Runs are
                    bitwise identical on the CPU; on CUDA, ``grid_sample``'s and convolutions'
                    backward passes may not be unless ``torch.use_deterministic_algorithms(True)``.
        progress (bool): show a tqdm progress bar. Default: True.
        device: where to optimise. Default: the model's device.
        standardize (bool): compare standardised activations (default) or raw ones (reference).
        value_range (tuple): the model's valid pixel range. Default: (0, 1). (The reference
                    clips to (-1, 1), its preprocessing's range.)
        transforms: ``"auto"`` (standard transforms for ``fft``, none for ``pixel``),
                    ``"standard"``, None, or a callable / list of callables
                    ``t(images, generator)`` (see :mod:`captum_elfa.optim.transforms`).
        sd (float): scale of the random initialisation. Default: 0.01.
        decay_power (float): ``fft`` only: the 1/f spectrum exponent. Default: 1.
        decorrelate (bool): ``fft`` only: decorrelate RGB colours. Default: True.
        init (Tensor, optional): ``pixel`` only: the starting image (the reference starts from a
                    preprocessed input image). Default: mid-range plus small noise.
        additional_forward_args: extra arguments passed to the model after the image.

    Returns:
        InversionResult: ``image`` ``[1, C, H, W]``, ``losses``, ``initial_loss``,
        ``final_loss`` and ``figure()``.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.conv2).fit(images)
        >>> res = invert_factor(lfa, 0, (1, 28, 28), seed=0)
        >>> res.image.shape, res.final_loss < res.initial_loss
        >>> fig = res.figure()
    """
    factor = _check_lfa(lfa, factor)
    steps, lr = check_steps_lr(method, steps, lr)
    seed = check_seed(seed)
    shape = input_shape4(input_shape, 1)
    dev = resolve_device(lfa.forward_func, lfa.layer, device)
    transform = resolve_transforms(transforms, method, min(shape[2:]))
    param = make_param(method, shape, seed, value_range, dev, sd, decay_power, decorrelate, init)
    generator = torch.Generator().manual_seed(seed + 1)

    layout = getattr(lfa, "layout", None)
    layout_kw = {} if layout is None else layout.kwargs()
    with LayerProbe(lfa.forward_func, lfa.layer, additional_forward_args, **layout_kw) as probe:
        with torch.no_grad():
            img0 = param()
        act0 = probe(img0).detach()
        c = int(act0.shape[1])
        if c != lfa.n_channels_:
            raise CaptumElfaError(
                f"layer '{probe.layer_name}' has {c} channels but the model was fitted on {lfa.n_channels_}; use the layer it was fitted on"
            )
        dtype = act0.dtype
        target = lfa.loadings_[:, factor].to(device=act0.device, dtype=dtype)
        mean = inv_std = None
        if standardize:
            std = lfa.std_.to(torch.float64)
            inv = torch.where(std > 0, 1.0 / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(std))
            inv[getattr(lfa, "dead_channels_", torch.zeros(0, dtype=torch.long))] = 0.0
            mean = lfa.mean_.to(device=act0.device, dtype=dtype)
            inv_std = inv.to(device=act0.device, dtype=dtype)

        def loss_fn(x: Tensor) -> Tensor:
            return inversion_loss(probe(x), target, mean, inv_std)

        initial = float(inversion_loss(act0, target, mean, inv_std))
        losses = optimise(param, loss_fn, method, steps, lr, transform, generator, progress, f"invert factor {factor}")
        with torch.no_grad():
            image = param().detach()
        final = float(inversion_loss(probe(image).detach(), target, mean, inv_std))
        name = probe.layer_name

    return InversionResult(
        image=image,
        losses=losses,
        initial_loss=initial,
        final_loss=final,
        factor=factor,
        method=method,
        standardize=bool(standardize),
        value_range=param.value_range,
        seed=seed,
        layer_name=name,
    )
