"""Seeded random image transforms for feature visualisation (lucent's jitter / scale / rotate).

Every transform is a callable ``t(images, generator) -> images`` keeping the shape
``[N, C, H, W]``; its random parameters are drawn on the CPU from the ``torch.Generator`` it is
given (never the global RNG), so a seeded optimisation is reproducible. The same parameters are
applied to every image of the batch.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, is_int

__all__ = ["Jitter", "RandomScale", "RandomRotate", "Compose", "standard_transforms"]

Transform = Callable[[Tensor, torch.Generator], Tensor]


def _pick(values: Sequence[float], generator: torch.Generator) -> float:
    i = int(torch.randint(len(values), (1,), generator=generator).item())
    return float(values[i])


class Jitter:
    """Shift the images by up to ``d`` pixels in each direction (``torch.roll``, circular)."""

    def __init__(self, d: int) -> None:
        if not is_int(d) or d < 0:
            raise CaptumElfaError(f"Jitter(d={d!r}): d must be a non-negative int")
        self.d = int(d)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.d == 0:
            return x
        dy, dx = (int(v) for v in torch.randint(-self.d, self.d + 1, (2,), generator=generator))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


class RandomScale:
    """Resize by a factor drawn from ``scales`` (``F.interpolate``, bilinear), then centre-crop or
    edge-pad back to the original size."""

    def __init__(self, scales: Sequence[float]) -> None:
        scales = [float(s) for s in scales]
        if not scales or min(scales) <= 0:
            raise CaptumElfaError(f"RandomScale(scales={scales!r}): expected positive factors")
        self.scales = scales

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        s = _pick(self.scales, generator)
        h, w = x.shape[2:]
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) == (h, w):
            return x
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if nh >= h and nw >= w:
            top, left = (nh - h) // 2, (nw - w) // 2
            return y[:, :, top : top + h, left : left + w]
        # pad (edge values) where smaller, crop where larger
        ph, pw = max(h - nh, 0), max(w - nw, 0)
        y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        top, left = (y.shape[2] - h) // 2, (y.shape[3] - w) // 2
        return y[:, :, top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"RandomScale({self.scales})"


class RandomRotate:
    """Rotate by an angle (degrees) drawn from ``degrees`` about the centre
    (``F.affine_grid`` + ``F.grid_sample``, bilinear, border padding)."""

    def __init__(self, degrees: Sequence[float]) -> None:
        degrees = [float(a) for a in degrees]
        if not degrees:
            raise CaptumElfaError("RandomRotate(degrees=[]): expected at least one angle")
        self.degrees = degrees

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        angle = _pick(self.degrees, generator)
        if angle == 0.0:
            return x
        a = math.radians(angle)
        c, s = math.cos(a), math.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device)
        theta = theta[None].expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomRotate({self.degrees})"


class Compose:
    """Apply transforms in order, each drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms: List[Transform] = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise CaptumElfaError(f"transform {t!r} is not callable")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for t in self.transforms:
            x = t(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def standard_transforms(size: Optional[int] = None) -> Compose:
    """lucent's standard transforms, scaled to the image size.

    Jitter by about 3.5% of the side (8 px at 224), random scale in ``1 +/- 0.1`` (11 steps),
    rotation in ``[-10, 10]`` degrees (0 more likely), a last jitter of half the first.
    """
    d = 8 if size is None else max(1, round(size * 8 / 224))
    return Compose(
        [
            Jitter(d),
            RandomScale([1 + (i - 5) / 50.0 for i in range(11)]),
            RandomRotate(list(range(-10, 11)) + 5 * [0]),
            Jitter(max(1, d // 2)),
        ]
    )
