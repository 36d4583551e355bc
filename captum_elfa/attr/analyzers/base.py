"""The base of the analyzers: the heatmap presets, :class:`Explanation` and :class:`Analyzer`.

Internal protocol (used by :func:`~captum_elfa.analyze` and the augmentation wrappers)::

    analyzer._validate(inputs)                      # checks against the user's batch
    analyzer._attribute(inputs, target, additional_forward_args, rows, extras) -> Tensor

``target`` is ``None`` (scalar-output models) or a LongTensor with one output index per row of
``inputs``. ``rows`` maps every row of ``inputs`` to the sample of the user's batch it derives
from (augmentations repeat samples), so that per-sample baselines follow their samples.
``extras`` is a dict to fill with method-specific results, or ``None`` inside augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

from torch import Tensor

from captum_elfa._validation import CaptumElfaError, check_choice

__all__ = ["PRESETS", "Explanation", "Analyzer"]

#: Heatmap presets an analyzer can ask for (see :func:`captum_elfa.heatmap`).
PRESETS: Tuple[str, ...] = ("sensitivity", "attribution", "cam")


@dataclass(frozen=True, eq=False)
class Explanation:
    r"""The result of :func:`analyze` (ExplainableAI.jl's ``Explanation``).

    Attributes:
        val (Tensor): the attribution, input-shaped (``[N, 1, H, W]`` for CAM-style methods,
                    upsampled to the input size; the layer-sized map is in ``extras``). A raw
                    Captum layer attribution keeps Captum's layer shape.
        output (Tensor): the model output for the inputs, ``[N, K]`` (or ``[N]``).
        target (Tensor or None): the explained output of each sample, a LongTensor ``[N]``;
                    None for a model with one output per sample.
        method (str): the analyzer's name, e.g. ``"Gradient"``.
        heatmap (str): the heatmap preset: ``"sensitivity"``, ``"attribution"`` or ``"cam"``.
        extras (dict): method-specific results, e.g. ``"layer_attribution"`` (GradCAM, EFAM),
                    ``"convergence_delta"`` (IntegratedGradients).
    """

    val: Tensor
    output: Tensor
    target: Optional[Tensor]
    method: str
    heatmap: str
    extras: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("heatmap", self.heatmap, PRESETS)

    def __repr__(self) -> str:
        target = None if self.target is None else self.target.tolist()
        return (
            f"Explanation(method={self.method!r}, heatmap={self.heatmap!r}, "
            f"val={tuple(self.val.shape)}, output={tuple(self.output.shape)}, target={target}, "
            f"extras={sorted(self.extras)})"
        )


class Analyzer:
    r"""Base class of the analyzers accepted by :func:`captum_elfa.analyze`.

    Subclasses set ``name`` (reported as ``Explanation.method``), ``preset`` (the heatmap
    preset) and ``model``, and implement ``_attribute``. Calling an analyzer,
    ``analyzer(inputs, target)``, is ``analyze(inputs, analyzer, target)``.
    """

    name: str = "Analyzer"
    preset: str = "attribution"
    model: Callable
    #: the function run by ``__call__``: :func:`captum_elfa.analyze`, set by
    #: :mod:`captum_elfa.attr.analyzers.run` (so that this module imports nothing that imports it)
    _runner: ClassVar[Optional[Callable[..., Any]]] = None

    def __call__(
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Any:
        runner = Analyzer._runner
        if runner is None:  # pragma: no cover - the package __init__ always sets it
            raise CaptumElfaError("import captum_elfa.attr.analyzers to run an analyzer")
        return runner(inputs, self, target, additional_forward_args)

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
