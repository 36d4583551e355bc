"""captum-elfa: layer-level explainability for Captum.

* :class:`LayerFactorAnalysis` — ELFA, a factor model over a layer's channels
  (a Captum ``LayerAttribution``): adequacy, number of factors, fit, validity metrics, EFAM.
* :class:`NeuronPCACE` — PCACE, every channel ranked by its maximal correlation (ACE) with the
  class score (a Captum ``NeuronAttribution``).
* :func:`analyze` — ExplainableAI.jl's front end over Captum's attribution methods, returning an
  :class:`Explanation`, with :func:`heatmap` presets.
"""

from captum_elfa._validation import CaptumElfaError, NotFittedError
from captum_elfa.attr.analyze import (
    EFAM,
    Explanation,
    GradCAM,
    Gradient,
    InputTimesGradient,
    IntegratedGradients,
    InterpolationAugmentation,
    NoiseAugmentation,
    SmoothGrad,
    analyze,
)
from captum_elfa.attr.compare_layers import LayerComparison, compare_layers
from captum_elfa.attr.layer_factor_analysis import LayerFactorAnalysis
from captum_elfa.attr.neuron_pcace import ACETransforms, ChannelRanking, NeuronPCACE
from captum_elfa.optim import (
    ActivationMaxResult,
    InversionResult,
    invert_factor,
    maximize_channel,
    maximize_channels,
)
from captum_elfa.visualization import heatmap

__version__ = "0.1.0"

__all__ = [
    "LayerFactorAnalysis",
    "NeuronPCACE",
    "ChannelRanking",
    "ACETransforms",
    "compare_layers",
    "LayerComparison",
    "invert_factor",
    "maximize_channel",
    "maximize_channels",
    "InversionResult",
    "ActivationMaxResult",
    "analyze",
    "Explanation",
    "heatmap",
    "Gradient",
    "InputTimesGradient",
    "SmoothGrad",
    "IntegratedGradients",
    "GradCAM",
    "EFAM",
    "NoiseAugmentation",
    "InterpolationAugmentation",
    "CaptumElfaError",
    "NotFittedError",
    "__version__",
]
