"""Errors and argument checks shared by the package."""

from __future__ import annotations

import math
import numbers
from types import FrameType
from typing import Any, Iterable, Optional

import numpy as np
import torch


class CaptumElfaError(ValueError):
    """Raised for invalid input to captum_elfa; the message names the bad value and what is valid."""


class NotFittedError(CaptumElfaError, AttributeError):
    """Raised when a method that needs a fitted model is called before ``fit``."""


class TooFewSamplesError(CaptumElfaError):
    """Raised when the data hold too few samples (pixels or images) for the statistic asked for."""


def check_choice(name: str, value: Any, valid: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``valid``, else raise naming it and the valid choices."""
    valid = list(valid)
    if value not in valid:
        raise CaptumElfaError(f"{name}={value!r} is not valid; choose one of {valid}")
    return value


def is_int(value: Any) -> bool:
    """True for Python, numpy and 0-d integer torch values; False for bools and everything else."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
        return True
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_floating_point:
        return value.dtype not in (torch.bool, torch.complex64, torch.complex128)
    return False


def is_real(value: Any) -> bool:
    """True for Python, numpy and 0-d torch real numbers (ints included); False for bools."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        return value.dtype not in (torch.bool, np.bool_) and not (
            isinstance(value, torch.Tensor) and value.dtype.is_complex
        )
    return False


def check_int(name: str, value: Any, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """Return ``value`` as an int, or raise naming ``name``, the value and the valid range.

    Args:
        name (str): the argument's name, as the user wrote it.
        value (Any): an int-like value (Python, numpy or 0-d torch integer; not a bool).
        minimum (int, optional): smallest valid value.
        maximum (int, optional): largest valid value.

    Returns:
        int: ``int(value)``.

    Examples::

        >>> check_int("batch_size", 32, minimum=1)
        32
    """
    rng = _range_text(minimum, maximum)
    if not is_int(value):
        raise CaptumElfaError(f"{name}={value!r} is not valid; expected an int{rng}")
    out = int(value)
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        raise CaptumElfaError(f"{name}={value!r} is not valid; expected an int{rng}")
    return out


def check_float(
    name: str,
    value: Any,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """Return ``value`` as a finite float within the bounds, or raise naming the value and the bounds.

    Args:
        name (str): the argument's name.
        value (Any): a real number (not a bool).
        minimum, maximum (float, optional): bounds; ``open_min``/``open_max`` exclude them.

    Returns:
        float: ``float(value)``.

    Examples::

        >>> check_float("alpha", 0.5, minimum=0.0, maximum=1.0)
        0.5
    """
    lo = "" if minimum is None else ("(" if open_min else "[") + f"{minimum:g}"
    hi = "" if maximum is None else f"{maximum:g}" + (")" if open_max else "]")
    rng = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (lo or hi) else ""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0 and not isinstance(value, bool):
        ok = value.dtype != torch.bool and value.dtype != np.bool_
    out = float(value) if ok else math.nan
    bad = not ok or not math.isfinite(out)
    if not bad and minimum is not None:
        bad = out <= minimum if open_min else out < minimum
    if not bad and maximum is not None:
        bad = out >= maximum if open_max else out > maximum
    if bad:
        raise CaptumElfaError(f"{name}={value!r} is not valid; expected a finite number{rng}")
    return out


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (Python or numpy), else raise naming it."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise CaptumElfaError(f"{name}={value!r} is not valid; expected True or False")


def _range_text(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes ``warnings.warn``, called by the caller of this function,
    point at the first frame outside captum_elfa (and Captum's logging wrappers): the user's line.

    Examples::

        >>> warnings.warn("message", UserWarning, stacklevel=user_stacklevel())
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: Optional[FrameType] = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(package) or f"{os.sep}captum{os.sep}log{os.sep}" in frame.f_code.co_filename
    ):
        frame = frame.f_back
        level += 1
    return level
