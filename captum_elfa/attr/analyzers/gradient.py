"""The gradient family: Gradient, InputTimesGradient, IntegratedGradients (Captum's methods)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from captum.attr import InputXGradient, Saliency
from captum.attr import IntegratedGradients as _CaptumIntegratedGradients
from torch import Tensor

from captum_elfa._captum_compat import SUPPORTED_METHODS
from captum_elfa._validation import check_choice
from captum_elfa.attr.analyzers._checks import (
    Baseline,
    _baseline_rows,
    _check_baseline,
    _check_batch_size,
    _check_model,
    _check_n,
    _grad_leaf,
    _validate_baseline_shape,
)
from captum_elfa.attr.analyzers.base import Analyzer

__all__ = ["Gradient", "InputTimesGradient", "IntegratedGradients"]


class Gradient(Analyzer):
    r"""The gradient of the selected output with respect to the input (Captum ``Saliency``,
    ``abs=False``: the signed gradient, as ExplainableAI.jl). Heatmap preset ``"sensitivity"``.

    Args:
        model (nn.Module or Callable): the model (its forward function).

    Examples::

        >>> expl = analyze(x, Gradient(model))        # explains each sample's top output
        >>> expl.val.shape == x.shape
        True
    """

    name = "Gradient"
    preset = "sensitivity"

    def __init__(self, model: Callable) -> None:
        self.model = _check_model(model, "Gradient")
        self.attribution_method = Saliency(self.model)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        return self.attribution_method.attribute(
            _grad_leaf(inputs),
            target=target,
            abs=False,
            additional_forward_args=additional_forward_args,
        )


class InputTimesGradient(Analyzer):
    r"""Input times the gradient of the selected output (Captum ``InputXGradient``).
    Heatmap preset ``"attribution"``.

    Args:
        model (nn.Module or Callable): the model (its forward function).

    Examples::

        >>> expl = analyze(x, InputTimesGradient(model), target=3)
    """

    name = "InputTimesGradient"
    preset = "attribution"

    def __init__(self, model: Callable) -> None:
        self.model = _check_model(model, "InputTimesGradient")
        self.attribution_method = InputXGradient(self.model)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        return self.attribution_method.attribute(
            _grad_leaf(inputs), target=target, additional_forward_args=additional_forward_args
        )


class IntegratedGradients(Analyzer):
    r"""Integrated gradients (Captum ``IntegratedGradients`` with ``n_steps=n``).
    Heatmap preset ``"attribution"``. ``extras["convergence_delta"]`` holds Captum's
    completeness error per sample.

    Args:
        model (nn.Module or Callable): the model (its forward function).
        n (int): number of integration steps (Captum's ``n_steps``). Default: 50.
        baseline (None, float or Tensor): the reference input; None is zeros. A Tensor may have
                    the shape of one sample, ``(1, ...)`` or one baseline per sample
                    ``(N, ...)``. Default: None.
        method (str): Captum's integral approximation: ``"gausslegendre"`` (default),
                    ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` or
                    ``"riemann_trapezoid"``.
        batch_size (int, optional): Captum's ``internal_batch_size``. Default: None.

    Examples::

        >>> expl = analyze(x, IntegratedGradients(model, n=32))
        >>> expl.extras["convergence_delta"]
    """

    name = "IntegratedGradients"
    preset = "attribution"

    def __init__(
        self,
        model: Callable,
        n: int = 50,
        baseline: Baseline = None,
        method: str = "gausslegendre",
        batch_size: Optional[int] = None,
    ) -> None:
        self.model = _check_model(model, "IntegratedGradients")
        self.n = _check_n(n, "IntegratedGradients")
        self.baseline = _check_baseline(baseline, "IntegratedGradients")
        self.method = check_choice("method", method, SUPPORTED_METHODS)
        self.batch_size = _check_batch_size(batch_size, "IntegratedGradients")
        self.attribution_method = _CaptumIntegratedGradients(self.model)

    def _validate(self, inputs: Tensor) -> None:
        _validate_baseline_shape(self.baseline, inputs, "IntegratedGradients")

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        baselines = None if self.baseline is None else _baseline_rows(self.baseline, inputs, rows)
        result = self.attribution_method.attribute(
            inputs.detach(),
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            n_steps=self.n,
            method=self.method,
            internal_batch_size=self.batch_size,
            return_convergence_delta=extras is not None,
        )
        if extras is None:
            return result
        attributions, delta = result
        extras["convergence_delta"] = delta.detach()
        return attributions

    def __repr__(self) -> str:
        return f"IntegratedGradients(n={self.n}, method={self.method!r})"
