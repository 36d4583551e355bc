"""tqdm progress bars that can be switched off."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress_bar(it: Iterable[T], enabled: bool, desc: str) -> Iterator[T]:
    """Wrap ``it`` in a tqdm bar (to stderr) when ``enabled``; otherwise return it unchanged."""
    if not enabled:
        return iter(it)
    from tqdm.auto import tqdm

    return iter(tqdm(it, desc=desc, unit="batch", leave=False))
