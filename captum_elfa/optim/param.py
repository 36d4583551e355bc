"""Image parameterisations for feature visualisation: a decorrelated Fourier-space image.

The recipe is lucid's / lucent's (Olah, Mordvintsev, Schubert, *Feature Visualization*, Distill
2017), re-implemented here: the image is stored as its 2-D real FFT, each frequency scaled by
``1 / max(|f|, 1/max(H, W)) ** decay_power`` so that gradient steps have roughly the same effect
at every scale (natural images have a 1/f spectrum); the colour channels are mixed by the square
root of the ImageNet colour-correlation matrix so that the optimised channels are decorrelated;
finally a sigmoid maps the values into the model's valid pixel range.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, check_float

__all__ = ["FFTImage", "PixelImage", "fft_image", "pixel_image", "color_decorrelation_matrix", "rfft2d_freqs"]

# square root (from its SVD) of the colour-correlation matrix of ImageNet images, as lucid/lucent
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)


def color_decorrelation_matrix(channels: int) -> Tensor:
    """The ``[C, C]`` matrix mixing the optimised channels into image channels.

    For 3 (RGB) channels: lucent's colour-correlation square root divided by its largest column
    norm; for any other number of channels (1, grey): the identity.
    """
    if channels == 3:
        m = COLOR_CORRELATION_SVD_SQRT
        return (m / torch.linalg.norm(m, dim=0).max()).to(torch.float32)
    return torch.eye(channels, dtype=torch.float32)


def rfft2d_freqs(h: int, w: int) -> Tensor:
    """Magnitude of the 2-D spatial frequencies of ``torch.fft.rfft2`` of an ``h x w`` image."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def _shape4(shape: Sequence[int]) -> Tuple[int, int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
        ok = all(int(s) == s and not isinstance(s, bool) for s in shape)
    except (TypeError, ValueError):
        dims, ok = (), False
    if len(dims) == 3:
        dims = (1,) + dims
    if not ok or len(dims) != 4 or min(dims) < 1:
        raise CaptumElfaError(
            f"shape={tuple(shape) if isinstance(shape, (tuple, list)) else shape!r} is not valid; "
            "expected (C, H, W) or (N, C, H, W) with positive ints"
        )
    return dims[0], dims[1], dims[2], dims[3]


def _check_range(value_range: Sequence[float]) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise CaptumElfaError(f"value_range={value_range!r} is not valid; expected (low, high)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CaptumElfaError(f"value_range={value_range!r} is not valid; expected finite low < high")
    return lo, hi


class FFTImage(nn.Module):
    """A batch of images parameterised by their (scaled) Fourier spectrum.

    Calling the module returns the images, ``[N, C, H, W]`` in ``value_range``. Its only
    parameter is ``spectrum`` (``[N, C, H, W//2+1, 2]``: real and imaginary parts), drawn from
    ``N(0, sd^2)`` with a local ``torch.Generator`` seeded by ``seed``: the same seed gives the same
    image on every run.

    Args:
        shape: ``(C, H, W)`` or ``(N, C, H, W)``.
        sd (float): standard deviation of the initial spectrum. Default: 0.01.
        decay_power (float): exponent of the ``1/f`` frequency scaling. Default: 1.
        seed (int): seed of the initial spectrum. Default: 0.
        decorrelate (bool): mix the colours with :func:`color_decorrelation_matrix`
                    (identity unless C is 3). Default: True.
        value_range (tuple): the valid pixel range; a sigmoid maps into it. Default: (0, 1).
        device: where the parameter lives. Default: CPU.
    """

    scale: Tensor  # buffers, registered in __init__
    mix: Tensor

    def __init__(
        self,
        shape: Sequence[int],
        sd: float = 0.01,
        decay_power: float = 1.0,
        seed: int = 0,
        decorrelate: bool = True,
        value_range: Sequence[float] = (0.0, 1.0),
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        super().__init__()
        n, c, h, w = _shape4(shape)
        try:
            sd = check_float("sd", sd, minimum=0.0, open_min=True)
        except CaptumElfaError:
            raise CaptumElfaError(f"sd={sd!r} is not valid; expected a positive float") from None
        self.shape = (n, c, h, w)
        self.value_range = _check_range(value_range)
        g = torch.Generator().manual_seed(int(seed))
        spectrum = torch.randn((n, c, h, w // 2 + 1, 2), generator=g, dtype=torch.float32) * sd
        self.spectrum = nn.Parameter(spectrum.to(device))
        freqs = rfft2d_freqs(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
        self.register_buffer("scale", scale.to(torch.float32)[None, None, :, :, None].to(device))
        mix = color_decorrelation_matrix(c) if decorrelate else torch.eye(c)
        self.register_buffer("mix", mix.to(device))

    def forward(self) -> Tensor:
        n, c, h, w = self.shape
        spec = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        img = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0  # lucid's "magic" 4
        img = torch.einsum("dc,nchw->ndhw", self.mix, img)
        lo, hi = self.value_range
        return lo + (hi - lo) * torch.sigmoid(img)


class PixelImage(nn.Module):
    """A batch of images stored pixel by pixel (the reference's parameterisation).

    Initialised at ``init`` when given, else at the middle of ``value_range`` plus
    ``sd * (high - low)`` Gaussian noise from a generator seeded by ``seed``; clipped to the range.
    """

    def __init__(
        self,
        shape: Sequence[int],
        sd: float = 0.01,
        seed: int = 0,
        value_range: Sequence[float] = (0.0, 1.0),
        init: Optional[Tensor] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        super().__init__()
        n, c, h, w = _shape4(shape)
        self.shape = (n, c, h, w)
        self.value_range = lo, hi = _check_range(value_range)
        if init is not None:
            if not isinstance(init, Tensor):
                raise CaptumElfaError(f"init must be a Tensor, got {type(init).__name__}")
            t = init.detach().to(torch.float32)
            if t.dim() == 3:
                t = t[None]
            if tuple(t.shape) != (n, c, h, w):
                raise CaptumElfaError(f"init has shape {tuple(init.shape)}; expected {(n, c, h, w)}")
        else:
            g = torch.Generator().manual_seed(int(seed))
            t = 0.5 * (lo + hi) + sd * (hi - lo) * torch.randn((n, c, h, w), generator=g, dtype=torch.float32)
        self.pixels = nn.Parameter(t.clamp(lo, hi).to(device))

    def forward(self) -> Tensor:
        return self.pixels


def fft_image(
    shape: Sequence[int],
    sd: float = 0.01,
    decay_power: float = 1.0,
    seed: int = 0,
    decorrelate: bool = True,
    value_range: Sequence[float] = (0.0, 1.0),
    device: Optional[Union[str, torch.device]] = None,
) -> FFTImage:
    """A seeded :class:`FFTImage`; call it to get the ``[N, C, H, W]`` images.

    Examples::

        >>> param = fft_image((3, 32, 32), seed=0)
        >>> img = param()                     # [1, 3, 32, 32] in (0, 1)
        >>> opt = torch.optim.Adam(param.parameters(), lr=0.05)
    """
    return FFTImage(
        shape,
        sd=sd,
        decay_power=decay_power,
        seed=seed,
        decorrelate=decorrelate,
        value_range=value_range,
        device=device,
    )


def pixel_image(
    shape: Sequence[int],
    sd: float = 0.01,
    seed: int = 0,
    value_range: Sequence[float] = (0.0, 1.0),
    init: Optional[Tensor] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> PixelImage:
    """A seeded :class:`PixelImage` (plain pixels, clipped to ``value_range`` by the optimiser)."""
    return PixelImage(shape, sd=sd, seed=seed, value_range=value_range, init=init, device=device)
