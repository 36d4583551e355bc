"""Compare several layers of one network with ELFA and PCACE in a single pass over the data.

The PCACE paper asks which layers of a network deserve attention; :func:`compare_layers` answers
with one row of ELFA and PCACE summaries per layer. All layers are hooked at once, so the model
runs once per batch whatever the number of layers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture import CallIndex, Inputs, LayerCapture, TokenGrid, iter_batches_with_args, layer_name
from captum_elfa._progress import n_batches as count_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError, check_bool, check_choice, check_int, is_int
from captum_elfa.attr.layer_factor_analysis import LayerFactorAnalysis
from captum_elfa.attr.neuron_pcace import DEFAULT_PERMUTATIONS, MIN_IMAGES, select_target
from captum_elfa.stats.moments import RunningMoments
from captum_elfa.stats.nfactors import NFactorsSpec, check_n_factors_spec
from captum_elfa.stats.pcace import PCACENull, PCACEWarning, pcace_fit, permutation_null, reliability_messages
from captum_elfa.stats.rotations import ROTATIONS

__all__ = ["compare_layers", "LayerComparison"]

LayersArg = Union[Dict[str, nn.Module], Sequence[nn.Module]]
Target = Union[None, int, Callable[[Any], Tensor]]

#: number of top PCACE channels listed in each summary row
TOP_CHANNELS = 5


@dataclass
class LayerComparison:
    r"""The result of :func:`compare_layers`: one summary row per layer, in the order given.

    Attributes:
        names (list of str): the layers' names.
        rows (list of dict): one summary per layer with the keys ``layer``, ``activation_shape``
                    ``(C, H, W)``, ``n_samples``, ``channels``, ``dead`` (dead channels),
                    ``n_factors``, ``kmo``, ``bartlett_p``, ``r2``, ``d1``, ``res``,
                    ``total_variance_explained``, ``gamma2_p20`` and, when PCACE ran,
                    ``pcace_max``, ``pcace_mean``, ``pcace_top_channels`` (the ``TOP_CHANNELS``
                    best channels, highest first), ``pcace_n_images`` and, with the permutation
                    null, ``pcace_threshold`` (family-wise 5%) and ``pcace_significant`` (the
                    number of channels above it); these are None otherwise.
        elfa (dict): layer name -> fitted :class:`~captum_elfa.LayerFactorAnalysis` (use
                    ``elfa[name].attribute(x)`` for the layer's EFAM).
        pcace (dict): layer name -> ``[C]`` float64 PCACE scores; empty when PCACE did not run.
        target_scores (Tensor or None): ``[N]`` the explained output of every image (PCACE).
        pcace_null (dict): layer name -> :class:`~captum_elfa.stats.pcace.PCACENull` (null
                    scores, per-channel p-values, quantiles, the family-wise threshold); empty
                    without PCACE or with ``n_permutations=0``.
    """

    names: List[str]
    rows: List[Dict[str, Any]]
    elfa: Dict[str, LayerFactorAnalysis]
    pcace: Dict[str, Tensor] = field(default_factory=dict)
    target_scores: Optional[Tensor] = None
    pcace_null: Dict[str, PCACENull] = field(default_factory=dict)

    def row(self, name: str) -> Dict[str, Any]:
        """The summary row of layer ``name``."""
        for r in self.rows:
            if r["layer"] == name:
                return r
        raise CaptumElfaError(f"no layer named {name!r}; the layers are {self.names}")

    def to_dict(self, reports: bool = False) -> Dict[str, Any]:
        """A JSON-serialisable dict: ``{"layers": names, "rows": rows, "pcace": {name: scores}}``.

        Args:
            reports (bool): also include each layer's full ELFA report
                        (:meth:`LayerFactorAnalysis.report`) under ``"elfa"``. Default: False.
        """
        out: Dict[str, Any] = {
            "layers": list(self.names),
            "rows": [dict(r) for r in self.rows],
            "pcace": {k: v.detach().cpu().tolist() for k, v in self.pcace.items()},
            "pcace_p_values": {k: v.p_values.detach().cpu().tolist() for k, v in self.pcace_null.items()},
        }
        if reports:
            out["elfa"] = {k: v.report() for k, v in self.elfa.items()}
        return out

    def figure(self, figsize: Tuple[float, float] = (11.0, 7.0)) -> Any:
        """A :class:`matplotlib.figure.Figure` comparing the layers (never shown); drawn by
        :func:`captum_elfa.visualization.plot_layer_comparison`.

        Panels: adequacy and fit (KMO, R², total variance explained, γ² 20th percentile);
        number of factors and the fraction of dead channels; Res and D1; and, when PCACE ran,
        the distribution of the channels' PCACE scores per layer (box plot, maximum marked).

        Args:
            figsize (tuple of float): figure size in inches. Default: ``(11, 7)``.

        Returns:
            matplotlib.figure.Figure: 2x2 panels (the fourth empty without PCACE scores).
        """
        from captum_elfa.visualization.figures import plot_layer_comparison

        return plot_layer_comparison(self, figsize)

    def __repr__(self) -> str:
        parts = [f"{r['layer']}: k={r['n_factors']} kmo={r['kmo']:.3f} r2={r['r2']:.3f}" for r in self.rows]
        return f"LayerComparison({'; '.join(parts)})"


def _resolve_layers(model: Callable, layers: LayersArg) -> List[Tuple[str, nn.Module]]:
    if isinstance(layers, dict):
        items = list(layers.items())
        for name, _mod in items:
            if not isinstance(name, str):
                raise CaptumElfaError(f"layer names must be str, got {type(name).__name__} {name!r}")
    elif isinstance(layers, (list, tuple)):
        items = [(layer_name(model, m) if isinstance(m, nn.Module) else "", m) for m in layers]
    else:
        raise CaptumElfaError(
            f"layers must be a dict {{name: module}} or a list of modules, got {type(layers).__name__}"
        )
    if not items:
        raise CaptumElfaError("layers is empty; pass at least one layer, e.g. [model.layer1, model.layer2]")
    for name, mod in items:
        if not isinstance(mod, nn.Module):
            raise CaptumElfaError(f"layer {name or '?'} must be a torch.nn.Module, got {type(mod).__name__}")
        if isinstance(model, nn.Module) and not any(m is mod for m in model.modules()):
            raise CaptumElfaError(f"layer {name!r} ({type(mod).__name__}) is not a submodule of the model")
    ids = [id(m) for _, m in items]
    if len(set(ids)) != len(ids):
        raise CaptumElfaError("the same module is listed twice in layers; list every layer once")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise CaptumElfaError(f"layer names must be unique, got {names}")
    return items


def _check_target(target: Any) -> None:
    if target is None or (callable(target) and not isinstance(target, int)) or is_int(target):
        return
    raise CaptumElfaError(
        f"target={target!r} is not valid; pass a class index (int), None for a network with one output "
        "per image, or a callable mapping the output to a Tensor [N]"
    )


def target_scores(output: Any, target: Target, n: int, index: int = 0) -> Tensor:
    """The explained score of every image of a batch, float64 ``[n]``: PCACE's target rule
    (:func:`captum_elfa.attr.neuron_pcace.select_target`)."""
    return select_target(output, target, n, index)


class _Activations:
    """A layer's activations for PCACE: float32 ``[C, N, H*W]`` (the input of ``pcace_fit``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: List[Tensor] = []

    def add(self, a: Tensor) -> None:
        b, c, h, w = a.shape
        self.parts.append(a.detach().reshape(b, c, h * w).transpose(0, 1).to(torch.float32, copy=True))

    def result(self) -> Tensor:
        out = torch.cat(self.parts, dim=1)
        self.parts = []
        return out


def compare_layers(
    model: Callable,
    layers: LayersArg,
    inputs: Inputs,
    target: Target = None,
    n_factors: NFactorsSpec = "kaiser",
    pcace: bool = True,
    progress: bool = True,
    batch_size: int = 64,
    rotation: Optional[str] = "varimax",
    n_components: int = 1,
    additional_forward_args: Any = None,
    random_state: Optional[int] = 0,
    *,
    channel_dim: Union[None, int, Mapping[str, Optional[int]]] = None,
    token_grid: Union[TokenGrid, Mapping[str, TokenGrid]] = None,
    drop_tokens: Union[int, Mapping[str, int]] = 0,
    call_index: Union[CallIndex, Mapping[str, CallIndex]] = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
) -> LayerComparison:
    r"""ELFA and PCACE summaries of several layers of one network, from one pass over the data.

    A composition of public pieces: one :class:`~captum_elfa._capture.LayerCapture` hooks every
    layer (the model runs once per batch, in eval mode and without gradients, and is restored
    afterwards, also when a batch raises); each layer's activations stream into a
    :class:`~captum_elfa.stats.moments.RunningMoments` (float64, memory O(C^2)) that
    :meth:`LayerFactorAnalysis.fit_moments` fits, and, for PCACE, are kept (float32,
    ``C*N*H*W`` per layer) for :func:`~captum_elfa.stats.pcace.pcace_fit` and
    :func:`~captum_elfa.stats.pcace.permutation_null`. Each
    layer's results equal those of a separate ``LayerFactorAnalysis(model, layer).fit(inputs,
    ...)`` and ``NeuronPCACE(model, layer).attribute(inputs, target, ...)`` (this process's inputs
    only: ``torch.distributed`` is not used).

    Args:
        model (Callable or nn.Module): the model, or any function running it.
        layers (dict or list): ``{name: module}``, or a list of modules (named by their path in
                    ``model``). Any layout is accepted (see ``channel_dim``).
        inputs (Tensor, iterable of Tensors or DataLoader): the images (at least 10 for PCACE).
        target (int, None or Callable): PCACE's explained output, as in
                    :meth:`NeuronPCACE.attribute`: a class index of an ``(N, K)`` output, a
                    callable mapping the model's output (e.g. a dict) to a Tensor ``[N]``, or None
                    for a model with one output per image. With None and a model with several
                    outputs PCACE is skipped with a warning. Default: None.
        n_factors (int, str or float): as in :meth:`LayerFactorAnalysis.fit`, for every layer.
                    Default: ``"kaiser"``.
        pcace (bool): compute PCACE scores. Default: True.
        progress (bool): show a progress bar over batches. Default: True.
        batch_size (int): chunk size when ``inputs`` is a Tensor. Default: 64.
        rotation (str or None): ``"varimax"``, ``"quartimax"`` or None. Default: varimax.
        n_components (int): PCACE principal components per channel. Default: 1.
        additional_forward_args (Any, optional): extra model arguments, as in Captum (per-sample
                    Tensors are cut with the batches, see
                    :func:`~captum_elfa._capture.iter_batches_with_args`).
        random_state (int, optional): seed of parallel analysis and of PCACE's permutations.
                    Default: 0.
        channel_dim, token_grid, drop_tokens, call_index: the layout of the layers' outputs, as in
                    :class:`LayerFactorAnalysis`: one value for every layer or a dict by layer
                    name (keyword-only).
        n_permutations (int): PCACE's permutation null, as in :meth:`NeuronPCACE.attribute`
                    (p-values in ``pcace_null``, the threshold and the significant count in
                    each row; a ``PCACEWarning`` per layer where no channel beats it or the
                    images are too few); 0 turns it off (keyword-only). Default: 20.

    Returns:
        LayerComparison: per-layer rows, the fitted ELFA objects and the PCACE scores.

    Raises:
        CaptumElfaError: for bad layers or arguments, an ambiguous layout, non-Tensor or
                    non-finite activations, too few images for PCACE, or a layer whose factor
                    model cannot be fitted (the message names the layer).

    Examples::

        >>> cmp = compare_layers(model, {"l2": model.layer2, "l3": model.layer3}, images, target=281)
        >>> cmp.rows[0]["kmo"], cmp.pcace["l3"].argmax()
        >>> cmp.figure().savefig("layers.png")
    """
    items = _resolve_layers(model, layers)
    check_choice("rotation", rotation, ROTATIONS)
    check_n_factors_spec(n_factors)
    check_bool("pcace", pcace)
    if pcace:
        _check_target(target)
        n_components = check_int("n_components", n_components, minimum=1)
        n_permutations = check_int("n_permutations", n_permutations, minimum=0)
        if random_state is not None:
            random_state = check_int("random_state", random_state, minimum=0)
        if isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] < MIN_IMAGES:
            raise CaptumElfaError(
                f"PCACE needs at least {MIN_IMAGES} images, got {inputs.shape[0]}; pass more images or pcace=False"
            )
    names = [n for n, _ in items]
    moments = {n: RunningMoments() for n in names}
    stores = {n: _Activations(n) for n in names} if pcace else {}
    spatial: Dict[str, tuple] = {}
    state = {"pcace": pcace}

    def on_output(name: str, a: Tensor, index: int) -> None:
        if name not in spatial:
            spatial[name] = tuple(a.shape[1:])
        elif a.shape[1] != spatial[name][0] or (state["pcace"] and tuple(a.shape[1:]) != spatial[name]):
            raise CaptumElfaError(
                f"batch {index}: layer '{name}' output is {tuple(a.shape[1:])} per image, earlier batches "
                f"gave {spatial[name]}" + ("" if a.shape[1] != spatial[name][0] else " (PCACE needs one shape)")
            )
        moments[name].update(a, index)
        if state["pcace"]:
            stores[name].add(a)

    batches = iter_batches_with_args(inputs, batch_size, additional_forward_args)
    cap = LayerCapture(
        model,
        dict(items),
        on_output,
        channel_dim=channel_dim,
        token_grid=token_grid,
        drop_tokens=drop_tokens,
        call_index=call_index,
        what="compare_layers",
    )
    ys: List[Tensor] = []
    n_run = 0
    with cap:
        for i, (batch, extra) in enumerate(
            progress_bar(batches, progress, "compare layers", count_batches(inputs, batch_size))
        ):
            output = cap.run(batch, i, extra)
            if state["pcace"]:
                if i == 0 and target is None and not _one_output(output, batch.shape[0]):
                    warnings.warn(
                        "target=None but the model has several outputs per image; PCACE is "
                        "skipped (pass a class index or a callable target to compute it)",
                        UserWarning,
                        stacklevel=2,
                    )
                    state["pcace"] = False
                    stores.clear()
                else:
                    ys.append(target_scores(output, target, batch.shape[0], i))
            n_run += 1
    if n_run == 0:
        raise CaptumElfaError(
            "inputs yielded no batch (an empty DataLoader or iterable); pass at least one batch of images"
        )

    elfa: Dict[str, LayerFactorAnalysis] = {}
    for name, mod in items:
        acc = moments[name]
        bad = acc.first_nonfinite()
        if bad >= 0:
            raise CaptumElfaError(
                f"layer '{name}' produced NaN or Inf activations in batch {bad}; check the inputs "
                "and the model (every activation must be finite)"
            )
        mom = acc.moments
        assert mom is not None, "n_run > 0 and every layer ran in every batch, so each layer has moments"
        lay = cap.layouts[name]
        lfa = LayerFactorAnalysis(
            model,
            mod,
            **lay.kwargs(),
        )
        try:
            lfa.fit_moments(
                mom,
                n_factors=n_factors,
                rotation=rotation,
                n_images=acc.images,
                random_state=random_state,
                layer_name=name,
                activation_shape=spatial[name],
            )
        except CaptumElfaError as e:
            raise CaptumElfaError(f"layer '{name}': {e}") from None
        elfa[name] = lfa

    scores: Dict[str, Tensor] = {}
    nulls: Dict[str, PCACENull] = {}
    y: Optional[Tensor] = None
    if state["pcace"]:
        y = torch.cat(ys)
        n_images = int(y.shape[0])
        if n_images < MIN_IMAGES:
            raise CaptumElfaError(
                f"PCACE needs at least {MIN_IMAGES} images, got {n_images}; pass more images or pcace=False"
            )
        if not bool(torch.isfinite(y).all()):
            raise CaptumElfaError("the target scores contain NaN or Inf; every score must be finite")
        if bool(y.max() == y.min()):
            raise CaptumElfaError(
                f"the target score is constant (every image scores {y[0].item():.6g}, target={target!r}); "
                "PCACE needs a score that varies over the images (or pass pcace=False)"
            )
        if n_components > n_images:
            raise CaptumElfaError(f"n_components={n_components} is larger than the number of images ({n_images})")
        for name in names:
            c, h, w = spatial[name]
            if n_components > h * w:
                raise CaptumElfaError(
                    f"n_components={n_components} is larger than the {h * w} pixels ({h}x{w}) of layer "
                    f"'{name}'; choose 1 <= n_components <= {h * w}"
                )
            acts = stores.pop(name).result()  # free each layer's activations once scored
            fit = pcace_fit(acts, y, n_components, name)
            scores[name] = fit.scores
            if n_permutations > 0:  # the permutations of NeuronPCACE.attribute with the same seed
                nulls[name] = permutation_null(fit, n_permutations, random_state)
            for message in reliability_messages(n_images, nulls.get(name)):
                warnings.warn(f"layer '{name}': {message}", PCACEWarning, stacklevel=2)

    rows = [_summary_row(name, elfa[name], scores.get(name), nulls.get(name), y) for name in names]
    return LayerComparison(names=names, rows=rows, elfa=elfa, pcace=scores, target_scores=y, pcace_null=nulls)


def _one_output(output: Any, n: int) -> bool:
    return (
        isinstance(output, Tensor) and output.dim() > 0 and output.shape[0] == n and output.reshape(n, -1).shape[1] == 1
    )


def _summary_row(
    name: str, lfa: LayerFactorAnalysis, scores: Optional[Tensor], null: Optional[PCACENull], y: Optional[Tensor]
) -> Dict[str, Any]:
    a, m = lfa.adequacy_, lfa.metrics_
    row: Dict[str, Any] = {
        "layer": name,
        "activation_shape": list(lfa.activation_shape_),
        "n_samples": int(lfa.n_samples_),
        "channels": int(lfa.n_channels_),
        "dead": int(lfa.dead_channels_.numel()),
        "n_factors": int(lfa.n_factors_),
        "kmo": float(a.kmo),
        "bartlett_p": float(a.bartlett_p),
        "r2": float(m.r2),
        "d1": float(m.d1),
        "res": float(m.res),
        "total_variance_explained": float(m.total_variance_explained),
        "gamma2_p20": float(m.gamma2_p20),
        "pcace_max": None,
        "pcace_mean": None,
        "pcace_top_channels": None,
        "pcace_n_images": None,
        "pcace_threshold": None,
        "pcace_significant": None,
    }
    if scores is not None:
        s = scores.detach().cpu().double()
        order = torch.sort(s, descending=True, stable=True).indices
        row["pcace_max"] = float(s.max())
        row["pcace_mean"] = float(s.mean())
        row["pcace_top_channels"] = order[:TOP_CHANNELS].tolist()
        row["pcace_n_images"] = None if y is None else int(y.shape[0])
    if null is not None:
        row["pcace_threshold"] = float(null.threshold)
        row["pcace_significant"] = int(null.significant.sum())
    return row
