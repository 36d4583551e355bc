"""Analyzers for :func:`captum_elfa.analyze`: ExplainableAI.jl's methods as thin shells over Captum.

Every analyzer holds a model and knows three things: its ``name`` (``Explanation.method``), its
heatmap ``preset`` (``"sensitivity"``, ``"attribution"`` or ``"cam"``) and how to compute its
attribution for a batch with the output selection already resolved (``_attribute``, see
:mod:`.base`). The algorithms themselves are Captum's: ``Saliency``, ``InputXGradient``,
``IntegratedGradients``, ``LayerGradCam``'s weighting, ``NoiseTunnel`` and the integral
approximations (through :mod:`captum_elfa._captum_compat`, the one module that touches
Captum's private API).

Modules (imported in this order, none importing a later one):

- :mod:`.base`: the heatmap presets, :class:`Explanation`, :class:`Analyzer`;
- :mod:`.gradient`: :class:`Gradient`, :class:`InputTimesGradient`, :class:`IntegratedGradients`;
- :mod:`.cam`: :class:`GradCAM` and :class:`EFAM` (any layer layout, ``call_index``);
- :mod:`.captum_adapter`: :class:`CaptumAttribution` (any Captum attribution) and :func:`as_analyzer`;
- :mod:`.augmentations`: :class:`NoiseAugmentation`, :class:`SmoothGrad`,
  :class:`InterpolationAugmentation`;
- :mod:`.run`: :func:`analyze`.
"""

from captum_elfa.attr.analyzers._checks import INTERPOLATE_MODES, Baseline, Distribution
from captum_elfa.attr.analyzers.augmentations import (
    INTERPOLATION_METHODS,
    InterpolationAugmentation,
    NoiseAugmentation,
    SmoothGrad,
)
from captum_elfa.attr.analyzers.base import PRESETS, Analyzer, Explanation
from captum_elfa.attr.analyzers.cam import EFAM, GradCAM, layer_layout_map
from captum_elfa.attr.analyzers.captum_adapter import CaptumAttribution, as_analyzer
from captum_elfa.attr.analyzers.gradient import Gradient, InputTimesGradient, IntegratedGradients
from captum_elfa.attr.analyzers.run import TargetLike, analyze

__all__ = [
    "Analyzer",
    "Explanation",
    "Gradient",
    "InputTimesGradient",
    "SmoothGrad",
    "IntegratedGradients",
    "GradCAM",
    "EFAM",
    "NoiseAugmentation",
    "InterpolationAugmentation",
    "CaptumAttribution",
    "as_analyzer",
    "analyze",
    "layer_layout_map",
    "PRESETS",
    "INTERPOLATION_METHODS",
    "INTERPOLATE_MODES",
    "Baseline",
    "Distribution",
    "TargetLike",
]
