"""ELFA: Explainable Layer Factor Analysis of a convolutional layer, as a Captum LayerAttribution."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from captum.attr import LayerAttribution
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from captum_elfa._capture import CallIndex, Inputs, LayerCapture, LayerLayout, TokenGrid, iter_batches_with_args
from captum_elfa._capture import layer_name as _lname
from captum_elfa._distributed import is_distributed
from captum_elfa._validation import CaptumElfaError, NotFittedError, check_choice, user_stacklevel
from captum_elfa.attr import _lfa_io, _lfa_report
from captum_elfa.attr._lfa_io import FittedELFA
from captum_elfa.attr._lfa_maps import NORMALIZATIONS, contract, factor_indices, normalize_maps, short_repr
from captum_elfa.attr._lfa_stream import stream_moments
from captum_elfa.stats.moments import Moments
from captum_elfa.stats.nfactors import N_FACTORS_METHODS, NFactorsSpec, check_n_factors_spec
from captum_elfa.stats.pipeline import fit_elfa
from captum_elfa.stats.rotations import ROTATIONS, check_rotation_kwargs

try:  # captum's usage logger (a no-op outside Meta)
    from captum.log import log_usage
except ImportError:  # pragma: no cover

    def log_usage(*_a: Any, **_k: Any) -> Callable:
        return lambda f: f


__all__ = ["LayerFactorAnalysis", "N_FACTORS_METHODS", "NORMALIZATIONS"]

_SAVED = _lfa_io.SAVED


class LayerFactorAnalysis(LayerAttribution):
    r"""Explainable Layer Factor Analysis (ELFA) of one layer of a network.

    The layer's output ``(N, C, H, W)`` is read as ``N*H*W`` samples of ``C`` variables (the
    channels). :meth:`fit` streams the channels' mean and co-moment matrix in float64 over any
    number of batches (memory O(C^2)), leaves out dead and exactly collinear channels, tests the
    adequacy of the data for a factor model (KMO, Bartlett), chooses the number of factors (and
    reports every criterion side by side), fits a maximum-likelihood factor model on the
    correlation matrix from several starting points (keeping the best, converged by a KKT test on
    the projected gradient), rotates it (orthogonal or oblique, to convergence) and computes its
    validity metrics; optionally it checks the factors' split-half replicability.
    :meth:`attribute` returns the Essential Feature Attribution Map (EFAM): the factor scores of
    every pixel, weighted by the factors' total absolute loadings.

    Reference: López-González, Gómez-Silva, Besada-Portas, Pajares, *Layer factor analysis in
    convolutional neural networks for explainability*, Applied Soft Computing 150 (2024) 111094.

    Conventions: factors are ordered by the variance they explain and each factor's (pattern)
    loadings sum to a positive number. For oblique rotations ``loadings_`` holds the pattern
    ``Λ``, ``phi_`` the factor correlations ``Φ`` and ``structure_`` the structure ``Λ Φ``;
    communalities are ``diag(Λ Φ Λᵀ)`` and factor scores the regression scores
    ``Φ Λᵀ Σ⁻¹ x`` (for orthogonal rotations ``Φ = I`` and these are scikit-learn's).

    Fitted attributes: ``fitted_`` (a :class:`~captum_elfa.attr._lfa_io.FittedELFA`, the one
    fitted state), ``result_`` (its :class:`~captum_elfa.stats.pipeline.ELFAResult`), every field
    ``f`` of that result as ``f_`` (``loadings_``, ``uniquenesses_``, ``n_factors_``,
    ``adequacy_``, ``metrics_``, ...), ``layer_name_`` and ``activation_shape_``. They are
    read-only views of ``fitted_`` and raise ``NotFittedError`` before :meth:`fit`.

    What a number can say: the statistics treat every pixel as a sample, but the pixels of one
    image are strongly dependent, so the effective sample size is closer to ``n_images_``; a fit
    on fewer than ``min_images_`` images is flagged (``report()["cautions"]``) and warned about.

    Args:
        forward_func (Callable or torch.nn.Module): the model, or any function running it.
        layer (torch.nn.Module): the layer to explain. Its output is read as channels at
                    positions: ``(N, C, H, W)``, ``(N, C)`` (a linear layer: ``H = W = 1``),
                    ``(N, C, L)``, ``(N, C, D, H, W)``, channels-last ``(N, H, W, C)`` or tokens
                    ``(N, L, C)`` (see ``channel_dim``). Every position of every image is a sample.
        device_ids (list[int], optional): kept for Captum compatibility (``DataParallel``).
        channel_dim (int, optional): the dimension of the layer output holding the channels:
                    ``1`` (channels first) or ``-1`` (channels last: ConvNeXt's Linear layers,
                    Swin, ViT tokens). None: 1 for 2-D outputs and channels-first modules
                    (conv, batch norm, pooling); an ambiguous or channels-last-looking output is
                    refused with a message naming ``channel_dim``. Default: None.
        token_grid (None, "auto" or (h, w)): for a token output ``(N, L, C)``: put the tokens
                    (after ``drop_tokens``) on an ``h x w`` grid (``"auto"``: a square), so maps
                    are ``[N, 1, h, w]`` and upsample onto the image. None: maps
                    ``[N, 1, L, 1]``. Default: None.
        drop_tokens (int): leading tokens of a token output left out of the fit and the maps
                    (ViT's CLS token: 1). Default: 0.
        call_index (int, None or "all"): the call of a module that runs several times per
                    forward pass (ResNet's ``BasicBlock.relu``) whose output is used; negative
                    counts from the end (see :class:`~captum_elfa._capture.LayerLayout`);
                    ``"all"`` makes every call's output a set of samples. Default: None, which
                    refuses a module called more than once with a message naming the options.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer1)
        >>> lfa.fit(loader, n_factors="kaiser", rotation="varimax")
        >>> lfa.n_factors_, lfa.adequacy_.kmo, lfa.metrics_.r2, lfa.converged_
        >>> lfa.n_factors_criteria_          # {'kaiser': 12, 'parallel': 9, 'scree': 30, ...}
        >>> efam = lfa.attribute(images)                    # [N, 1, H, W] in [0, 1]
        >>> up = LayerAttribution.interpolate(efam, images.shape[2:])
        >>> lfa.fit(loader, rotation="oblimin", rotation_kwargs={"normalize": True}, stability=True)
        >>> lfa.phi_, lfa.stability_.congruence
        >>> vit = LayerFactorAnalysis(model, model.encoder.layers[5], channel_dim=-1,
        ...                           drop_tokens=1, token_grid="auto")      # maps [N, 1, 14, 14]
        >>> cnx = LayerFactorAnalysis(model, model.features[5][0].block[3], channel_dim=-1)
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: Optional[List[int]] = None,
        *,
        channel_dim: Optional[int] = None,
        token_grid: TokenGrid = None,
        drop_tokens: int = 0,
        call_index: CallIndex = None,
    ) -> None:
        if not isinstance(layer, nn.Module):
            raise CaptumElfaError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        self.layout = LayerLayout(channel_dim, token_grid, drop_tokens, call_index)
        self._fitted: Optional[FittedELFA] = None

    @property
    def fitted_(self) -> FittedELFA:
        """The fitted state (result, layer name, activation shape, layout): what :meth:`save` writes."""
        st = getattr(self, "_fitted", None)
        if st is None:
            raise NotFittedError(
                "LayerFactorAnalysis has no fitted attributes before fit; call fit(inputs) first "
                "(or LayerFactorAnalysis.load(path, model, layer))"
            )
        return st

    def _capture(self, on_output: Callable[[Tensor, int], None]) -> LayerCapture:
        lay = self.layout
        return LayerCapture(
            self.forward_func,
            self.layer,
            on_output,
            **lay.kwargs(),
            what="LayerFactorAnalysis",
            # only the layer's output is needed: from the second batch on the forward pass ends
            # at the layer (the rest of the network is not run)
            stop_early=True,
        )

    # ------------------------------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        inputs: Inputs,
        n_factors: NFactorsSpec = "kaiser",
        rotation: Optional[str] = "varimax",
        additional_forward_args: Any = None,
        progress: bool = True,
        batch_size: int = 64,
        random_state: Optional[int] = 0,
        distributed: bool = True,
        rotation_kwargs: Optional[Dict[str, Any]] = None,
        stability: bool = False,
    ) -> LayerFactorAnalysis:
        r"""Stream the layer's activations and fit the factor model.

        With an initialised ``torch.distributed`` process group of several ranks (and
        ``distributed=True``), each rank streams its own ``inputs`` and the ranks' statistics
        (count, mean, co-moments) are combined with the same merge, in rank order: every rank
        ends with the identical model, equal (to rounding) to that of one process fitting all
        ranks' inputs in rank order. ``fit`` is then a collective (every rank must call it); a
        rank may have no batch. Errors are raised on every rank: NaN/Inf activations on any rank
        (named with its rank and batch), ranks with different channel counts, and an error
        raised while a rank streams its batches (that rank raises its own error, the others a
        ``DistributedError``, which is a ``CaptumElfaError``). A rank that dies or hangs leaves
        the others waiting for the process group's timeout.

        Warnings (each also a flag in ``report()["cautions"]``): ``ConvergenceWarning``
        (scikit-learn's) when the ML fit or the rotation did not converge (``converged_`` is then
        False); a ``UserWarning`` for a real Heywood case (a uniqueness on its bound at the
        optimum, ``heywood_channels_``), for too few images (``n_images_ < min_images_``), for
        exactly collinear channels (left out, ``collinear_channels_``) and for factors that are
        not replicable across halves of the images (with ``stability=True``).

        Args:
            inputs (Tensor, iterable of Tensors or DataLoader): the images. A Tensor is processed
                        in chunks of ``batch_size``; a DataLoader may yield Tensors or
                        ``(x, y, ...)`` tuples (the first element is the input).
            n_factors (int, str or float): an int in ``[1, live channels - 1]`` and at most the
                        identification (Ledermann) bound; ``"kaiser"`` (eigenvalues of R at
                        least 1); ``"scree"`` (standard-error scree, Zoski & Jurs, as the
                        ``elfa`` reference); ``"parallel"`` (Horn's parallel analysis, seeded by
                        ``random_state``); or a float in (0, 1), the fraction of variance the
                        leading eigenvalues must reach. Every criterion's count is reported in
                        ``n_factors_criteria_``. Default: ``"kaiser"``.
            rotation (str or None): ``"varimax"``, ``"quartimax"`` (orthogonal), ``"promax"``,
                        ``"oblimin"`` (oblique) or None. Default: varimax.
            additional_forward_args (Any, optional): extra arguments passed to the model after
                        the input, as in Captum. When ``inputs`` is a Tensor of ``N`` samples, a
                        Tensor argument whose first dimension is ``N`` is per-sample and cut with
                        the batches (see :func:`captum_elfa._capture.iter_batches_with_args`).
            progress (bool): show a tqdm progress bar over batches. Default: True.
            batch_size (int): chunk size when ``inputs`` is a single Tensor. Default: 64.
            random_state (int, optional): seed of parallel analysis, of the random starts of the
                        ML fit and of the split into halves. Default: 0.
            distributed (bool): combine the statistics of all ranks when a ``torch.distributed``
                        process group is initialised; False fits on this rank's inputs alone.
                        Default: True.
            rotation_kwargs (dict, optional): options of the rotation: ``normalize`` (Kaiser
                        normalisation, default False as scikit-learn and the ``elfa`` reference;
                        factor_analyzer and psych default to True), ``power`` (promax, default
                        4), ``gamma`` (oblimin, default 0: quartimin), ``tol``, ``max_iter``.
            stability (bool): also stream the moments of two seeded halves of the images, fit the
                        same model on each and report Tucker's congruence per factor in
                        ``stability_`` (memory stays O(C²)). Default: False.

        Returns:
            LayerFactorAnalysis: ``self``, fitted.

        Examples::

            >>> lfa = LayerFactorAnalysis(model, model.layer2).fit(loader, n_factors="parallel")
        """
        sync = distributed and is_distributed()

        def validate() -> tuple:  # runs inside the streaming's try (see stream_moments)
            check_choice("rotation", rotation, ROTATIONS)
            rkw = check_rotation_kwargs(rotation, rotation_kwargs or {})
            nf = check_n_factors_spec(n_factors)
            if stability and sync:
                raise CaptumElfaError(
                    "stability=True is not available with torch.distributed yet; pass distributed=False "
                    "(fit on this rank's images) or stability=False"
                )
            return nf, rkw

        got = stream_moments(
            self._capture,
            inputs,
            batch_size=batch_size,
            additional_forward_args=additional_forward_args,
            progress=progress,
            sync=sync,
            stability=stability,
            random_state=random_state,
            validate=validate,
        )
        n_factors, rkw = got.checked
        self.fit_moments(
            got.moments,
            n_factors=n_factors,
            rotation=rotation,
            rotation_kwargs=rkw,
            n_images=got.n_images,
            halves=got.halves,
            random_state=random_state,
            layer_name=got.layer_name,
            activation_shape=got.activation_shape,
            _stacklevel=3,
        )
        return self

    def fit_moments(
        self,
        moments: Moments,
        n_factors: NFactorsSpec = "kaiser",
        rotation: Optional[str] = "varimax",
        rotation_kwargs: Optional[Dict[str, Any]] = None,
        n_images: Optional[int] = None,
        halves: Optional[tuple] = None,
        random_state: Optional[int] = 0,
        layer_name: Optional[str] = None,
        activation_shape: Optional[Sequence[int]] = None,
        _stacklevel: int = 2,
    ) -> LayerFactorAnalysis:
        r"""Fit the model from moments streamed elsewhere (the consumer interface of ELFA).

        :meth:`fit` calls this after streaming; code that captures several layers in one pass
        (``compare_layers``) streams a :class:`~captum_elfa.stats.moments.RunningMoments` per
        layer and calls it for each.

        Args:
            moments (Moments): count (images x pixels), mean [C] and co-moment matrix [C, C].
            n_factors, rotation, rotation_kwargs, random_state: as in :meth:`fit`.
            n_images (int, optional): the number of images behind ``moments`` (for the
                        sample-size caution); None takes every sample as one image.
            halves (tuple, optional): ``(moments_a, moments_b, n_images_a, n_images_b)`` of two
                        disjoint halves of the images, for the stability check.
            layer_name (str, optional): the layer's name in the model (for messages, reports).
            activation_shape (sequence of int, optional): the layer output's shape without the
                        batch dimension, e.g. ``(C, H, W)``.

        Returns:
            LayerFactorAnalysis: ``self``, fitted.
        """
        check_choice("rotation", rotation, ROTATIONS)
        n_factors = check_n_factors_spec(n_factors)
        # the C x C algebra is small: BLAS worker threads spinning against torch's would cost
        # far more than they save (2x idle, 10x+ on a busy 2-core machine)
        with threadpool_limits(limits=1, user_api="blas"):
            res = fit_elfa(
                moments,
                n_factors=n_factors,
                rotation=rotation,
                rotation_kwargs=rotation_kwargs,
                n_images=n_images,
                halves=halves,
                random_state=random_state,
            )
        shape = tuple(int(s) for s in activation_shape) if activation_shape is not None else (res.n_channels,)
        name = layer_name if layer_name is not None else _lname(self.forward_func, self.layer)
        self._fitted = FittedELFA(res, name, shape, self.layout)
        for caution in res.cautions:
            warnings.warn(f"layer '{name}': {caution.message}", caution.category, stacklevel=user_stacklevel())
        return self

    # ------------------------------------------------------------------------------------------
    # attributions
    # ------------------------------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if getattr(self, "_fitted", None) is None:
            raise NotFittedError(
                f"LayerFactorAnalysis.{what} needs a fitted model; call fit(inputs) first "
                "(or LayerFactorAnalysis.load(path, model, layer))"
            )

    def _contract(
        self,
        inputs: Union[Tensor, Inputs],
        weights: Tensor,
        bias: Tensor,
        dtype: torch.dtype,
        additional_forward_args: Any,
        batch_size: int,
    ) -> Tensor:
        """``weights @ activation + bias`` over channels at every pixel: ``[N, rows, H, W]``."""
        batches = iter_batches_with_args(inputs, batch_size, additional_forward_args)
        return contract(self._capture, batches, self.n_channels_, weights, bias, dtype)

    def factor_scores(
        self, inputs: Union[Tensor, Inputs], additional_forward_args: Any = None, batch_size: int = 64
    ) -> Tensor:
        r"""Factor scores of every pixel: ``f = (I + W^T Psi^-1 W)^-1 W^T Psi^-1 x``.

        Args:
            inputs (Tensor, iterable or DataLoader): the images.
            additional_forward_args (Any, optional): extra model arguments.
            batch_size (int): chunk size for a Tensor input. Default: 64.

        Returns:
            Tensor: ``[N, k, H, W]`` float64 factor scores (the latent factors of the model,
            as scikit-learn's ``FactorAnalysis.transform`` of the standardised activations).
        """
        self._check_fitted("factor_scores")
        return self._contract(
            inputs, self.score_weights_, self.score_bias_, torch.float64, additional_forward_args, batch_size
        )

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Inputs],
        *args: Any,
        factors: Union[None, str, int, Sequence[int]] = None,
        normalize: Optional[str] = "max_min",
        additional_forward_args: Any = None,
        batch_size: int = 64,
    ) -> Tensor:
        r"""Essential Feature Attribution Maps (EFAM) of the fitted layer.

        Every argument after ``inputs`` is keyword-only: ELFA explains the layer, not an output,
        so a Captum-style positional target (``lfa.attribute(x, 3)``) is refused rather than
        read as factor 3.

        ``EFAM = sum_k a_k f_k`` with ``a_k = sum_j |W_jk|``, normalised per image.

        Args:
            inputs (Tensor, iterable or DataLoader): the images to explain.
            factors (None, "all", int or list of int, keyword-only): None gives the combined EFAM
                        ``[N, 1, H, W]``; "all" or a list of factor indices gives per-factor
                        maps ``[N, k', H, W]`` (each factor's scores, normalised per image).
            normalize (str or None): per-image normalisation: ``"max_min"`` (to [0, 1],
                        default), ``"relu"`` (``max(m, 0) / max``), ``"max"``
                        (``m / max|m|``) or None (raw). A constant map becomes zeros.
            additional_forward_args (Any, optional): extra model arguments.
            batch_size (int): chunk size for a Tensor input. Default: 64.

        Returns:
            Tensor: the maps at the layer's resolution, float32 on the model's device. Use
            ``LayerAttribution.interpolate(maps, inputs.shape[2:])`` to upsample them.

        Examples::

            >>> efam = lfa.attribute(images)                       # [N, 1, H, W]
            >>> per_factor = lfa.attribute(images, factors="all")  # [N, k, H, W]
        """
        if args:
            raise CaptumElfaError(
                f"LayerFactorAnalysis.attribute takes no positional argument after inputs, got {short_repr(args)}; "
                "ELFA has no target (the maps summarise the layer): pass factors=... for per-factor maps, "
                "normalize=..., additional_forward_args=... by keyword"
            )
        check_choice("normalize", normalize, NORMALIZATIONS)
        self._check_fitted("attribute")
        idx = factor_indices(factors, self.n_factors_)
        if idx is None:
            # EFAM = sum_k a_k f_k is itself one linear map of the channels: a single contraction
            a = self.loadings_.abs().sum(0)
            weights, bias = (a @ self.score_weights_)[None], (a @ self.score_bias_)[None]
        else:
            weights, bias = self.score_weights_[idx], self.score_bias_[idx]
        maps = self._contract(inputs, weights, bias, torch.float32, additional_forward_args, batch_size)
        return normalize_maps(maps, normalize)

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """All fitted results as a JSON-serialisable dict.

        Besides the numbers it holds what they cannot say: ``n_images`` next to ``n_samples``,
        ``min_images``, ``cautions`` (each caution issued as a warning at fit, as
        ``{"kind", "message"}``), ``heywood_channels``, ``collinear_channels``, every factor-count
        criterion and, with ``stability=True``, the split-half congruence per factor.
        """
        self._check_fitted("report")
        return _lfa_report.report(self.fitted_)

    def summary(self) -> str:
        """A readable multi-line summary of the fitted model, with its cautions."""
        self._check_fitted("summary")
        return _lfa_report.summary(self.fitted_)

    def __repr__(self) -> str:
        name = type(self.layer).__name__
        if getattr(self, "_fitted", None) is None:
            return f"LayerFactorAnalysis(layer={name}, not fitted)"
        return (
            f"LayerFactorAnalysis(layer={getattr(self, 'layer_name_', name)}, n_factors={self.n_factors_}, "
            f"channels={self.n_channels_}, dead={len(self.dead_channels_)}, kmo={self.adequacy_.kmo:.3f}, "
            f"r2={self.metrics_.r2:.3f})"
        )

    # ------------------------------------------------------------------------------------------
    # persistence (no pickle: torch.load(weights_only=True))
    # ------------------------------------------------------------------------------------------
    def save(self, path: Union[str, Any]) -> None:
        """Save the fitted model to ``path`` (a dict of tensors and plain values; no pickled code).

        Args:
            path (str or os.PathLike): file to write.
        """
        self._check_fitted("save")
        _lfa_io.save(path, self.fitted_)

    @classmethod
    def load(
        cls,
        path: Union[str, Any],
        forward_func: Callable,
        layer: nn.Module,
        *,
        channel_dim: Optional[int] = _SAVED,
        token_grid: TokenGrid = _SAVED,
        drop_tokens: int = _SAVED,
        call_index: CallIndex = _SAVED,
    ) -> LayerFactorAnalysis:
        """Load a model saved by :meth:`save` and attach it to ``forward_func`` and ``layer``.

        The file is read with ``torch.load(weights_only=True)``: it never executes pickled code.
        Every field is checked (keys, types, shapes against each other, finite values,
        uniquenesses in [0, 1], a valid ``Φ``, a valid layout): a damaged file raises
        ``CaptumElfaError``. So does a layer whose name in ``forward_func`` or whose width
        (``out_channels`` / ``out_features`` / ``num_features``) differs from the one the model was
        fitted on.

        Files of format version 3 (this version) hold the layout the model was fitted with
        (``channel_dim``, ``token_grid``, ``drop_tokens``, ``call_index``) and it is restored; a
        layout argument passed here must then equal the saved one (a different layout reads other
        samples than those the model was fitted on) or ``CaptumElfaError`` is raised. Version 2
        files hold no layout: the arguments passed here are used (the constructor's defaults for
        those not passed). Older and newer versions are refused with a message saying what to do.

        Args:
            path (str or os.PathLike): file written by :meth:`save`.
            forward_func (Callable or nn.Module): the model.
            layer (nn.Module): the layer the model was fitted on.
            channel_dim, token_grid, drop_tokens, call_index (keyword-only, optional): the layout,
                        as in the constructor. Default: the saved layout (version 3), else the
                        constructor's defaults.

        Returns:
            LayerFactorAnalysis: the fitted instance.

        Examples::

            >>> lfa.save("layer2.pt")
            >>> back = LayerFactorAnalysis.load("layer2.pt", model, model.layer2)
        """
        passed: Dict[str, Any] = dict(
            channel_dim=channel_dim, token_grid=token_grid, drop_tokens=drop_tokens, call_index=call_index
        )
        given = {k: v for k, v in passed.items() if v is not _SAVED}
        state = _lfa_io.load_state(path)
        obj = cls(forward_func, layer, **given)  # checks the arguments; its layout serves a version-2 file
        st = _lfa_io.from_state(path, state, obj.layout)
        if "layout" in state:
            _lfa_io.check_layout_arguments(path, st.layout, given)
        obj.layout = st.layout
        name = _lfa_io.check_layer(path, st, forward_func, layer)
        obj._fitted = FittedELFA(st.result, st.layer_name or name, st.activation_shape, obj.layout)
        return obj


# the public fitted attributes, each a read-only view of the one fitted state (``fitted_``)
for _name, _get in _lfa_io.fitted_attributes().items():
    setattr(LayerFactorAnalysis, _name, _lfa_io.fitted_property(_name, _get))
del _name, _get
