"""The optimisation loop shared by inversion and activation maximisation."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture import CallIndex, LayerCapture, TokenGrid, model_device
from captum_elfa._validation import CaptumElfaError, check_choice, check_int, is_int, is_real
from captum_elfa.optim.param import FFTImage, PixelImage, _shape4
from captum_elfa.optim.transforms import Compose, standard_transforms

METHODS = ("fft", "pixel")
DEFAULT_STEPS = {"fft": 256, "pixel": 100}
DEFAULT_LR = {"fft": 0.05, "pixel": 0.01}


class _Stop(Exception):
    """Raised from the forward hook once the layer's output is captured: the rest of the model
    never runs (cheaper, and no later in-place op can change the captured tensor)."""


class LayerProbe:
    """Inside ``with``: ``probe(x)`` returns the layer's output ``(N, C, H, W)`` with autograd on.

    The model is put in eval mode and its parameters' ``requires_grad`` set to False; on exit the
    hook is removed and every flag and buffer restored (by :class:`LayerCapture`'s
    ``model_guard``), also on error. The layout keywords are :class:`LayerCapture`'s.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        additional_forward_args: Any = None,
        *,
        channel_dim: Optional[int] = None,
        token_grid: TokenGrid = None,
        drop_tokens: int = 0,
        call_index: CallIndex = None,
    ) -> None:
        self.extra = additional_forward_args
        self._act: Optional[Tensor] = None

        def on_output(act: Tensor, index: int) -> None:
            self._act = act
            raise _Stop()

        self.cap = LayerCapture(
            forward_func,
            layer,
            on_output,
            eval_mode=True,
            grad=True,
            freeze_grad=True,
            channel_dim=channel_dim,
            token_grid=token_grid,
            drop_tokens=drop_tokens,
            call_index=call_index,
        )
        self.layer_name = self.cap.layer_name

    def __enter__(self) -> LayerProbe:
        self.cap.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._act = None
        self.cap.__exit__(*exc)

    def __call__(self, x: Tensor) -> Tensor:
        self._act = None
        try:
            self.cap.run(x, 0, self.extra)
        except _Stop:
            pass
        if self._act is None:  # pragma: no cover - LayerCapture raises first
            raise CaptumElfaError(f"layer '{self.layer_name}' was never called by the model's forward pass")
        act = self._act  # (N, C, H, W): LayerCapture converted the layout
        self._act = None
        return act


def resolve_device(forward_func: Callable, layer: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    d = model_device(forward_func, layer)
    return d if d is not None else torch.device("cpu")


def check_steps_lr(method: str, steps: Optional[int], lr: Optional[float]) -> Tuple[int, float]:
    check_choice("method", method, METHODS)
    if steps is None:
        steps = DEFAULT_STEPS[method]
    steps = check_int("steps", steps, minimum=1)
    if lr is None:
        lr = DEFAULT_LR[method]
    if not is_real(lr) or not math.isfinite(float(lr)) or float(lr) <= 0:
        raise CaptumElfaError(f"lr={lr!r} is not valid; expected a positive finite float")
    return steps, float(lr)


def check_seed(seed: Any) -> int:
    if not is_int(seed):
        raise CaptumElfaError(f"seed={seed!r} is not valid; expected an int")
    return int(seed)


def input_shape4(input_shape: Sequence[int], batch: int) -> Tuple[int, int, int, int]:
    n, c, h, w = _shape4(input_shape)
    if n != 1:
        raise CaptumElfaError(
            f"input_shape={tuple(input_shape)} is not valid; give one image's shape (C, H, W) or (1, C, H, W)"
        )
    return batch, c, h, w


def resolve_transforms(transforms: Any, method: str, size: int) -> Optional[Compose]:
    if isinstance(transforms, str):
        check_choice("transforms", transforms, ("auto", "standard"))
        if transforms == "auto" and method == "pixel":
            return None
        return standard_transforms(size)
    if transforms is None:
        return None
    if isinstance(transforms, Compose):
        return transforms
    if callable(transforms):
        return Compose([transforms])
    return Compose(transforms)


def make_param(
    method: str,
    shape: Tuple[int, int, int, int],
    seed: int,
    value_range: Sequence[float],
    device: torch.device,
    sd: float,
    decay_power: float,
    decorrelate: bool,
    init: Optional[Tensor],
) -> Union[FFTImage, PixelImage]:
    if method == "fft":
        if init is not None:
            raise CaptumElfaError("init is only used with method='pixel' (the reference's plain gradient descent)")
        return FFTImage(
            shape,
            sd=sd,
            decay_power=decay_power,
            seed=seed,
            decorrelate=decorrelate,
            value_range=value_range,
            device=device,
        )
    return PixelImage(shape, sd=sd, seed=seed, value_range=value_range, init=init, device=device)


def optimise(
    param: Union[FFTImage, PixelImage],
    loss_fn: Callable[[Tensor], Tensor],
    method: str,
    steps: int,
    lr: float,
    transforms: Optional[Compose],
    generator: torch.Generator,
    progress: bool,
    desc: str,
    record: Optional[Callable[[Tensor], None]] = None,
) -> List[float]:
    """Minimise ``loss_fn(transforms(param()))``; returns the loss of every step.

    ``fft``: Adam on the spectrum. ``pixel``: the reference's step ``x <- clip(x - lr * g / std(g))``.
    """
    losses: List[float] = []
    it: Any = range(steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(it, desc=desc, unit="step", leave=False)
        it = bar
    opt = torch.optim.Adam(param.parameters(), lr=lr) if method == "fft" else None
    lo, hi = param.value_range
    try:
        for _ in it:
            img = param()
            x = transforms(img, generator) if transforms is not None else img
            loss = loss_fn(x)
            if not torch.isfinite(loss):
                raise CaptumElfaError(f"the objective became {loss.item()} (NaN or Inf); lower lr or check the model")
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                # method "pixel": make_param built a PixelImage
                assert isinstance(param, PixelImage), "method='pixel' optimises a PixelImage"
                pix = param.pixels
                (g,) = torch.autograd.grad(loss, pix)
                g = g / (g.std(unbiased=False) + 1e-8)
                with torch.no_grad():
                    pix.sub_(lr * g).clamp_(lo, hi)
            value = float(loss.detach())
            losses.append(value)
            if record is not None:
                record(x)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return losses


# -- figures: drawn by captum_elfa.visualization (these names are kept for the optim modules) --
def display_image(img: Tensor, value_range: Sequence[float]) -> Tuple[Any, dict]:
    """``[C, H, W]`` -> an array for ``imshow`` and its keyword arguments
    (:func:`captum_elfa.visualization._synthesis_figures.display_image`)."""
    from captum_elfa.visualization._synthesis_figures import display_image as _display

    return _display(img, value_range)


def show(ax: Any, img: Tensor, value_range: Sequence[float], title: str) -> None:
    """Draw ``img`` on ``ax`` (:func:`captum_elfa.visualization._synthesis_figures.show_image`)."""
    from captum_elfa.visualization._synthesis_figures import show_image

    show_image(ax, img, value_range, title)
