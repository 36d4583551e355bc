"""Compare several layers of one network with ELFA and PCACE in a single pass over the data.

The PCACE paper asks which layers of a network deserve attention; :func:`compare_layers` answers
with one row of ELFA and PCACE summaries per layer. All layers are hooked at once, so the model
runs once per batch whatever the number of layers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture import (
    Inputs,
    _layer_name,
    check_activation_shape,
    format_additional_args,
    iter_batches,
    model_device,
)
from captum_elfa._progress import n_batches as _n_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError, check_choice
from captum_elfa.attr.layer_factor_analysis import LayerFactorAnalysis
from captum_elfa.attr.neuron_pcace import MIN_IMAGES, NeuronPCACE, _ActivationStore, _select_target, pcace_statistics
from captum_elfa.stats.moments import RunningMoments
from captum_elfa.stats.nfactors import NFactorsSpec
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
                    ``pcace_max``, ``pcace_mean`` and ``pcace_top_channels`` (the
                    ``TOP_CHANNELS`` best channels, highest first); these are None otherwise.
        elfa (dict): layer name -> fitted :class:`~captum_elfa.LayerFactorAnalysis` (use
                    ``elfa[name].attribute(x)`` for the layer's EFAM).
        pcace (dict): layer name -> ``[C]`` float64 PCACE scores; empty when PCACE did not run.
        target_scores (Tensor or None): ``[N]`` the explained output of every image (PCACE).
    """

    names: List[str]
    rows: List[Dict[str, Any]]
    elfa: Dict[str, LayerFactorAnalysis]
    pcace: Dict[str, Tensor] = field(default_factory=dict)
    target_scores: Optional[Tensor] = None

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
        }
        if reports:
            out["elfa"] = {k: v.report() for k, v in self.elfa.items()}
        return out

    def figure(self, figsize: Tuple[float, float] = (11.0, 7.0)) -> Any:
        """A :class:`matplotlib.figure.Figure` comparing the layers (never shown).

        Panels: adequacy and fit (KMO, R², total variance explained, γ² 20th percentile);
        number of factors and the fraction of dead channels; Res and D1; and, when PCACE ran,
        the distribution of the channels' PCACE scores per layer (box plot, maximum marked).

        Args:
            figsize (tuple of float): figure size in inches. Default: ``(11, 7)``.

        Returns:
            matplotlib.figure.Figure: 2x2 panels (the fourth empty without PCACE scores).
        """
        import numpy as np
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, constrained_layout=True)
        axes = fig.subplots(2, 2)
        x = np.arange(len(self.names))
        labels = list(self.names)

        def col(key: str) -> np.ndarray:
            return np.array([np.nan if r[key] is None else float(r[key]) for r in self.rows])

        ax = axes[0, 0]
        for key, label, marker in (
            ("kmo", "KMO", "o"),
            ("r2", "R²", "s"),
            ("total_variance_explained", "variance explained", "^"),
            ("gamma2_p20", "γ² p20", "v"),
        ):
            ax.plot(x, col(key), marker=marker, label=label)
        ax.axhline(0.6, color="grey", lw=0.8, ls="--")
        ax.set_title("Adequacy and fit")
        ax.legend(fontsize=8)

        ax = axes[0, 1]
        ax.bar(x, col("n_factors"), color="C0", label="factors")
        ax.set_ylabel("number of factors")
        ax.set_title("Factors and dead channels")
        ax2 = ax.twinx()
        ax2.plot(x, col("dead") / col("channels"), color="C3", marker="o", label="dead fraction")
        ax2.set_ylabel("dead channels (fraction)")
        ax2.set_ylim(0, 1)

        ax = axes[1, 0]
        ax.plot(x, col("res"), marker="o", label="Res")
        ax.plot(x, col("d1"), marker="s", label="D1")
        ax.set_title("Residual correlations")
        ax.legend(fontsize=8)

        ax = axes[1, 1]
        if self.pcace:
            data = [self.pcace[n].detach().cpu().double().numpy() for n in self.names]
            ax.boxplot(data, positions=x, widths=0.5)
            ax.plot(x, col("pcace_max"), "r*", label="max")
            ax.set_ylim(0, 1.02)
            ax.set_title("PCACE scores per channel")
            ax.legend(fontsize=8)
        else:
            ax.set_title("PCACE not computed")
            ax.set_axis_off()
        for a in axes.flat:
            a.set_xticks(x)
            a.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        return fig

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
        items = [(_layer_name(model, m) if isinstance(m, nn.Module) else "", m) for m in layers]
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
) -> LayerComparison:
    r"""ELFA and PCACE summaries of several layers of one network, from one pass over the data.

    Forward hooks on every layer stream each layer's channel moments (float64, memory O(C^2))
    for a :class:`~captum_elfa.LayerFactorAnalysis` per layer and, for PCACE, keep each layer's
    activations (float32, ``C*N*H*W`` per layer) and the explained output. The model runs once
    per batch, in eval mode and without gradients; afterwards the hooks are removed and the
    training and ``requires_grad`` flags of every module and parameter are restored, also when a
    batch raises. Each layer's results equal those of a separate
    ``LayerFactorAnalysis(model, layer).fit(inputs, ...)`` and
    ``NeuronPCACE(model, layer).attribute(inputs, target, ...)`` (this process's inputs only:
    ``torch.distributed`` is not used).

    Args:
        model (Callable or nn.Module): the model, or any function running it.
        layers (dict or list): ``{name: module}``, or a list of modules (named by their path in
                    ``model``). Each layer must run once per forward pass and output
                    ``(N, C, H, W)`` or ``(N, C)``.
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
        additional_forward_args (Any, optional): extra model arguments, as in Captum.
        random_state (int, optional): seed of parallel analysis. Default: 0.

    Returns:
        LayerComparison: per-layer rows, the fitted ELFA objects and the PCACE scores.

    Raises:
        CaptumElfaError: for bad layers or arguments, a layer called twice in one forward pass,
                    non-Tensor or non-finite activations, too few images for PCACE, or a layer
                    whose factor model cannot be fitted (the message names the layer).

    Examples::

        >>> cmp = compare_layers(model, {"l2": model.layer2, "l3": model.layer3}, images, target=281)
        >>> cmp.rows[0]["kmo"], cmp.pcace["l3"].argmax()
        >>> cmp.figure().savefig("layers.png")
    """
    items = _resolve_layers(model, layers)
    check_choice("rotation", rotation, ROTATIONS)
    LayerFactorAnalysis._check_n_factors_type(n_factors)
    if not isinstance(pcace, bool):
        raise CaptumElfaError(f"pcace must be True or False, got {pcace!r}")
    if pcace:
        NeuronPCACE._check_target_type(target)
        n_components = NeuronPCACE._check_n_components(n_components)
        if isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] < MIN_IMAGES:
            raise CaptumElfaError(
                f"PCACE needs at least {MIN_IMAGES} images, got {inputs.shape[0]}; pass more images or pcace=False"
            )
    names = [n for n, _ in items]
    total = int(inputs.shape[0]) if isinstance(inputs, Tensor) and inputs.dim() > 0 else None
    moments = {n: RunningMoments() for n in names}
    stores = {n: _ActivationStore(total, n, n_components) for n in names} if pcace else {}
    spatial: Dict[str, tuple] = {}
    calls = {n: 0 for n in names}
    state = {"batch": -1, "pcace": pcace}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            calls[name] += 1
            if calls[name] > 1:
                raise CaptumElfaError(
                    f"layer '{name}' was called {calls[name]} times in one forward pass (a module "
                    "shared between several places); compare layers that run once per forward pass"
                )
            if not isinstance(out, Tensor):
                raise CaptumElfaError(
                    f"layer '{name}' returned a {type(out).__name__}, not a Tensor; choose layers "
                    "whose output is a Tensor of shape (N, C, H, W) or (N, C)"
                )
            a = check_activation_shape(out.detach(), name)
            if name not in spatial:
                spatial[name] = tuple(a.shape[1:])
            elif a.shape[1] != spatial[name][0]:
                raise CaptumElfaError(
                    f"batch {state['batch']}: layer '{name}' has {a.shape[1]} channels, earlier "
                    f"batches had {spatial[name][0]}"
                )
            moments[name].update(a, state["batch"])
            if state["pcace"]:
                stores[name].add(a, state["batch"])

        return hook

    root_mods: Dict[int, nn.Module] = {}
    for root in [model] + [m for _, m in items]:
        if isinstance(root, nn.Module):
            for m in root.modules():
                root_mods[id(m)] = m
    mods = list(root_mods.values())
    training = [(m, m.training) for m in mods]
    params: Dict[int, Tensor] = {}
    for m in mods:
        for p in m.parameters(recurse=False):
            params[id(p)] = p
    requires_grad = [(p, p.requires_grad) for p in params.values()]
    if isinstance(model, nn.Module) and model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; compare_layers computes its statistics "
            "in eval mode (dropout off, batch-norm running statistics) and restores training mode "
            "afterwards",
            UserWarning,
            stacklevel=2,
        )
    device = model_device(model, items[0][1])
    extra = format_additional_args(additional_forward_args)
    ys: List[Tensor] = []
    handles = []
    n_run = 0
    try:
        for m in mods:
            m.eval()
        for name, mod in items:
            handles.append(mod.register_forward_hook(make_hook(name)))
        batches = iter_batches(inputs, batch_size)
        for i, batch in enumerate(progress_bar(batches, progress, "compare layers", _n_batches(inputs, batch_size))):
            if not isinstance(batch, Tensor) or batch.shape[0] == 0:
                raise CaptumElfaError(f"batch {i} is empty or not a Tensor")
            if device is not None and batch.device != device:
                batch = batch.to(device, non_blocking=True)
            for n in names:
                calls[n] = 0
            state["batch"] = i
            with torch.no_grad():
                output = model(batch, *extra)
            missing = [n for n in names if calls[n] == 0]
            if missing:
                raise CaptumElfaError(
                    f"layers {missing} were never called by the model's forward pass; choose "
                    "layers that the forward function actually runs"
                )
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
                    ys.append(_select_target(output, target, batch.shape[0], i))
            n_run += 1
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.train(flag)
        for t, flag in requires_grad:
            if t.requires_grad != flag:
                t.requires_grad_(flag)
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
        lfa = LayerFactorAnalysis(model, mod)
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
        for name in names:
            acts = stores[name].result()
            if n_components > n_images:
                raise CaptumElfaError(f"n_components={n_components} is larger than the number of images ({n_images})")
            scores[name] = pcace_statistics(acts, y, n_components, name)[0]
            del stores[name]  # free the activations early

    rows = [_summary_row(name, elfa[name], scores.get(name)) for name in names]
    return LayerComparison(names=names, rows=rows, elfa=elfa, pcace=scores, target_scores=y)


def _one_output(output: Any, n: int) -> bool:
    return (
        isinstance(output, Tensor) and output.dim() > 0 and output.shape[0] == n and output.reshape(n, -1).shape[1] == 1
    )


def _summary_row(name: str, lfa: LayerFactorAnalysis, scores: Optional[Tensor]) -> Dict[str, Any]:
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
    }
    if scores is not None:
        s = scores.detach().cpu().double()
        order = torch.sort(s, descending=True, stable=True).indices
        row["pcace_max"] = float(s.max())
        row["pcace_mean"] = float(s.mean())
        row["pcace_top_channels"] = order[:TOP_CHANNELS].tolist()
    return row
