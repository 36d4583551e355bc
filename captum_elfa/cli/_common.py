"""Shared pieces of the ``captum-elfa`` command: constants, the error type, safe printing."""

from __future__ import annotations

import sys
import warnings
from typing import Any, List

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_PCACE_IMAGES = 10


class CliError(Exception):
    """An error in the command's arguments or inputs: reported on stderr, exit status 2."""


def _clean(text: str) -> str:
    """``text`` with control characters (terminal escape codes in file names, ...) escaped as
    ``\\xNN`` / ``\\uNNNN``; newlines and tabs are kept."""
    import unicodedata

    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _log(msg: str) -> None:
    print(_clean(msg), file=sys.stderr, flush=True)


class _Warnings:
    """Collect warnings (e.g. a Heywood case) as one-line messages: logged now, kept for the report."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def __enter__(self) -> _Warnings:
        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        for w in self._caught:
            msg = f"{w.category.__name__}: {w.message}"
            if msg not in self.messages:
                self.messages.append(msg)
                _log(f"  warning: {msg}")
