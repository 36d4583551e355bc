r"""ELFA's EFAM, Grad-CAM and SmoothGrad in Captum Insights (captum < 0.9).

Captum Insights (``captum.insights``, removed in captum 0.9) serves an ``AttributionVisualizer``
whose method menu is read from two module-level dicts of ``captum.insights.attr_vis.config``:
``ATTRIBUTION_NAMES_TO_METHODS`` (menu name -> Captum ``Attribution`` class, which Insights builds
as ``cls(model)`` and calls as ``attribute.__wrapped__(self, inputs, additional_forward_args=...,
target=..., **arguments)``) and ``ATTRIBUTION_METHOD_CONFIG`` (menu name -> the arguments the UI
lets the user edit). :func:`register` adds our methods to both dicts (nothing else is patched);
:func:`unregister` puts both dicts back as they were.

Example::

    from captum_elfa import LayerFactorAnalysis
    from captum_elfa.insights import AttributionVisualizer, Batch, ImageFeature, register

    lfa = LayerFactorAnalysis(model, model.conv2).fit(images)
    register(lfa, model=model)                     # EFAM, Grad-CAM (on lfa's layer), SmoothGrad
    vis = AttributionVisualizer(models=[model], classes=classes,
                                features=[ImageFeature("Photo", None, None)],
                                dataset=[Batch(images[:4], labels[:4])])
    vis.serve(blocking=False)                      # or vis.render() in Jupyter

Grayscale models: Insights only draws 3-channel (RGB) images. Wrap a 1-channel model in a module
that takes a 3-channel input and averages (or picks one of) its channels, e.g.
:class:`GrayscaleToRGB`, and give the visualizer the wrapped model and the images repeated to 3
channels (``x.repeat(1, 3, 1, 1)``). A :class:`~captum_elfa.LayerFactorAnalysis` fitted on the
grayscale model can be registered as is: its layer is a submodule of the wrapper, and EFAM is
computed through whichever model Insights passes, as long as that model contains the layer.

Install with ``pip install "captum-elfa[insights]"`` (``captum<0.9``, ``numpy<2``, ``flask``,
``flask-compress``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

_INSTALL_HINT = (
    "Captum Insights was removed in captum 0.9; install captum<0.9 to use it, e.g. "
    '`pip install "captum-elfa[insights]"` or `pip install "captum==0.8.0" "numpy<2" flask '
    "flask-compress`"
)


def _captum_version() -> Tuple[int, ...]:
    import captum

    parts = []
    for p in str(getattr(captum, "__version__", "0")).split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _captum_version() >= (0, 9):
    import captum as _captum

    raise ImportError(
        f"captum_elfa.insights needs Captum Insights, which captum {_captum.__version__} does not "
        f"have. {_INSTALL_HINT}."
    )

try:
    from captum.insights.attr_vis import config as _config
    from captum.insights.attr_vis.app import AttributionVisualizer, Batch
    from captum.insights.attr_vis.config import ConfigParameters, NumberConfig, StrConfig, StrEnumConfig
    from captum.insights.attr_vis.features import ImageFeature
except ImportError as exc:  # captum without insights, or flask / flask-compress missing
    raise ImportError(f"captum_elfa.insights could not import Captum Insights ({exc}). {_INSTALL_HINT}.") from exc

from captum.attr import Attribution

from captum_elfa._capture import LayerLayout
from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr._lfa_maps import NORMALIZATIONS
from captum_elfa.attr.analyze import analyze
from captum_elfa.attr.analyzers import EFAM, GradCAM, SmoothGrad

__all__ = [
    "register",
    "unregister",
    "registered_methods",
    "GrayscaleToRGB",
    "EFAM_NAME",
    "GRADCAM_NAME",
    "SMOOTHGRAD_NAME",
    "InsightsEFAM",
    "InsightsGradCAM",
    "InsightsSmoothGrad",
    "AttributionVisualizer",
    "Batch",
    "ImageFeature",
]

EFAM_NAME = "EFAM (ELFA)"
GRADCAM_NAME = "Grad-CAM (ELFA)"
SMOOTHGRAD_NAME = "SmoothGrad (ELFA)"

_INTERPOLATE_CHOICES = ["bilinear", "nearest", "bicubic", "area"]
_BOOL_CHOICES = ["True", "False"]
_LAYOUT_KEYS = ["channel_dim", "token_grid", "drop_tokens", "call_index"]
# the EFAM normalisations, with None spelt "none" (the UI sends strings)
_NORMALIZE_CHOICES = ["none" if n is None else n for n in NORMALIZATIONS]


# -- argument parsing (the UI sends numbers as ints and everything else as strings; Insights
#    writes the parsed values back into its config, so each parser must accept its own output) --
def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise CaptumElfaError(f"expected True or False, got {value!r}")


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CaptumElfaError(f"expected a number, got {value!r}") from None


def _to_normalize(value: Any) -> Optional[str]:
    return None if value is None or str(value).lower() == "none" else str(value)


def _to_factor(value: Any) -> Optional[int]:
    if value is None or str(value).strip().lower() in ("", "combined", "efam", "none"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CaptumElfaError(f"factor must be 'combined' or a factor index, got {value!r}") from None


# -- the adapters ---------------------------------------------------------------------------------
def _insights_entry(func: Callable) -> Callable:
    """Insights calls ``method.attribute.__wrapped__(method, ...)``: give ``attribute`` one."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def _single_input(inputs: Any, owner: str) -> Tensor:
    if isinstance(inputs, Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1 and isinstance(inputs[0], Tensor):
        return inputs[0]
    raise CaptumElfaError(
        f"{owner} explains models with one image input (one ImageFeature); got "
        f"{len(inputs) if isinstance(inputs, (tuple, list)) else type(inputs).__name__} inputs"
    )


def _contains(model: Any, layer: nn.Module) -> bool:
    return isinstance(model, nn.Module) and any(m is layer for m in model.modules())


def _as_insights_attribution(m: Tensor, x: Tensor) -> Tuple[Tensor]:
    """Insights' ImageFeature draws attributions with the input's shape: repeat a one-channel map
    over the input's channels (the heat map sums |attribution| over channels, so the picture is
    the map's)."""
    if m.shape[1] != x.shape[1]:
        m = m.expand(-1, x.shape[1], *m.shape[2:])
    return (m.contiguous().detach(),)


class _InsightsAttribution(Attribution):
    """Base of the adapters: built by Insights as ``cls(model)``."""

    menu_name = "captum-elfa"

    def __init__(self, forward_func: Callable) -> None:
        super().__init__(forward_func)

    @classmethod
    def get_name(cls) -> str:
        return cls.menu_name


class InsightsEFAM(_InsightsAttribution):
    r"""EFAM of a fitted :class:`~captum_elfa.LayerFactorAnalysis`, upsampled to the input size
    with ``LayerAttribution.interpolate`` (``captum_elfa.EFAM``), for Insights. :func:`register`
    makes a subclass bound to one ``lfa``. The map is computed through the model Insights passes,
    which must contain ``lfa.layer`` (the fitted model itself or a wrapper around it)."""

    menu_name = EFAM_NAME
    lfa: Any = None

    @_insights_entry
    def attribute(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        target: Any = None,
        factor: Any = None,
        normalize: Any = "max_min",
        interpolate_mode: str = "bilinear",
    ) -> Tuple[Tensor]:
        x = _single_input(inputs, EFAM_NAME)
        lfa = type(self).lfa
        if lfa is None:
            raise CaptumElfaError(f"{EFAM_NAME}: no LayerFactorAnalysis registered")
        model = self.forward_func
        if model is not lfa.forward_func:
            if not _contains(model, lfa.layer):
                raise CaptumElfaError(
                    f"{EFAM_NAME}: the visualizer's model {type(model).__name__} does not contain "
                    "the layer the LayerFactorAnalysis was fitted on; give the visualizer that "
                    "model (or a wrapper around it)"
                )
            lfa = copy.copy(lfa)  # same fit, computed through the visualizer's model
            lfa.forward_func = model
        factor = _to_factor(factor)
        analyzer = EFAM(
            lfa,
            factors=None if factor is None else [factor],
            normalize=_to_normalize(normalize),
            interpolate_mode=str(interpolate_mode),
        )
        expl = analyze(x, analyzer, target, additional_forward_args)
        return _as_insights_attribution(expl.val, x)


class InsightsGradCAM(_InsightsAttribution):
    r"""``captum_elfa.GradCAM`` (Captum ``LayerGradCam`` upsampled with
    ``LayerAttribution.interpolate``) for Insights; :func:`register` binds the layer (a module or
    a module name resolved in each model with ``get_submodule``) and how to read its output
    (``channel_dim``, ``token_grid``, ``drop_tokens``, ``call_index``)."""

    menu_name = GRADCAM_NAME
    layer: Union[None, str, nn.Module] = None
    layout: Dict[str, Any] = {}

    def _layer(self) -> nn.Module:
        layer = type(self).layer
        model = self.forward_func
        if isinstance(layer, str):
            if not isinstance(model, nn.Module):
                raise CaptumElfaError(f"{GRADCAM_NAME}: a layer name needs an nn.Module model")
            return model.get_submodule(layer)
        if layer is None:
            raise CaptumElfaError(f"{GRADCAM_NAME}: no layer registered")
        return layer

    @_insights_entry
    def attribute(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        target: Any = None,
        relu_attributions: Any = True,
        interpolate_mode: str = "bilinear",
    ) -> Tuple[Tensor]:
        x = _single_input(inputs, GRADCAM_NAME)
        analyzer = GradCAM(
            self.forward_func,
            self._layer(),
            relu_attributions=_to_bool(relu_attributions),
            interpolate_mode=str(interpolate_mode),
            **type(self).layout,
        )
        expl = analyze(x, analyzer, target, additional_forward_args)
        return _as_insights_attribution(expl.val, x)


class InsightsSmoothGrad(_InsightsAttribution):
    r"""``captum_elfa.SmoothGrad`` (Captum ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``,
    signed gradients) for Insights."""

    menu_name = SMOOTHGRAD_NAME

    @_insights_entry
    def attribute(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        target: Any = None,
        n: Any = 25,
        std: Any = 0.1,
    ) -> Tuple[Tensor]:
        x = _single_input(inputs, SMOOTHGRAD_NAME)
        analyzer = SmoothGrad(self.forward_func, n=int(n), std=_to_float(std))
        expl = analyze(x, analyzer, target, additional_forward_args)
        return (expl.val,)


class GrayscaleToRGB(nn.Module):
    r"""Run a 1-channel model on the 3-channel images Insights draws.

    Args:
        model (nn.Module): a model taking ``[N, 1, H, W]`` inputs.
        reduce (str or int): ``"mean"`` averages the three channels (default); an int picks that
                    channel. With images repeated to 3 channels (``x.repeat(1, 3, 1, 1)``) both
                    give the grayscale image back exactly.
    """

    def __init__(self, model: nn.Module, reduce: Union[str, int] = "mean") -> None:
        super().__init__()
        self.model = model
        self.reduce = reduce
        self.train(model.training)

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        if self.reduce == "mean":
            gray = x.mean(dim=1, keepdim=True)
        else:
            gray = x[:, int(self.reduce) : int(self.reduce) + 1]
        return self.model(gray, *args)


# -- registration ---------------------------------------------------------------------------------
_MISSING = object()
# name -> (previous ATTRIBUTION_NAMES_TO_METHODS entry, previous ATTRIBUTION_METHOD_CONFIG entry)
_saved: Dict[str, Tuple[Any, Any]] = {}


def _last_conv(model: nn.Module) -> Optional[nn.Module]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def registered_methods() -> List[str]:
    """The menu names :func:`register` has added (empty after :func:`unregister`)."""
    return list(_saved)


def _gradcam_layout(
    lfa: Any, gradcam_layer: Union[None, bool, str, nn.Module], given: Optional[Mapping[str, Any]]
) -> Dict[str, Any]:
    """Grad-CAM's layout keywords: ``given`` (checked), else ``lfa``'s when the layer is ``lfa.layer``."""
    if given is not None:
        if not isinstance(given, Mapping):
            raise CaptumElfaError(
                f"register: gradcam_layout must be a mapping of GradCAM's layout keywords {_LAYOUT_KEYS}, "
                f"got {type(given).__name__}"
            )
        unknown = sorted(set(given) - set(_LAYOUT_KEYS))
        if unknown:
            raise CaptumElfaError(f"register: gradcam_layout has unknown keys {unknown}; valid keys: {_LAYOUT_KEYS}")
        lay: Optional[LayerLayout] = LayerLayout(**given)  # checks the values
    else:
        lay = getattr(lfa, "layout", None) if lfa is not None and gradcam_layer is lfa.layer else None
    if lay is None:
        return {}
    if lay.call_index == "all":
        raise CaptumElfaError(
            "register: Grad-CAM weights one call of its layer, but its layout has call_index='all' "
            "(the factor model pools every call); pass gradcam_layout with an int call_index (e.g. "
            "{**lfa.layout.kwargs(), 'call_index': -1}) or gradcam_layer=False"
        )
    return lay.kwargs()


def register(
    lfa: Any = None,
    model: Optional[nn.Module] = None,
    gradcam_layer: Union[None, bool, str, nn.Module] = None,
    smoothgrad: bool = True,
    *,
    normalize: Optional[str] = "max_min",
    interpolate_mode: str = "bilinear",
    relu_attributions: bool = True,
    smoothgrad_n: int = 25,
    smoothgrad_std: float = 0.1,
    gradcam_layout: Optional[Mapping[str, Any]] = None,
) -> List[str]:
    r"""Add ELFA's EFAM, Grad-CAM and SmoothGrad to Captum Insights' method menu.

    Insights' method list and argument config are two dicts of
    ``captum.insights.attr_vis.config``; this adds one entry per method to each (nothing else is
    patched), so every ``AttributionVisualizer`` (``serve()``, ``render()``) offers them next to
    Captum's own methods. Calling it again first undoes the previous call (idempotent);
    :func:`unregister` restores the dicts.

    Args:
        lfa (LayerFactorAnalysis, optional): a fitted layer factor analysis: adds
                    :data:`EFAM_NAME` (UI arguments ``factor``: ``combined`` or one factor's map,
                    ``normalize``, ``interpolate_mode``).
        model (nn.Module, optional): the model the visualizer will show (a
                    :class:`GrayscaleToRGB` wrapper for a grayscale model); used to check ``lfa``
                    and ``gradcam_layer`` now rather than at the first Fetch, and to pick the
                    Grad-CAM layer when neither ``gradcam_layer`` nor ``lfa`` names one.
        gradcam_layer (nn.Module, str, None or False): Grad-CAM's layer (a module, or a module
                    name looked up in each visualizer model). None: ``lfa.layer`` if ``lfa`` is
                    given, else the last ``Conv2d`` of ``model``, else no Grad-CAM. False: no
                    Grad-CAM. Adds :data:`GRADCAM_NAME` (UI arguments ``relu_attributions``,
                    ``interpolate_mode``).
        gradcam_layout (mapping, optional, keyword-only): how Grad-CAM reads its layer's output,
                    as the keyword arguments of :class:`~captum_elfa.GradCAM` (``channel_dim``,
                    ``token_grid``, ``drop_tokens``, ``call_index``), e.g. ``{"channel_dim": -1,
                    "drop_tokens": 1, "token_grid": "auto"}`` for a ViT block. Default: ``lfa``'s
                    layout when Grad-CAM's layer is ``lfa.layer`` (a factor model of a token or
                    channels-last layer gets Grad-CAM on the same maps), else channels-first.
        smoothgrad (bool): add :data:`SMOOTHGRAD_NAME` (UI arguments ``n``, ``std``).
                    Default: True.
        normalize, interpolate_mode, relu_attributions, smoothgrad_n, smoothgrad_std: the
                    arguments' initial values in the UI.

    Returns:
        list of str: the menu names added.
    """
    if lfa is not None:
        if getattr(lfa, "loadings_", None) is None or not callable(getattr(lfa, "attribute", None)):
            raise CaptumElfaError(
                f"register: lfa must be a fitted LayerFactorAnalysis (call lfa.fit(inputs)), got {type(lfa).__name__}"
            )
        if model is not None and model is not lfa.forward_func and not _contains(model, lfa.layer):
            raise CaptumElfaError(
                "register: model does not contain the layer lfa was fitted on; pass the fitted "
                "model or a wrapper around it (e.g. GrayscaleToRGB(model))"
            )
    if gradcam_layer is None:
        if lfa is not None:
            gradcam_layer = lfa.layer
        elif model is not None:
            gradcam_layer = _last_conv(model)
    if gradcam_layer is True:
        raise CaptumElfaError("register: gradcam_layer must be a module, a module name, None or False")
    layout = _gradcam_layout(lfa, gradcam_layer, gradcam_layout)
    if gradcam_layer is False:
        gradcam_layer = None
    if gradcam_layer is not None:
        if not isinstance(gradcam_layer, (str, nn.Module)):
            raise CaptumElfaError(
                f"register: gradcam_layer must be an nn.Module or a module name, got {type(gradcam_layer).__name__}"
            )
        if model is not None:
            if isinstance(gradcam_layer, str):
                model.get_submodule(gradcam_layer)  # AttributeError names the missing part
            elif not _contains(model, gradcam_layer):
                raise CaptumElfaError("register: gradcam_layer is not a submodule of model")
    if normalize is not None and normalize not in _NORMALIZE_CHOICES:
        raise CaptumElfaError(f"register: normalize must be one of {_NORMALIZE_CHOICES}, got {normalize!r}")
    if interpolate_mode not in _INTERPOLATE_CHOICES:
        raise CaptumElfaError(
            f"register: interpolate_mode must be one of {_INTERPOLATE_CHOICES}, got {interpolate_mode!r}"
        )

    entries: Dict[str, Tuple[type, ConfigParameters]] = {}
    if lfa is not None:
        k = int(lfa.loadings_.shape[1])
        cls = type("InsightsEFAM", (InsightsEFAM,), {"lfa": lfa})
        entries[EFAM_NAME] = (
            cls,
            ConfigParameters(
                params={
                    "factor": StrEnumConfig(value="combined", limit=["combined"] + [str(i) for i in range(k)]),
                    "normalize": StrEnumConfig(value=str(normalize).replace("None", "none"), limit=_NORMALIZE_CHOICES),
                    "interpolate_mode": StrEnumConfig(value=interpolate_mode, limit=_INTERPOLATE_CHOICES),
                },
                help_info="ELFA's Essential Feature Attribution Map (factor: combined or one factor)",
                post_process={"factor": _to_factor, "normalize": _to_normalize},
            ),
        )
    if gradcam_layer is not None:
        cls = type("InsightsGradCAM", (InsightsGradCAM,), {"layer": gradcam_layer, "layout": layout})
        entries[GRADCAM_NAME] = (
            cls,
            ConfigParameters(
                params={
                    "relu_attributions": StrEnumConfig(value=str(bool(relu_attributions)), limit=_BOOL_CHOICES),
                    "interpolate_mode": StrEnumConfig(value=interpolate_mode, limit=_INTERPOLATE_CHOICES),
                },
                post_process={"relu_attributions": _to_bool},
            ),
        )
    if smoothgrad:
        entries[SMOOTHGRAD_NAME] = (
            InsightsSmoothGrad,
            ConfigParameters(
                params={
                    "n": NumberConfig(value=int(smoothgrad_n), limit=(1, 500)),
                    # the UI's number fields are integers: the standard deviation is a text field
                    "std": StrConfig(value=repr(float(smoothgrad_std))),
                },
                post_process={"n": int, "std": _to_float},
            ),
        )

    unregister()
    for name, (cls, params) in entries.items():
        _saved[name] = (
            _config.ATTRIBUTION_NAMES_TO_METHODS.get(name, _MISSING),
            _config.ATTRIBUTION_METHOD_CONFIG.get(name, _MISSING),
        )
        _config.ATTRIBUTION_NAMES_TO_METHODS[name] = cls
        _config.ATTRIBUTION_METHOD_CONFIG[name] = params
    return list(entries)


def unregister() -> None:
    """Undo :func:`register`: Insights' method list and argument config are as before it."""
    for name, (method, params) in reversed(list(_saved.items())):
        for table, old in (
            (_config.ATTRIBUTION_NAMES_TO_METHODS, method),
            (_config.ATTRIBUTION_METHOD_CONFIG, params),
        ):
            if old is _MISSING:
                table.pop(name, None)
            else:
                table[name] = old
    _saved.clear()
