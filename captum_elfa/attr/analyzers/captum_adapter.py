"""Any Captum attribution as an analyzer: :class:`CaptumAttribution` and :func:`as_analyzer`."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

from captum.attr import (
    Attribution,
    Deconvolution,
    GradientAttribution,
    GuidedBackprop,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import Tensor

from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.analyzers._checks import _grad_leaf
from captum_elfa.attr.analyzers.base import Analyzer

__all__ = ["CaptumAttribution", "as_analyzer"]


def _captum_name(method: Attribution) -> str:
    if isinstance(method, NoiseTunnel):
        return f"NoiseTunnel({_captum_name(method.attribution_method)})"
    return type(method).__name__


def _captum_preset(method: Attribution) -> str:
    if isinstance(method, NoiseTunnel):
        return _captum_preset(method.attribution_method)
    if isinstance(method, (Saliency, GuidedBackprop, Deconvolution)):
        return "sensitivity"
    if isinstance(method, LayerGradCam):
        return "cam"
    return "attribution"


class CaptumAttribution(Analyzer):
    r"""Any Captum attribution object whose ``attribute`` takes ``target``, used as an analyzer
    (``analyze`` wraps one for you). ``val`` is exactly what ``method.attribute`` returns.

    Presets: ``Saliency``, ``GuidedBackprop``, ``Deconvolution`` -> ``"sensitivity"``;
    ``LayerGradCam`` -> ``"cam"`` (layer-sized, not upsampled); ``NoiseTunnel`` -> the preset
    of the method it wraps; anything else -> ``"attribution"``.

    Args:
        method (captum.attr.Attribution): e.g. ``captum.attr.Saliency(model)``.
        **attribute_kwargs: further keyword arguments for ``method.attribute``
                    (e.g. ``nt_samples=10`` for a ``NoiseTunnel``).
    """

    def __init__(self, method: Attribution, **attribute_kwargs: Any) -> None:
        if not isinstance(method, Attribution):
            raise CaptumElfaError(f"expected a captum.attr.Attribution, got {type(method).__name__}")
        params = inspect.signature(method.attribute).parameters
        takes_target = "target" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_target:
            hint = (
                " wrap a fitted LayerFactorAnalysis as EFAM(lfa)"
                if type(method).__name__ == "LayerFactorAnalysis"
                else " analyze explains model outputs; neuron and layer-statistics methods "
                "(NeuronAttribution) are called directly"
            )
            raise CaptumElfaError(f"the Captum attribution {type(method).__name__}.attribute takes no target;{hint}")
        for key in ("target", "additional_forward_args"):
            if key in attribute_kwargs:
                raise CaptumElfaError(f"pass {key} to analyze itself, not as an extra keyword argument")
        self.method = method
        self.attribute_kwargs = attribute_kwargs
        self.model = method.forward_func
        self.name = _captum_name(method)
        self.preset = _captum_preset(method)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        x = _grad_leaf(inputs) if isinstance(self.method, GradientAttribution) else inputs.detach()
        out = self.method.attribute(
            x, target=target, additional_forward_args=additional_forward_args, **self.attribute_kwargs
        )
        if not isinstance(out, Tensor):
            raise CaptumElfaError(
                f"{self.name}.attribute returned a {type(out).__name__}; analyze needs a single "
                "attribution Tensor (do not request convergence deltas through analyze)"
            )
        return out

    def __repr__(self) -> str:
        return f"CaptumAttribution({self.name})"


def as_analyzer(analyzer: Any, **attribute_kwargs: Any) -> Analyzer:
    """Return ``analyzer`` as an :class:`Analyzer`; a Captum attribution object is wrapped."""
    if isinstance(analyzer, Analyzer):
        if attribute_kwargs:
            raise CaptumElfaError(
                f"extra keyword arguments {sorted(attribute_kwargs)} apply only to raw Captum "
                f"attributions; set the options of {analyzer.name} in its constructor"
            )
        return analyzer
    if isinstance(analyzer, Attribution):
        return CaptumAttribution(analyzer, **attribute_kwargs)
    raise CaptumElfaError(
        f"analyzer must be one of captum_elfa's analyzers (Gradient, InputTimesGradient, "
        f"SmoothGrad, IntegratedGradients, GradCAM, EFAM, NoiseAugmentation, "
        f"InterpolationAugmentation) or a captum.attr.Attribution such as Saliency(model); "
        f"got {type(analyzer).__name__}"
    )
