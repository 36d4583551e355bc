"""Analyzers for :func:`captum_elfa.analyze`: ExplainableAI.jl's methods as thin shells over Captum.

Every analyzer holds a model and knows three things: its ``name`` (``Explanation.method``), its
heatmap ``preset`` (``"sensitivity"``, ``"attribution"`` or ``"cam"``) and how to compute its
attribution for a batch with the output selection already resolved (``_attribute``). The
algorithms themselves are Captum's: ``Saliency``, ``InputXGradient``, ``IntegratedGradients``,
``LayerGradCam``, ``NoiseTunnel`` and the integral approximations of
``captum.attr._utils.approximation_methods``.

Internal protocol (used by :func:`analyze` and the augmentation wrappers)::

    analyzer._validate(inputs)                      # checks against the user's batch
    analyzer._attribute(inputs, target, additional_forward_args, rows, extras) -> Tensor

``target`` is ``None`` (scalar-output models) or a LongTensor with one output index per row of
``inputs``. ``rows`` maps every row of ``inputs`` to the sample of the user's batch it derives
from (augmentations repeat samples), so that per-sample baselines follow their samples.
``extras`` is a dict to fill with method-specific results, or ``None`` inside augmentations.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.common import _expand_additional_forward_args, _expand_target
from captum.attr import (
    Attribution,
    Deconvolution,
    GradientAttribution,
    GuidedBackprop,
    InputXGradient,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.attr import IntegratedGradients as _CaptumIntegratedGradients
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from captum.log import log_usage
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, check_choice

__all__ = [
    "Analyzer",
    "Gradient",
    "InputTimesGradient",
    "SmoothGrad",
    "IntegratedGradients",
    "GradCAM",
    "EFAM",
    "NoiseAugmentation",
    "InterpolationAugmentation",
    "as_analyzer",
    "PRESETS",
]

#: Heatmap presets an analyzer can ask for (see :func:`captum_elfa.heatmap`).
PRESETS: Tuple[str, ...] = ("sensitivity", "attribution", "cam")

#: Integral approximations of :class:`InterpolationAugmentation`: Captum's, plus ExplainableAI.jl's.
INTERPOLATION_METHODS: Tuple[str, ...] = tuple(SUPPORTED_METHODS) + ("linspace",)

Baseline = Union[None, float, Tensor]
Distribution = Union[torch.distributions.Distribution, Callable[[torch.Size], Tensor]]


# -- argument checks ---------------------------------------------------------------------------
def _check_n(n: Any, owner: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < minimum:
        raise CaptumElfaError(
            f"{owner}: n={n!r} is not valid; n is the number of samples and must be an int >= {minimum}"
        )
    return int(n)


def _check_batch_size(batch_size: Any, owner: str) -> Optional[int]:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise CaptumElfaError(f"{owner}: batch_size={batch_size!r} is not valid; use None (all at once) or an int >= 1")
    return int(batch_size)


def _check_std(std: Any, owner: str) -> float:
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not math.isfinite(std) or std < 0:
        raise CaptumElfaError(
            f"{owner}: std={std!r} is not valid; the noise standard deviation must be a finite "
            "number >= 0 (Smilkov et al. suggest 10-20% of the input range), or pass a "
            "torch.distributions.Distribution or a callable shape -> noise Tensor"
        )
    return float(std)


def _check_model(model: Any, owner: str) -> Callable:
    if isinstance(model, (Analyzer, Attribution)):
        raise CaptumElfaError(
            f"{owner} takes the model, got the analyzer {type(model).__name__}; "
            "to wrap an analyzer use NoiseAugmentation(analyzer, n, std) or "
            "InterpolationAugmentation(analyzer, n)"
        )
    if not callable(model):
        raise CaptumElfaError(
            f"{owner}: model must be a torch.nn.Module or a callable forward function, got {type(model).__name__}"
        )
    return model


def _check_baseline(baseline: Any, owner: str) -> Baseline:
    if baseline is None:
        return None
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise CaptumElfaError(f"{owner}: baseline={baseline!r} is not finite")
        return float(baseline)
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise CaptumElfaError(f"{owner}: baseline has dtype {baseline.dtype}; use a floating-point Tensor")
        if not bool(torch.isfinite(baseline).all()):
            raise CaptumElfaError(f"{owner}: baseline contains NaN or Inf values")
        return baseline.detach()
    raise CaptumElfaError(
        f"{owner}: baseline must be None (zeros), a number or a Tensor, got {type(baseline).__name__}"
    )


def _validate_baseline_shape(baseline: Baseline, inputs: Tensor, owner: str) -> None:
    if not isinstance(baseline, Tensor):
        return
    shape, n = tuple(inputs.shape[1:]), inputs.shape[0]
    b = baseline
    if b.dim() == inputs.dim() - 1:
        b = b.unsqueeze(0)
    if b.dim() != inputs.dim() or tuple(b.shape[1:]) != shape or b.shape[0] not in (1, n):
        raise CaptumElfaError(
            f"{owner}: baseline has shape {tuple(baseline.shape)}; valid shapes for inputs of "
            f"shape {tuple(inputs.shape)} are {shape} or {(1,) + shape} (one reference for "
            f"every sample) or {(n,) + shape} (one per sample), or pass a number"
        )


def _baseline_rows(baseline: Baseline, inputs: Tensor, rows: Tensor) -> Union[float, Tensor]:
    """The baseline for each row of ``inputs`` (0.0 for None, as Captum)."""
    if baseline is None:
        return 0.0
    if not isinstance(baseline, Tensor):
        return baseline
    b = baseline.to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() == inputs.dim() - 1:
        b = b.unsqueeze(0)
    if b.shape[0] == 1:
        return b
    return b[rows.to(b.device)]


def _grad_leaf(inputs: Tensor) -> Tensor:
    """A fresh leaf with the values of ``inputs`` that requires grad (the user's tensor is untouched)."""
    return inputs.detach().requires_grad_()


INTERPOLATE_MODES: Tuple[str, ...] = (
    "nearest",
    "nearest-exact",
    "linear",
    "bilinear",
    "bicubic",
    "trilinear",
    "area",
)


def _check_interpolate_mode(mode: Optional[str]) -> Optional[str]:
    return None if mode is None else check_choice("interpolate_mode", mode, INTERPOLATE_MODES)


def _upsample(layer_map: Tensor, inputs: Tensor, mode: Optional[str], owner: str) -> Tensor:
    if layer_map.dim() != inputs.dim() or layer_map.dim() not in (3, 4, 5):
        raise CaptumElfaError(
            f"{owner}: the layer map has shape {tuple(layer_map.shape)} but the inputs have "
            f"shape {tuple(inputs.shape)}; choose a layer with the inputs' spatial layout "
            "(a convolutional layer for image inputs)"
        )
    if mode is None:
        mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[layer_map.dim()]
    return LayerAttribution.interpolate(layer_map, tuple(inputs.shape[2:]), mode)


# -- base class -------------------------------------------------------------------------------
class Analyzer:
    r"""Base class of the analyzers accepted by :func:`captum_elfa.analyze`.

    Subclasses set ``name`` (reported as ``Explanation.method``), ``preset`` (the heatmap
    preset) and ``model``, and implement ``_attribute``. Calling an analyzer,
    ``analyzer(inputs, target)``, is ``analyze(inputs, analyzer, target)``.
    """

    name: str = "Analyzer"
    preset: str = "attribution"
    model: Callable

    def __call__(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Any:
        from captum_elfa.attr.analyze import analyze

        return analyze(inputs, self, target, additional_forward_args)

    def _validate(self, inputs: Tensor) -> None:
        """Check the analyzer's settings against the user's batch (before any computation)."""

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- gradient analyzers -----------------------------------------------------------------------
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


class GradCAM(Analyzer):
    r"""Grad-CAM (Captum ``LayerGradCam``) upsampled to the input size with
    ``LayerAttribution.interpolate``. Heatmap preset ``"cam"``.

    ``val`` is the upsampled map ``[N, 1, H, W]``; ``extras["layer_attribution"]`` keeps the
    layer-sized map ``[N, 1, h, w]``.

    Args:
        model (nn.Module or Callable): the model (its forward function).
        layer (nn.Module): the convolutional layer whose activations are weighted.
        relu_attributions (bool): apply a ReLU to the map, as the Grad-CAM paper and
                    ExplainableAI.jl do (Captum's own default is False). Default: True.
        interpolate_mode (str, optional): ``torch.nn.functional.interpolate`` mode; None picks
                    ``"bilinear"`` for images (``"linear"`` / ``"trilinear"`` for 1-D / 3-D).

    Examples::

        >>> expl = analyze(x, GradCAM(model, model.layer4))
        >>> expl.val.shape[2:] == x.shape[2:]
        True
    """

    name = "GradCAM"
    preset = "cam"

    def __init__(
        self,
        model: Callable,
        layer: nn.Module,
        relu_attributions: bool = True,
        interpolate_mode: Optional[str] = None,
    ) -> None:
        self.model = _check_model(model, "GradCAM")
        if not isinstance(layer, nn.Module):
            raise CaptumElfaError(f"GradCAM: layer must be a torch.nn.Module, got {type(layer).__name__}")
        if isinstance(self.model, nn.Module) and not any(m is layer for m in self.model.modules()):
            names = [n for n, _ in self.model.named_modules() if n][:6]
            raise CaptumElfaError(
                f"GradCAM: layer {type(layer).__name__} is not a submodule of the model; "
                f"pass one of its modules, e.g. {', '.join('model.' + n for n in names)}"
            )
        self.layer = layer
        self.relu_attributions = bool(relu_attributions)
        self.interpolate_mode = _check_interpolate_mode(interpolate_mode)
        self.attribution_method = LayerGradCam(self.model, layer)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        layer_map = self.attribution_method.attribute(
            inputs.detach(),
            target=target,
            additional_forward_args=additional_forward_args,
            relu_attributions=self.relu_attributions,
        )
        if extras is not None:
            extras["layer_attribution"] = layer_map.detach()
        return _upsample(layer_map, inputs, self.interpolate_mode, "GradCAM")

    def __repr__(self) -> str:
        return f"GradCAM(layer={type(self.layer).__name__}, relu_attributions={self.relu_attributions})"


class EFAM(Analyzer):
    r"""The Essential Feature Attribution Map of a fitted
    :class:`~captum_elfa.LayerFactorAnalysis`, upsampled to the input size. Heatmap preset
    ``"cam"``. The map does not depend on the output selection (the factors summarise the
    layer), but ``Explanation.output``/``target`` still report the model's top output.

    ``val`` is ``[N, 1, H, W]`` (``[N, k', H, W]`` for a list of factors);
    ``extras["layer_attribution"]`` keeps the layer-sized map.

    Args:
        lfa (LayerFactorAnalysis): a fitted layer factor analysis; its ``forward_func`` is the
                    model.
        factors (None, "all" or list of int): passed to ``lfa.attribute``. Default: None (the
                    combined EFAM).
        normalize (str or None): per-image normalisation passed to ``lfa.attribute``
                    (None: no normalisation). Default: ``"max_min"``.
        interpolate_mode (str, optional): as for :class:`GradCAM`.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer3).fit(images)
        >>> expl = analyze(x, EFAM(lfa))
    """

    name = "EFAM"
    preset = "cam"

    def __init__(
        self,
        lfa: Any,
        factors: Any = None,
        normalize: Optional[str] = "max_min",
        interpolate_mode: Optional[str] = None,
    ) -> None:
        if (
            isinstance(lfa, Analyzer)
            or not callable(getattr(lfa, "attribute", None))
            or not callable(getattr(lfa, "forward_func", None))
        ):
            raise CaptumElfaError(f"EFAM needs a fitted captum_elfa.LayerFactorAnalysis, got {type(lfa).__name__}")
        if getattr(lfa, "loadings_", None) is None:
            raise CaptumElfaError("EFAM needs a fitted LayerFactorAnalysis; call lfa.fit(inputs) first")
        self.lfa = lfa
        self.model = lfa.forward_func
        self.factors = factors
        self.normalize = normalize
        self.interpolate_mode = _check_interpolate_mode(interpolate_mode)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        layer_map = self.lfa.attribute(
            inputs.detach(),
            factors=self.factors,
            normalize=self.normalize,
            additional_forward_args=additional_forward_args,
        )
        if extras is not None:
            extras["layer_attribution"] = layer_map.detach()
        return _upsample(layer_map, inputs, self.interpolate_mode, "EFAM")


# -- raw Captum attributions -------------------------------------------------------------------
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


# -- augmentations -----------------------------------------------------------------------------
class _AnalyzerAttribution(GradientAttribution):
    """An analyzer seen by Captum's ``NoiseTunnel`` as a gradient attribution.

    ``NoiseTunnel`` repeats each sample ``k`` times (``repeat_interleave``) and expands the
    target and additional forward arguments itself; the rows are expanded the same way here.
    """

    def __init__(self, analyzer: Analyzer, rows: Tensor) -> None:
        GradientAttribution.__init__(self, analyzer.model)
        self.analyzer = analyzer
        self.rows = rows

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor] = None,
        additional_forward_args: Optional[Tuple[Any, ...]] = None,
    ) -> Tensor:
        k = inputs.shape[0] // self.rows.shape[0]
        rows = self.rows.repeat_interleave(k)
        return self.analyzer._attribute(inputs, target, additional_forward_args, rows, None)


def _sample_noise(distribution: Distribution, shape: torch.Size, like: Tensor) -> Tensor:
    if isinstance(distribution, torch.distributions.Distribution):
        dshape = tuple(distribution.batch_shape + distribution.event_shape)
        if dshape == ():
            noise = distribution.sample(shape)
        elif dshape == tuple(shape[1:]):
            noise = distribution.sample(shape[:1])
        else:
            raise CaptumElfaError(
                f"NoiseAugmentation: the distribution has shape {dshape}; use a scalar "
                f"distribution or one of the sample shape {tuple(shape[1:])}"
            )
    else:
        noise = distribution(shape)
        if not isinstance(noise, Tensor):
            raise CaptumElfaError(
                f"NoiseAugmentation: the noise callable returned a {type(noise).__name__}; it "
                f"must return a Tensor of the shape it is given, here {tuple(shape)}"
            )
    if tuple(noise.shape) != tuple(shape):
        raise CaptumElfaError(f"NoiseAugmentation: the noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise.to(device=like.device, dtype=like.dtype)


class _DistributionNoiseTunnel(NoiseTunnel):
    """Captum's ``NoiseTunnel`` drawing its additive noise from a distribution."""

    def __init__(self, attribution_method: Attribution, distribution: Distribution) -> None:
        super().__init__(attribution_method)
        self.distribution = distribution

    def _add_noise_to_inputs(self, nt_samples_partition: int, inputs: Tuple[Tensor, ...], stdevs: Any):
        noisy = []
        for inp in inputs:
            expanded = inp.repeat_interleave(nt_samples_partition, dim=0)
            x = expanded + _sample_noise(self.distribution, expanded.shape, expanded)
            noisy.append(x.requires_grad_() if self.is_gradient_method else x)
        return tuple(noisy)


class NoiseAugmentation(Analyzer):
    r"""Average an analyzer over ``n`` noisy copies of each input (Captum ``NoiseTunnel``,
    ``nt_type="smoothgrad"``), as ExplainableAI.jl's ``NoiseAugmentation``. The heatmap preset
    is the wrapped analyzer's.

    Args:
        analyzer (Analyzer or captum.attr.Attribution): the analyzer to smooth.
        n (int): noise samples per input (Captum's ``nt_samples``). Default: 50.
        std_or_distribution (float, Distribution or Callable): the additive noise. A number is
                    the standard deviation of zero-mean Gaussian noise (Captum's ``stdevs``,
                    identical numbers to ``NoiseTunnel``). A ``torch.distributions.Distribution``
                    is sampled elementwise: it must be scalar (``batch_shape`` and
                    ``event_shape`` empty, e.g. ``Uniform(-0.1, 0.1)``) or have the shape of one
                    sample. A callable receives the ``torch.Size`` of the repeated batch
                    ``(N * n, ...)`` and returns noise of that shape, e.g.
                    ``lambda s: 0.1 * torch.randn(s)``. Default: 1.0.
        batch_size (int, optional): noise samples processed together (Captum's
                    ``nt_samples_batch_size``). Default: None (all ``n`` at once).

    Examples::

        >>> expl = analyze(x, NoiseAugmentation(InputTimesGradient(model), 20, 0.1))
        >>> from torch.distributions import Laplace
        >>> expl = analyze(x, NoiseAugmentation(Gradient(model), 20, Laplace(0.0, 0.1)))
    """

    def __init__(
        self,
        analyzer: Any,
        n: int = 50,
        std_or_distribution: Union[float, Distribution] = 1.0,
        batch_size: Optional[int] = None,
    ) -> None:
        owner = type(self).__name__
        self.analyzer = as_analyzer(analyzer)
        self.n = _check_n(n, owner)
        self.std: Optional[float] = None
        self.distribution: Optional[Distribution] = None
        if isinstance(std_or_distribution, torch.distributions.Distribution) or (
            callable(std_or_distribution) and not isinstance(std_or_distribution, numbers.Real)
        ):
            self.distribution = std_or_distribution
        else:
            if isinstance(std_or_distribution, Tensor) and std_or_distribution.numel() == 1:
                std_or_distribution = std_or_distribution.item()
            self.std = _check_std(std_or_distribution, owner)
        self.batch_size = _check_batch_size(batch_size, owner)
        self.model = self.analyzer.model
        self.name = f"NoiseAugmentation({self.analyzer.name})"
        self.preset = self.analyzer.preset

    def _validate(self, inputs: Tensor) -> None:
        self.analyzer._validate(inputs)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        adapter = _AnalyzerAttribution(self.analyzer, rows)
        if self.distribution is None:
            tunnel: NoiseTunnel = NoiseTunnel(adapter)
            stdevs = self.std
        else:
            tunnel = _DistributionNoiseTunnel(adapter, self.distribution)
            stdevs = 0.0
        return tunnel.attribute(
            inputs.detach(),
            nt_type="smoothgrad",
            nt_samples=self.n,
            nt_samples_batch_size=self.batch_size,
            stdevs=stdevs,
            target=target,
            additional_forward_args=additional_forward_args,
        )

    def __repr__(self) -> str:
        noise = f"std={self.std}" if self.distribution is None else f"distribution={self.distribution!r}"
        return f"{type(self).__name__}({self.analyzer!r}, n={self.n}, {noise})"


class SmoothGrad(NoiseAugmentation):
    r"""SmoothGrad: the signed gradient averaged over noisy inputs,
    ``NoiseAugmentation(Gradient(model), n, std)`` = Captum ``NoiseTunnel(Saliency)`` with
    ``nt_type="smoothgrad"`` and ``abs=False``. Heatmap preset ``"sensitivity"``.

    Args:
        model (nn.Module or Callable): the model (its forward function).
        n (int): noise samples per input. Default: 50.
        std (float, Distribution or Callable): the noise, as ``std_or_distribution`` of
                    :class:`NoiseAugmentation`. Default: 1.0.
        batch_size (int, optional): Captum's ``nt_samples_batch_size``. Default: None.

    Examples::

        >>> expl = analyze(x, SmoothGrad(model, n=50, std=0.1))
    """

    def __init__(
        self,
        model: Callable,
        n: int = 50,
        std: Union[float, Distribution] = 1.0,
        batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(Gradient(_check_model(model, "SmoothGrad")), n, std, batch_size)
        self.name = "SmoothGrad"

    def __repr__(self) -> str:
        noise = f"std={self.std}" if self.distribution is None else f"distribution={self.distribution!r}"
        return f"SmoothGrad(n={self.n}, {noise})"


def _interpolation_weights(method: str, n: int) -> Tuple[List[float], List[float]]:
    if method == "linspace":
        return [1.0 / n] * n, [i / (n - 1) for i in range(n)]
    step_sizes_func, alphas_func = approximation_parameters(method)
    return list(step_sizes_func(n)), list(alphas_func(n))


class InterpolationAugmentation(Analyzer):
    r"""Average an analyzer along the straight path from a baseline to the input and multiply
    by ``(input - baseline)``, ExplainableAI.jl's ``InterpolationAugmentation``:

    .. math::
        (x - x_0) \odot \sum_i w_i \, A(x_0 + \alpha_i (x - x_0))

    With ``Gradient`` it is integrated gradients: for any ``method`` of Captum's it gives the
    numbers of Captum ``IntegratedGradients(n_steps=n, method=method)``. The weights
    ``w_i`` and points ``alpha_i`` are Captum's approximation of the integral (Riemann rules
    average equally weighted points). ``method="linspace"`` is ExplainableAI.jl's exact
    definition: the plain mean over ``alpha_i = (i - 1) / (n - 1)``, ``i = 1..n`` (``n >= 2``).
    Heatmap preset ``"attribution"``.

    Args:
        analyzer (Analyzer or captum.attr.Attribution): the analyzer to integrate; its ``val``
                    must broadcast against the inputs (input-shaped, or ``[N, 1, H, W]``).
        n (int): points on the path. Default: 50.
        baseline (None, float or Tensor): the reference ``x_0``; None is zeros. A Tensor may
                    have the shape of one sample, ``(1, ...)`` or ``(N, ...)``. Default: None.
        method (str): ``"riemann_middle"`` (default), ``"riemann_left"``, ``"riemann_right"``,
                    ``"riemann_trapezoid"``, ``"gausslegendre"`` or ``"linspace"``.
        batch_size (int, optional): at most this many interpolated samples per call of the
                    analyzer (whole path steps; at least one step). Default: None (all).

    Examples::

        >>> ig = InterpolationAugmentation(Gradient(model), 50, method="riemann_right")
        >>> expl = analyze(x, ig)      # == Captum IntegratedGradients(method="riemann_right")
    """

    preset = "attribution"

    def __init__(
        self,
        analyzer: Any,
        n: int = 50,
        baseline: Baseline = None,
        method: str = "riemann_middle",
        batch_size: Optional[int] = None,
    ) -> None:
        self.analyzer = as_analyzer(analyzer)
        self.method = check_choice("method", method, INTERPOLATION_METHODS)
        self.n = _check_n(n, "InterpolationAugmentation", minimum=2 if method == "linspace" else 1)
        self.baseline = _check_baseline(baseline, "InterpolationAugmentation")
        self.batch_size = _check_batch_size(batch_size, "InterpolationAugmentation")
        self.model = self.analyzer.model
        self.name = f"InterpolationAugmentation({self.analyzer.name})"

    def _validate(self, inputs: Tensor) -> None:
        _validate_baseline_shape(self.baseline, inputs, "InterpolationAugmentation")
        self.analyzer._validate(inputs)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        x = inputs.detach()
        n_samples = x.shape[0]
        x0 = _baseline_rows(self.baseline, x, rows)
        step_sizes, alphas = _interpolation_weights(self.method, self.n)
        chunk = self.n if self.batch_size is None else max(1, self.batch_size // n_samples)
        vals = []
        for start in range(0, self.n, chunk):
            part = alphas[start : start + chunk]
            k = len(part)
            scaled = torch.cat([x0 + alpha * (x - x0) for alpha in part], dim=0)
            val = self.analyzer._attribute(
                scaled,
                _expand_target(target, k),
                _expand_additional_forward_args(additional_forward_args, k),
                rows.repeat(k),
                None,
            )
            if val.shape[0] != k * n_samples:
                raise CaptumElfaError(
                    f"InterpolationAugmentation: {self.analyzer.name} returned {val.shape[0]} "
                    f"rows for {k * n_samples} interpolated samples"
                )
            vals.append(val.detach())
        val = torch.cat(vals, dim=0)
        weights = torch.tensor(step_sizes).float().view(self.n, 1).to(val.device)
        weighted = val.contiguous().view(self.n, -1) * weights
        total = torch.sum(weighted.reshape((self.n, n_samples) + tuple(val.shape[1:])), dim=0)
        return total * (x - x0)

    def __repr__(self) -> str:
        return f"InterpolationAugmentation({self.analyzer!r}, n={self.n}, method={self.method!r})"
