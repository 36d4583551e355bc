"""Errors and argument checks shared by the package."""

from __future__ import annotations

from typing import Any, Iterable


class CaptumElfaError(ValueError):
    """Raised for invalid input to captum_elfa; the message names the bad value and what is valid."""


class NotFittedError(CaptumElfaError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


class TooFewSamplesError(CaptumElfaError):
    """Raised when the data hold too few samples (pixels or images) for the statistic asked for."""


def check_choice(name: str, value: Any, valid: Iterable[Any]) -> Any:
    valid = list(valid)
    if value not in valid:
        raise CaptumElfaError(f"{name}={value!r} is not valid; choose one of {valid}")
    return value
