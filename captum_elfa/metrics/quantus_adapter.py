"""Quantus (https://github.com/understandable-machine-intelligence-lab/Quantus) ``explain_func``
adapters: score EFAM and every :func:`~captum_elfa.analyze` analyzer with Quantus' metrics.

Quantus calls ``explain_func(model=model, inputs=x_batch, targets=y_batch, **kwargs)`` with numpy
batches and expects a numpy attribution of the input's shape (or one channel of it).
:func:`quantus_explain_func` makes one from an analyzer (``GradCAM(model, layer)``,
``IntegratedGradients(model)``, ...) or from a fitted
:class:`~captum_elfa.LayerFactorAnalysis` (its EFAM). Quantus itself is an optional dependency
(``pip install quantus``); this module imports it only in :func:`quantus_available`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from captum_elfa._validation import CaptumElfaError, check_choice

__all__ = ["quantus_explain_func", "quantus_available"]

REDUCTIONS = ("sum", "none")


def quantus_available() -> bool:
    """Whether Quantus can be imported."""
    try:
        import quantus  # noqa: F401
    except ImportError:
        return False
    return True


def quantus_explain_func(analyzer: Any, reduce: str = "sum") -> Callable[..., np.ndarray]:
    r"""A Quantus ``explain_func`` that explains with ``analyzer`` through :func:`~captum_elfa.analyze`.

    Args:
        analyzer (captum_elfa.attr.analyzers.Analyzer or LayerFactorAnalysis): an analyzer of :mod:`captum_elfa`
                    (``Gradient(model)``, ``GradCAM(model, layer)``, ``EFAM(lfa)``, ...) or a
                    fitted :class:`~captum_elfa.LayerFactorAnalysis` (explained by its EFAM).
        reduce (str): ``"sum"`` sums the attribution over the input channels (``[N, 1, H, W]``,
                    what Quantus' image metrics expect); ``"none"`` returns it as it is.
                    Default: ``"sum"``.

    Returns:
        callable: ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray`` (float32). The
        ``model`` Quantus passes must be the analyzer's model; ``inputs`` is a numpy or torch batch
        ``[N, C, H, W]``; ``targets`` the classes (None: each sample's top class).

    Examples::

        >>> import quantus
        >>> metric = quantus.Selectivity(patch_size=4, disable_warnings=True)
        >>> scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
        ...                 explain_func=quantus_explain_func(GradCAM(model, model.conv2)), device="cpu")
    """
    from captum_elfa.attr.analyzers import EFAM, Analyzer

    reduce = check_choice("reduce", reduce, REDUCTIONS)
    if hasattr(analyzer, "loadings_") and hasattr(analyzer, "forward_func"):
        analyzer = EFAM(analyzer)
    if not isinstance(analyzer, Analyzer):
        raise CaptumElfaError(
            f"quantus_explain_func needs a captum_elfa analyzer (e.g. GradCAM(model, layer)) or a fitted "
            f"LayerFactorAnalysis, got {type(analyzer).__name__}"
        )
    own_model = getattr(analyzer, "model", None)

    def explain_func(model: Any = None, inputs: Any = None, targets: Any = None, **kwargs: Any) -> np.ndarray:
        from captum_elfa.attr.analyze import analyze

        if model is not None and own_model is not None and model is not own_model:
            inner = model.get_model() if hasattr(model, "get_model") else model
            if inner is not own_model:
                raise CaptumElfaError(
                    "the model Quantus passes is not the analyzer's model; build the analyzer on the model you evaluate"
                )
        if inputs is None:
            raise CaptumElfaError("explain_func needs inputs (a batch [N, C, H, W])")
        x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        tgt: Optional[Any] = None
        if targets is not None:
            t = np.asarray(targets).reshape(-1)
            tgt = torch.as_tensor(t.astype(np.int64))
        expl = analyze(x, analyzer, tgt)
        a = expl.val.detach().cpu().double()
        if a.dim() == 3:
            a = a[:, None]
        if reduce == "sum":
            a = a.sum(1, keepdim=True)
        return a.numpy().astype(np.float32)

    return explain_func
