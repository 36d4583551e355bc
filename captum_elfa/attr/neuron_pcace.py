"""PCACE: rank the channels of a layer by their maximal correlation with the network's output.

Casacuberta, Suel and Flaxman, *PCACE: A Statistical Approach to Ranking Neurons for CNN
Interpretability* (2021). One forward pass captures the layer's activations; then, for all
channels at once, every pixel position is standardised over the images, each channel's maps are
reduced to their leading principal component(s) and a batched ACE finds the maximal correlation
between the component(s) and the class score.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Union

import torch
from captum.attr import NeuronAttribution
from torch import Tensor, nn

from captum_elfa import _distributed as _dist
from captum_elfa._capture import (
    Inputs,
    LayerCapture,
    LayerLayout,
    TokenGrid,
    iter_batches_with_args,
)
from captum_elfa._progress import n_batches as _n_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError, NotFittedError, check_float, check_int, is_int, user_stacklevel
from captum_elfa.stats.ace import ACEResult
from captum_elfa.stats.pcace import (
    MIN_IMAGES,
    MIN_INTERVAL_IMAGES,
    MIN_RELIABLE_IMAGES,
    PCACEDiagnostics,
    PCACEWarning,
    _batched_ace,
    _chunk_channels,
    _standardized_components_chunked,
    bootstrap_intervals,
    pcace_fit,
    pcace_statistics,
    permutation_null,
    reliability_messages,
)

try:  # captum's usage logger (a no-op outside Meta)
    from captum.log import log_usage
except ImportError:  # pragma: no cover

    def log_usage(*_a: Any, **_k: Any) -> Callable:
        return lambda f: f


__all__ = [
    "NeuronPCACE",
    "ChannelRanking",
    "ACETransforms",
    "MIN_IMAGES",
    "MIN_INTERVAL_IMAGES",
    "MIN_RELIABLE_IMAGES",
    "PCACEDiagnostics",
    "PCACEWarning",
    "pcace_statistics",
    "select_target",
]
# re-exported for compare_layers and older code (they live in captum_elfa.stats.pcace)
_REEXPORTED = (_batched_ace, _chunk_channels, _standardized_components_chunked)

from captum_elfa.attr._pcace_capture import (  # noqa: E402 - after the re-export tuple above
    Target,
    _ActivationStore,
    _describe,
    _gather_ranks,
    _join_failed,
    _resolve_layer,
    _select_target,
    select_target,
)

#: default number of target permutations of the null
DEFAULT_PERMUTATIONS = 20


class _Ranking(NamedTuple):
    channels: Tensor
    scores: Tensor


class ChannelRanking(_Ranking):
    """Channels sorted by PCACE score, highest first (ties keep channel order).

    A ``(channels, scores)`` pair (``channels, scores = pc.rank_channels()`` works) with the
    attributes ``p_values`` ``[C]``, ``significant`` ``[C]`` and ``intervals`` ``[C, 2]`` in the
    same order, None when not computed (no permutation null, no bootstrap, or explicit ``scores``).
    """

    p_values: Optional[Tensor] = None
    significant: Optional[Tensor] = None
    intervals: Optional[Tensor] = None

    def __new__(
        cls,
        channels: Tensor,
        scores: Tensor,
        p_values: Optional[Tensor] = None,
        significant: Optional[Tensor] = None,
        intervals: Optional[Tensor] = None,
    ) -> ChannelRanking:
        self = super().__new__(cls, channels, scores)
        self.p_values, self.significant, self.intervals = p_values, significant, intervals
        return self


@dataclass
class ACETransforms:
    """The ACE transforms of one channel, for plotting ``phi`` against ``component`` and
    ``theta`` against ``target``.

    Attributes:
        channel (int): the channel.
        score (float): its PCACE score ``|corr(theta, sum phi)|``.
        component (Tensor): ``[k, N]`` principal-component scores of the channel's maps.
        phi (Tensor): ``[k, N]`` ACE transforms of the components.
        target (Tensor): ``[N]`` the explained output (class logit or regression output).
        theta (Tensor): ``[N]`` ACE transform of the target (mean 0, variance 1).
    """

    channel: int
    score: float
    component: Tensor
    phi: Tensor
    target: Tensor
    theta: Tensor


class NeuronPCACE(NeuronAttribution):
    r"""PCACE channel importance (Casacuberta, Suel & Flaxman 2021).

    A channel's importance is the maximal correlation, found by ACE (Breiman & Friedman's
    alternating conditional expectations with Friedman's super smoother), between its activation
    maps and the class score over a set of images. Each channel's ``N x (H*W)`` matrix of maps
    (one row per image) has its columns (pixel positions) standardised and is reduced by PCA to
    ``n_components`` scores per image; ACE then finds transforms ``phi`` of the component(s) and
    ``theta`` of the score with maximal correlation, and the channel scores
    ``|corr(theta(y), sum_i phi_i)|`` in [0, 1].

    The scores equal those of the authors' recipe (scikit-learn ``StandardScaler`` + ``PCA``,
    then the ``ace`` package per channel) but come from one forward pass over the images and one
    batched computation over all channels. A channel whose activations do not vary over the images
    (a dead ReLU channel) scores 0 and is listed in ``constant_channels_``.

    Attributes set by :meth:`attribute`:
        scores\_ (Tensor): ``[C]`` float64 scores.
        constant_channels\_ (Tensor): indices of the channels constant over the images.
        components\_ (Tensor): ``[C, k, N]`` principal-component scores (0 for constant channels).
        target_scores\_ (Tensor): ``[N]`` the explained output of every image.
        n_images\_ (int), n_components\_ (int), activation_shape\_ (tuple ``(C, H, W)``),
        activation_bytes\_ (int, size of the float32 activation buffer), layer_name\_ (str).
        diagnostics\_ (PCACEDiagnostics): eigen-gap ``lambda1 / lambda2``, explained variance,
        tied and zero fractions, ``constant`` and ``ill_defined`` flags per channel.
        n_permutations\_, n_bootstrap\_ (int), random_state\_, confidence\_.
        null_scores\_ (Tensor or None): ``[P, C]`` scores against permuted targets.
        p_values\_ (Tensor or None): ``[C]`` per-channel permutation p-values
        ``(1 + #{null >= score}) / (P + 1)``.
        null_quantiles\_ (dict or None): ``{0.5: Tensor[C], 0.95: Tensor[C]}`` of the null.
        threshold\_ (float or None): 95th percentile over permutations of the maximum null
        score over channels; above it a channel is significant (FWER 5%).
        significant\_ (Tensor or None): ``[C]`` bool, ``scores_ > threshold_``.
        bootstrap_scores\_ (Tensor or None): ``[B, C]`` scores on half-samples of the images.
        bias_corrected_scores\_ (Tensor or None): ``[C]`` ``2 * scores_ - mean(bootstrap_scores_)``:
        the score with ACE's finite-sample bias removed to first order.
        intervals\_ (Tensor or None): ``[C, 2]`` half-sampling intervals of the population score
        at level ``confidence_``, centred on the bias-corrected score.

    The scores do not depend on the order of the images: they are computed in a canonical order
    (images sorted by the target) and ties of the components are broken canonically in ACE.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Union[nn.Module, str],
        device_ids: Optional[List[int]] = None,
        *,
        channel_dim: Optional[int] = None,
        token_grid: TokenGrid = None,
        drop_tokens: int = 0,
        call_index: Any = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): the model, or any function running it.
            layer (torch.nn.Module or str): the layer whose channels are ranked; its output is
                        ``(N, C, H, W)`` or ``(N, C)`` (treated as ``H = W = 1``), or another
                        layout described by ``channel_dim``. A string is a name of
                        ``forward_func.named_modules()`` (``forward_func`` must then be an
                        ``nn.Module``), resolved here.
            device_ids (list[int], optional): kept for Captum's signature (a DataParallel
                        replica setup is not supported).
            channel_dim, token_grid, drop_tokens, call_index: the layer's layout, as for
                        :class:`~captum_elfa.LayerFactorAnalysis` (see
                        :class:`captum_elfa._capture.LayerLayout`): channels-last and token
                        layers need ``channel_dim=-1``; ``call_index`` selects one call of a
                        module run several times per forward pass (default None: such a module
                        is refused; ``"all"`` is refused too, the target has one value per image).
        """
        layer = _resolve_layer(forward_func, layer)
        if isinstance(call_index, str):
            raise CaptumElfaError(
                f"call_index={call_index!r} is not valid for PCACE: the target has one value per image, "
                "so one call of the layer must be chosen; pass an int (e.g. -1 for the last call)"
            )
        self.layout = LayerLayout(channel_dim, token_grid, drop_tokens, call_index)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        self._ace: Optional[ACEResult] = None
        self._rows: Optional[Tensor] = None

    @log_usage()
    def attribute(
        self,
        inputs: Inputs,
        target: Target = None,
        n_components: int = 1,
        additional_forward_args: Any = None,
        progress: bool = True,
        batch_size: int = 64,
        distributed: bool = True,
        n_permutations: int = DEFAULT_PERMUTATIONS,
        n_bootstrap: int = 0,
        random_state: Optional[int] = 0,
        confidence: float = 0.95,
    ) -> Tensor:
        r"""Score every channel of the layer.

        With an initialised ``torch.distributed`` process group of several ranks (and
        ``distributed=True``), each rank runs the model on its own ``inputs``; the activations
        and target scores of all ranks are then gathered in rank order and every rank computes
        the identical scores, equal to those of one process given all ranks' images in rank
        order (every rank then holds all images' activations). ``attribute`` is then a
        collective (every rank must call it); a rank may have fewer than 10 images or none (the
        minimum applies to the total). An error raised while a rank runs its batches is raised
        there, and the other ranks raise a ``DistributedError`` (a ``CaptumElfaError``); errors
        on the gathered data are raised on every rank. A rank that dies or hangs leaves the
        others waiting for the process group's timeout.

        Args:
            inputs (Tensor, iterable of Tensors or DataLoader): at least 10 images (the authors
                        use 300 images of one class). A Tensor is processed in chunks of
                        ``batch_size``; a DataLoader may yield Tensors or ``(x, y, ...)`` tuples.
            target (int, None or Callable): what the channels are correlated with. An int is a
                        class index of a ``(N, K)`` output (use the pre-softmax logit); None
                        requires one output per image (a regression network); a callable maps
                        the model's output for a batch to a Tensor ``[N]``. Default: None.
            n_components (int): number of principal components of each channel's maps; with
                        more than one, ACE fits the additive model ``theta(y) ~ sum_i phi_i``.
                        At most the number of pixels and of images. Default: 1.
            additional_forward_args (Any, optional): extra arguments passed to the model after
                        the input, as in Captum.
            progress (bool): show a tqdm progress bar over the batches. Default: True.
            batch_size (int): chunk size when ``inputs`` is a single Tensor. Default: 64.
            distributed (bool): gather the images of all ranks when a ``torch.distributed``
                        process group is initialised; False scores this rank's images alone.
                        Default: True.
            n_permutations (int): ``P`` seeded permutations of the target for the null
                        (``null_scores_``, ``p_values_``, ``null_quantiles_``, ``threshold_``,
                        ``significant_``); 0 turns the null off. Default: 20 (the smallest
                        p-value is then 1/21).
            n_bootstrap (int): ``B`` seeded half-samples of the images for bias-corrected
                        confidence intervals of the population score (``intervals_``,
                        ``bias_corrected_scores_``; see
                        :func:`captum_elfa.stats.pcace.bootstrap_intervals`); 0 (default)
                        turns them off. Each half-sample repeats the statistics on ``N // 2``
                        images. About their level from 200 images for channels related to the
                        target (90% intervals: 84-95%, mean 91%, in the coverage scan); they
                        undercover below 200 images (a warning says so) and for channels
                        unrelated to the target (read those next to their p-values).
            random_state (int or None): seed of the permutations and resamples (None: fresh
                        randomness). Default: 0.
            confidence (float): level of the bootstrap intervals, in (0, 1). Default: 0.95.

        Warns:
            PCACEWarning: with fewer than ``MIN_RELIABLE_IMAGES`` (100) images, where chance
                        scores are 0.5-0.7; with intervals (``n_bootstrap > 0``) and fewer than
                        ``MIN_INTERVAL_IMAGES`` (200) images, where they undercover; and when no
                        channel beats the permutation threshold.

        Returns:
            Tensor: ``[C]`` float64 PCACE scores in [0, 1], on the device of the activations.

        Examples::

            >>> pc = NeuronPCACE(model, model.layer4)
            >>> scores = pc.attribute(images, target=281)      # 300 images of class 281
            >>> channels, top = pc.rank_channels()
            >>> t = pc.ace_transforms(int(channels[0]))          # plot t.phi[0] vs t.component[0]
        """
        sync = distributed and _dist.is_distributed()
        try:  # every argument check runs before the first collective; a failing rank joins it as failed
            n_components = self._check_n_components(n_components)
            target = self._check_target_type(target)
            n_permutations = check_int("n_permutations", n_permutations, minimum=0)
            n_bootstrap = check_int("n_bootstrap", n_bootstrap, minimum=0)
            if random_state is not None:
                random_state = check_int("random_state", random_state, minimum=0)
            confidence = check_float("confidence", confidence, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
            batch_size = check_int("batch_size", batch_size, minimum=1)
            if not sync and isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] < MIN_IMAGES:
                raise CaptumElfaError(
                    f"PCACE needs at least {MIN_IMAGES} images, got {inputs.shape[0]}; pass more images "
                    "(the authors use 300 of one class)"
                )
        except BaseException:
            if sync:
                _join_failed()
            raise
        acts, y, layer_name, spatial = self._capture(
            inputs, target, n_components, additional_forward_args, progress, batch_size, sync
        )
        _, n, p = acts.shape
        if n < MIN_IMAGES:
            raise CaptumElfaError(f"PCACE needs at least {MIN_IMAGES} images, got {n}; pass more images")
        if n_components > n:
            raise CaptumElfaError(
                f"n_components={n_components} is larger than the number of images ({n}); "
                f"choose 1 <= n_components <= {min(n, p)}"
            )
        if not bool(torch.isfinite(y).all()):
            raise CaptumElfaError(f"the target scores contain NaN or Inf ({_describe(y)}); every score must be finite")
        if bool(y.max() == y.min()):
            raise CaptumElfaError(
                f"the target score is constant (every image scores {y[0].item():.6g}, target={target!r}); "
                "ACE needs a score that varies over the images: check the target and the images"
            )
        fit = pcace_fit(acts, y, n_components, layer_name)
        scores, constant, result, rows = fit.scores, fit.constant, fit.ace_result, fit.rows
        null = permutation_null(fit, n_permutations, random_state) if n_permutations > 0 else None
        boot = (
            bootstrap_intervals(
                acts, y, n_components, n_bootstrap, random_state, confidence, layer_name, scores=fit.scores
            )
            if n_bootstrap > 0
            else None
        )

        self.scores_ = scores
        self.constant_channels_ = constant.nonzero().squeeze(-1)
        self.components_ = fit.components
        self.diagnostics_ = fit.diagnostics
        self.n_permutations_ = n_permutations
        self.n_bootstrap_ = n_bootstrap
        self.random_state_ = random_state
        self.confidence_ = confidence
        self.null_scores_ = None if null is None else null.null_scores
        self.p_values_ = None if null is None else null.p_values
        self.null_quantiles_ = None if null is None else null.quantiles
        self.threshold_ = None if null is None else null.threshold
        self.significant_ = None if null is None else null.significant
        self.bootstrap_scores_ = None if boot is None else boot.replicates
        self.intervals_ = None if boot is None else boot.intervals
        self.bias_corrected_scores_ = None if boot is None else boot.bias_corrected
        self.target_scores_ = y.to(acts.device)
        self.n_images_ = n
        self.n_components_ = n_components
        self.activation_shape_ = spatial
        self.activation_bytes_ = acts.numel() * acts.element_size()
        self.layer_name_ = layer_name
        self._ace = result
        self._rows = rows
        for message in reliability_messages(n, null, boot):
            warnings.warn(message, PCACEWarning, stacklevel=user_stacklevel())
        return scores

    # -- steps ---------------------------------------------------------------------------------
    def _capture(
        self,
        inputs: Inputs,
        target: Target,
        n_components: int,
        additional_forward_args: Any,
        progress: bool,
        batch_size: int,
        sync: bool = False,
    ) -> tuple[Tensor, Tensor, str, tuple]:
        total = int(inputs.shape[0]) if isinstance(inputs, Tensor) and inputs.dim() > 0 else None
        ys: List[Tensor] = []
        try:
            lay = self.layout
            cap = LayerCapture(
                self.forward_func,
                self.layer,
                lambda a, i: store.add(a, i),
                **lay.kwargs(),
                what="NeuronPCACE",
            )
            store = _ActivationStore(total, cap.layer_name, n_components)
            with cap:
                batches = iter_batches_with_args(inputs, batch_size, additional_forward_args)
                for i, (batch, extra) in enumerate(
                    progress_bar(batches, progress, "PCACE", _n_batches(inputs, batch_size))
                ):
                    before = store.count
                    output = cap.run(batch, i, extra)
                    ys.append(_select_target(output, target, store.count - before, i))
        except BaseException:
            if sync:  # join the collective as failed: the other ranks raise instead of waiting
                _join_failed()
            raise
        if sync:
            local = (store.result(), torch.cat(ys)) if ys and store.count > 0 else None
            acts, y, spatial = _gather_ranks(local, store.spatial)
            return acts, y, cap.layer_name, spatial
        if not ys:
            raise CaptumElfaError("inputs yielded no batch (an empty DataLoader or iterable); pass at least 10 images")
        # every batch ran the layer (LayerCapture.run checks), and the hook's store.add set the shape
        assert store.spatial is not None, "a batch ran, so the store knows the activation shape"
        return store.result(), torch.cat(ys), cap.layer_name, store.spatial

    # -- results -------------------------------------------------------------------------------
    def rank_channels(self, scores: Optional[Tensor] = None) -> ChannelRanking:
        """Channels sorted by score, highest first.

        Args:
            scores (Tensor, optional): ``[C]`` scores to rank; default: those of the last
                        :meth:`attribute` call.

        Returns:
            ChannelRanking: ``(channels, scores, p_values, significant, intervals)``: LongTensor
            and Tensor ``[C]``, then the fitted p-values ``[C]``, significance flags ``[C]`` and
            bootstrap intervals ``[C, 2]`` in the same order (None when not computed or when
            ``scores`` is given).
        """
        fitted = scores is None
        if scores is None:
            self._check_fitted("rank_channels")
            scores = self.scores_
        if not isinstance(scores, Tensor) or scores.dim() != 1:
            raise CaptumElfaError(
                f"scores must be a 1-D Tensor [C], got {type(scores).__name__} {getattr(scores, 'shape', '')}"
            )
        order = torch.sort(scores, descending=True, stable=True)
        if not fitted:
            return ChannelRanking(order.indices, order.values)

        def pick(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.index_select(0, order.indices.to(t.device))

        return ChannelRanking(
            order.indices,
            order.values,
            pick(getattr(self, "p_values_", None)),
            pick(getattr(self, "significant_", None)),
            pick(getattr(self, "intervals_", None)),
        )

    def ace_transforms(self, channel: int) -> ACETransforms:
        """The ACE transforms of ``channel`` from the last :meth:`attribute` call, for plotting.

        Args:
            channel (int): a channel index, ``0 <= channel < C``, not a constant channel.

        Returns:
            ACETransforms: components, phi, target scores, theta and the score.

        Examples::

            >>> t = pc.ace_transforms(7)
            >>> plt.plot(t.component[0], t.phi[0], "."); plt.plot(t.target, t.theta, ".")
        """
        self._check_fitted("ace_transforms")
        c = self.scores_.numel()
        try:
            index = operator.index(channel)  # int, numpy or 0-d torch integers
        except TypeError:
            index = -1
        if isinstance(channel, bool) or not 0 <= index < c:
            raise CaptumElfaError(f"channel={channel!r} is not valid; choose an int in [0, {c - 1}]")
        channel = index
        rows = self._rows
        assert rows is not None, "attribute() sets _rows together with scores_"
        row = int(rows[channel])
        if row < 0 or self._ace is None:
            raise CaptumElfaError(
                f"channel {channel} is constant over the images (score 0, listed in "
                "constant_channels_) and has no ACE transforms; choose another channel"
            )
        return ACETransforms(
            channel=channel,
            score=float(self.scores_[channel]),
            component=self.components_[channel],
            phi=self._ace.x_transforms[row],
            target=self.target_scores_,
            theta=self._ace.y_transform[row],
        )

    # -- checks --------------------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "scores_"):
            raise NotFittedError(f"call attribute(inputs, target) before {what}()")

    @staticmethod
    def _check_n_components(n_components: Any) -> int:
        if not is_int(n_components) or int(n_components) < 1:
            raise CaptumElfaError(
                f"n_components={n_components!r} is not valid; choose a positive int (1 gives the "
                "plain maximal correlation)"
            )
        return n_components

    @staticmethod
    def _check_target_type(target: Any) -> Target:
        if is_int(target):
            return int(target)  # Python, numpy and 0-d torch integers
        if target is None or (callable(target) and not isinstance(target, Tensor)):
            return target
        raise CaptumElfaError(
            f"target={target!r} is not valid; pass a class index (int), None for a network "
            "with one output per image, or a callable mapping the output to a Tensor [N]"
        )
