"""``analyze``: ExplainableAI.jl's front end over Captum.

``analyze(inputs, analyzer, target=None)`` runs the model once, picks the output to explain
(each sample's top output when ``target`` is None), computes the analyzer's attribution with
Captum and returns an :class:`Explanation` that also says how to draw it (its heatmap preset,
see :func:`captum_elfa.heatmap`).

The implementation lives in the package :mod:`captum_elfa.attr.analyzers` (``analyze`` in
:mod:`captum_elfa.attr.analyzers.run`); this module keeps the import path
``from captum_elfa.attr.analyze import analyze, Explanation, Gradient, ...``.
"""

from __future__ import annotations

from captum_elfa.attr.analyzers import (
    EFAM,
    PRESETS,
    Analyzer,
    CaptumAttribution,
    Explanation,
    GradCAM,
    Gradient,
    InputTimesGradient,
    IntegratedGradients,
    InterpolationAugmentation,
    NoiseAugmentation,
    SmoothGrad,
    TargetLike,
    analyze,
    as_analyzer,
)
from captum_elfa.attr.analyzers.run import (
    _analyzer_layers as _analyzer_layers,
)
from captum_elfa.attr.analyzers.run import (
    _check_inputs as _check_inputs,
)
from captum_elfa.attr.analyzers.run import (
    _check_output as _check_output,
)
from captum_elfa.attr.analyzers.run import (
    _resolve_target as _resolve_target,
)
from captum_elfa.attr.analyzers.run import (
    _short as _short,
)

__all__ = [
    "Explanation",
    "analyze",
    "Analyzer",
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
    "PRESETS",
    "TargetLike",
]
