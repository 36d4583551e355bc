"""The report's folder: checks of ``out_dir`` and duplicate images."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Union

from torch import Tensor


def _check_out_dir(out_dir: Union[str, os.PathLike]) -> Path:
    from captum_elfa._validation import CaptumElfaError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CaptumElfaError(f"out_dir {str(out)!r} exists and is not a folder; choose a folder (new or existing)")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise CaptumElfaError(f"out_dir {str(out)!r}: {str(parent)!r} is a file, not a folder")
    return out


def _distinct_images(images: Tensor) -> Tensor:
    """The images of a batch without exact duplicates (first occurrence kept, order kept)."""
    seen: set = set()
    keep: List[int] = []
    for i in range(images.shape[0]):
        h = hashlib.sha1(images[i].detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return images if len(keep) == images.shape[0] else images[keep]
