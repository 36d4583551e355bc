"""The private parts of Captum's API that captum_elfa uses, in one place.

Captum does not promise these names across releases; everything else of captum_elfa imports
only Captum's public API (``captum.attr``, ``captum.log``) and these wrappers. Each wrapper
uses Captum's own function when the installed version has it with the expected signature and
otherwise an equivalent local implementation (tested against Captum's in
``tests/test_captum_compat.py`` on every supported version: 0.8 and 0.9).

- :func:`expand_target` / :func:`expand_additional_forward_args`: repeat a target and the extra
  forward arguments ``n`` times along the batch, as for ``n`` stacked copies of the inputs
  (``captum._utils.common._expand_target`` / ``_expand_additional_forward_args``).
- :data:`SUPPORTED_METHODS` / :func:`approximation_parameters`: the integral approximations of
  integrated gradients (``captum.attr._utils.approximation_methods``).
- :class:`DistributionNoiseTunnel`: ``NoiseTunnel`` drawing its additive noise from a
  distribution (overrides ``NoiseTunnel._add_noise_to_inputs``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from captum.attr import Attribution, NoiseTunnel
from torch import Tensor

__all__ = [
    "SUPPORTED_METHODS",
    "approximation_parameters",
    "expand_target",
    "expand_additional_forward_args",
    "DistributionNoiseTunnel",
    "noise_tunnel_override_supported",
    "CAPTUM_PRIVATE_API",
]

#: which private Captum names were found in the installed version (for diagnostics and tests)
CAPTUM_PRIVATE_API: dict = {}

try:  # pragma: no branch - depends on the installed captum
    from captum._utils.common import _expand_additional_forward_args as _captum_expand_args
    from captum._utils.common import _expand_target as _captum_expand_target

    CAPTUM_PRIVATE_API["expand"] = True
except ImportError:  # pragma: no cover - a captum without them
    _captum_expand_args = None
    _captum_expand_target = None
    CAPTUM_PRIVATE_API["expand"] = False

try:  # pragma: no branch
    from captum.attr._utils.approximation_methods import SUPPORTED_METHODS as _CAPTUM_METHODS
    from captum.attr._utils.approximation_methods import approximation_parameters as _captum_approx

    CAPTUM_PRIVATE_API["approximation_methods"] = True
except ImportError:  # pragma: no cover
    _CAPTUM_METHODS = None
    _captum_approx = None
    CAPTUM_PRIVATE_API["approximation_methods"] = False


# -- expansion ----------------------------------------------------------------------------------
def _local_expand_target(target: Any, n: int) -> Any:
    if isinstance(target, list):
        return target * n
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat(n) if target.dim() == 1 else target.repeat((n,) + (1,) * (target.dim() - 1))
    return target


def _local_expand_args(args: Optional[Tuple[Any, ...]], n: int) -> Optional[Tuple[Any, ...]]:
    if args is None:
        return None
    args = args if isinstance(args, tuple) else (args,)
    return tuple(a.repeat((n,) + (1,) * (a.dim() - 1)) if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)


def expand_target(target: Any, n: int) -> Any:
    """``target`` for ``n`` stacked copies of the inputs (Captum's ``_expand_target``, repeat).

    Args:
        target (None, int, list or Tensor): Captum's target.
        n (int): the number of copies.

    Returns:
        the target repeated ``n`` times along the batch (an int or a single-element target
        unchanged).
    """
    if _captum_expand_target is not None:
        return _captum_expand_target(target, n)
    return _local_expand_target(target, n)  # pragma: no cover


def expand_additional_forward_args(args: Optional[Tuple[Any, ...]], n: int) -> Optional[Tuple[Any, ...]]:
    """``additional_forward_args`` for ``n`` stacked copies of the inputs: every Tensor with a
    batch dimension repeated ``n`` times along it (Captum's ``_expand_additional_forward_args``).

    Args:
        args (tuple, optional): the extra forward arguments.
        n (int): the number of copies.

    Returns:
        tuple or None: the expanded arguments.
    """
    if _captum_expand_args is not None:
        return _captum_expand_args(args, n)
    return _local_expand_args(args, n)  # pragma: no cover


# -- integral approximations ----------------------------------------------------------------------
_RIEMANN = ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"]

#: integral approximations of integrated gradients
SUPPORTED_METHODS: List[str] = list(_CAPTUM_METHODS) if _CAPTUM_METHODS is not None else _RIEMANN + ["gausslegendre"]


def _local_approximation_parameters(
    method: str,
) -> Tuple[Callable[[int], List[float]], Callable[[int], List[float]]]:
    if method == "gausslegendre":

        def gl_steps(n: int) -> List[float]:
            return list(0.5 * np.polynomial.legendre.leggauss(n)[1])

        def gl_alphas(n: int) -> List[float]:
            return list(0.5 * (1 + np.polynomial.legendre.leggauss(n)[0]))

        return gl_steps, gl_alphas
    if method not in _RIEMANN:
        raise ValueError(f"Invalid integral approximation method name: {method}")

    def steps(n: int) -> List[float]:
        deltas = [1 / n] * n
        if method == "riemann_trapezoid":
            deltas[0] /= 2
            deltas[-1] /= 2
        return deltas

    def alphas(n: int) -> List[float]:  # float32 points, as Captum's
        if method == "riemann_trapezoid":
            return torch.linspace(0, 1, n).tolist()
        if method == "riemann_left":
            return torch.linspace(0, 1 - 1 / n, n).tolist()
        if method == "riemann_middle":
            return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
        return torch.linspace(1 / n, 1, n).tolist()

    return steps, alphas


def approximation_parameters(
    method: str,
) -> Tuple[Callable[[int], List[float]], Callable[[int], List[float]]]:
    """``(step_sizes(n), alphas(n))`` of an integral approximation in :data:`SUPPORTED_METHODS`
    (Captum's ``approximation_parameters``).

    Args:
        method (str): e.g. ``"gausslegendre"`` or ``"riemann_middle"``.

    Returns:
        two callables of ``n``: the weights and the points in [0, 1].
    """
    if _captum_approx is not None:
        return _captum_approx(method)
    return _local_approximation_parameters(method)  # pragma: no cover


# -- NoiseTunnel with a noise distribution ----------------------------------------------------------
_OVERRIDE_PARAMS = ("self", "nt_samples_partition", "inputs", "stdevs")


def noise_tunnel_override_supported() -> bool:
    """True if the installed ``NoiseTunnel`` draws its noise in
    ``_add_noise_to_inputs(self, nt_samples_partition, inputs, stdevs)`` (Captum 0.6 to 0.9)."""
    fn = getattr(NoiseTunnel, "_add_noise_to_inputs", None)
    if fn is None:
        return False
    return tuple(inspect.signature(fn).parameters)[:4] == _OVERRIDE_PARAMS


class DistributionNoiseTunnel(NoiseTunnel):
    """Captum's ``NoiseTunnel`` drawing its additive noise with ``sample(shape, like)``.

    ``sample`` receives the ``torch.Size`` of the repeated batch ``(N * n, ...)`` and a Tensor
    of that shape (for device and dtype) and returns the noise. Every other step (the repeats,
    the expansion of target and extra arguments, the smoothgrad average) is Captum's.

    Args:
        attribution_method (Attribution): the attribution to smooth.
        sample (Callable): ``sample(shape, like) -> Tensor``.

    Raises:
        RuntimeError: on a Captum whose ``NoiseTunnel`` has no ``_add_noise_to_inputs`` hook
                    with the expected signature.
    """

    def __init__(self, attribution_method: Attribution, sample: Callable[[torch.Size, Tensor], Tensor]) -> None:
        if not noise_tunnel_override_supported():  # pragma: no cover - checked on every supported captum
            import captum

            raise RuntimeError(
                f"captum {captum.__version__}: NoiseTunnel._add_noise_to_inputs changed; noise from a "
                "distribution is not available with this version (a number std works)"
            )
        super().__init__(attribution_method)
        self.sample = sample

    def _add_noise_to_inputs(
        self, nt_samples_partition: int, inputs: Tuple[Tensor, ...], stdevs: Any
    ) -> Tuple[Tensor, ...]:
        noisy = []
        for inp in inputs:
            expanded = inp.repeat_interleave(nt_samples_partition, dim=0)
            x = expanded + self.sample(expanded.shape, expanded)
            noisy.append(x.requires_grad_() if self.is_gradient_method else x)
        return tuple(noisy)
