"""``--images`` and ``--out``: find, check and read the images; the gallery; the output folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from captum_elfa.cli._common import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, CliError, _clean


class ImageFolderFlat:
    """Every image file under a folder (no class sub-folders needed), as normalised tensors."""

    def __init__(self, files: Sequence[Path], image_size: int, channels: int) -> None:
        from torchvision import transforms as T

        self.files = list(files)
        self.mode = "L" if channels == 1 else "RGB"
        steps = [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()]
        if channels == 3:
            steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        self.transform = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                img = to_mode(im, self.mode)
        except Exception as e:
            raise CliError(f"cannot read image {_clean(str(path))}: {type(e).__name__}: {_clean(str(e))}") from None
        return self.transform(img)


def to_mode(im: Any, mode: str) -> Any:
    """``im`` as an 8-bit ``"L"`` or ``"RGB"`` PIL image. 16-bit and 32-bit grayscale (modes
    ``I;16*``, ``I``, ``F``) are rescaled from their full range (65535 for 16 bits, the image's
    own maximum for ``I``/``F`` beyond 16 bits) instead of being clipped to white by
    ``convert``; palette and alpha images are composited on black by ``convert``."""
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        else:
            hi = float(a.max()) if a.size else 0.0
            top = 255.0 if hi <= 255 else (65535.0 if hi <= 65535 else hi)
        lo = min(0.0, float(a.min())) if a.size else 0.0
        a = np.clip((a - lo) / max(top - lo, 1e-12), 0.0, 1.0)
        im = Image.fromarray(np.round(a * 255.0).astype(np.uint8), mode="L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert(mode)


def find_images(folder: str, max_images: Optional[int], progress: bool) -> List[Path]:
    from PIL import Image

    root = Path(folder)
    if not root.exists():
        raise CliError(f"image folder not found: {_clean(folder)}")
    if not root.is_dir():
        raise CliError(f"--images {_clean(folder)} is not a folder")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as e:
        raise CliError(f"cannot list the image folder {_clean(folder)}: {type(e).__name__}: {_clean(str(e))}") from None
    if not files:
        raise CliError(f"no images found in {_clean(folder)} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    if max_images is not None:
        files = files[:max_images]
    it = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="checking images", unit="img", leave=False, file=sys.stderr)
    for p in it:  # headers only: fails early, naming the file, before any model work
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018
        except Exception as e:
            raise CliError(f"cannot read image {_clean(str(p))}: {type(e).__name__}: {_clean(str(e))}") from None
    return files


def check_out_dir(out: str) -> None:
    """Fail early when ``--out`` cannot be a folder (an existing file, or under one)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CliError(f"--out {_clean(out)} is an existing file, not a folder; choose a folder (new or existing)")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise CliError(f"--out {_clean(out)}: {_clean(str(parent))} is a file, not a folder")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CliError(f"--out {_clean(out)}: cannot write into {_clean(str(parent))} (permission denied)")
            break


def check_weights_file(path: str) -> None:
    """Fail early (before the model is built) when ``--weights`` names no readable file."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"weights file not found: {_clean(path)}")
    if not p.is_file():
        raise CliError(f"--weights {_clean(path)} is not a file")
    if not os.access(p, os.R_OK):
        raise CliError(f"weights file {_clean(path)} is not readable (permission denied)")


def gallery_indices(files: Sequence[Path], n: int, among: Optional[Sequence[int]] = None) -> List[int]:
    """Up to ``n`` indices of files with distinct contents (SHA-1 of the bytes), spread evenly
    over ``among`` (default: every file) rather than the first ``n`` in sorted order."""
    import hashlib

    import numpy as np

    pool = list(range(len(files))) if among is None else list(among)
    if not pool:
        return []
    # visit the pool in an evenly spread order: n evenly spaced positions, then 2n, 4n, ...
    m = len(pool)
    order: List[int] = []
    seen_pos: set = set()
    k = max(1, n)
    while True:
        for pos in np.linspace(0, m - 1, min(k, m)).round().astype(int).tolist():
            if pos not in seen_pos:
                seen_pos.add(pos)
                order.append(pos)
        if k >= m:
            break
        k *= 2
    picked: List[int] = []
    hashes: set = set()
    for pos in order:
        i = pool[pos]
        try:
            h = hashlib.sha1(Path(files[i]).read_bytes()).hexdigest()
        except OSError:
            continue
        if h in hashes:
            continue
        hashes.add(h)
        picked.append(i)
        if len(picked) == n:
            break
    return sorted(picked)
