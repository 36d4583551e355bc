"""tqdm progress bars that can be switched off."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def n_batches(inputs: Any, batch_size: int) -> Optional[int]:
    """Number of batches ``inputs`` will give, when it can be known without iterating."""
    shape = getattr(inputs, "shape", None)
    if shape is not None and len(shape) > 0:
        return math.ceil(shape[0] / batch_size)
    try:
        return len(inputs)
    except TypeError:
        return None


def progress_bar(it: Iterable[T], enabled: bool, desc: str, total: Optional[int] = None) -> Iterator[T]:
    """Wrap ``it`` in a tqdm bar (to stderr) when ``enabled``; otherwise return it unchanged."""
    if not enabled:
        return iter(it)
    from tqdm.auto import tqdm

    return iter(tqdm(it, desc=desc, unit="batch", leave=False, total=total))
