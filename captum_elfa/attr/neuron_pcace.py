"""PCACE: rank the channels of a layer by their maximal correlation with the network's output.

Casacuberta, Suel and Flaxman, *PCACE: A Statistical Approach to Ranking Neurons for CNN
Interpretability* (2021). One forward pass captures the layer's activations; then, for all
channels at once, every pixel position is standardised over the images, each channel's maps are
reduced to their leading principal component(s) and a batched ACE finds the maximal correlation
between the component(s) and the class score.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Union

import torch
from captum.attr import NeuronAttribution
from torch import Tensor, nn

from captum_elfa import _distributed as _dist
from captum_elfa._capture import Inputs, LayerCapture, check_activation_shape, iter_batches
from captum_elfa._progress import n_batches as _n_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError, NotFittedError
from captum_elfa.stats.ace import ACEResult, ace, standardized_components

try:  # captum's usage logger (a no-op outside Meta)
    from captum.log import log_usage
except ImportError:  # pragma: no cover

    def log_usage(*_a: Any, **_k: Any) -> Callable:
        return lambda f: f


__all__ = ["NeuronPCACE", "ChannelRanking", "ACETransforms", "MIN_IMAGES", "pcace_statistics"]

Target = Union[None, int, Callable[[Any], Tensor]]

#: fewest images PCACE accepts (the smoother's windows need a few samples each)
MIN_IMAGES = 10
#: float64 working memory per chunk of channels when standardising and projecting
_CHUNK_BYTES = 1 << 26
#: elements below which a PyTorch CPU operation runs on one thread (``at::internal::GRAIN_SIZE``)
_GRAIN_SIZE = 32767


class ChannelRanking(NamedTuple):
    """Channels sorted by PCACE score, highest first (ties keep channel order)."""

    channels: Tensor
    scores: Tensor


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


class _ActivationStore:
    """Holds the layer's activations as one float32 ``[C, N, H*W]`` Tensor.

    With a known number of images the buffer is allocated at the first batch and filled in
    place; otherwise the per-batch copies are concatenated once at the end.
    """

    def __init__(self, total: Optional[int], layer_name: str, n_components: int) -> None:
        self.total = total
        self.layer_name = layer_name
        self.n_components = n_components
        self.buffer: Optional[Tensor] = None
        self.parts: List[Tensor] = []
        self.count = 0
        self.spatial: Optional[tuple] = None

    def add(self, act: Tensor, index: int) -> None:
        a = check_activation_shape(act.detach(), self.layer_name)
        b, c, h, w = a.shape
        if self.spatial is None:
            self.spatial = (c, h, w)
            if self.n_components > h * w:
                raise CaptumElfaError(
                    f"n_components={self.n_components} is larger than the {h * w} pixels "
                    f"({h}x{w}) of layer '{self.layer_name}'; choose 1 <= n_components <= {h * w}"
                )
        elif (c, h, w) != self.spatial:
            raise CaptumElfaError(
                f"batch {index}: layer '{self.layer_name}' output is {(c, h, w)} per image, earlier "
                f"batches gave {self.spatial}; every image must give the same shape"
            )
        block = a.reshape(b, c, h * w).transpose(0, 1)
        if self.total is not None:
            if self.buffer is None:
                self.buffer = torch.empty(c, self.total, h * w, dtype=torch.float32, device=a.device)
            if self.count + b > self.total:
                raise CaptumElfaError(
                    f"layer '{self.layer_name}' produced more samples ({self.count + b}) than the "
                    f"{self.total} inputs; its output's first dimension must be the batch"
                )
            self.buffer[:, self.count : self.count + b].copy_(block)
        else:
            self.parts.append(block.to(dtype=torch.float32, copy=True))
        self.count += b

    def result(self) -> Tensor:
        if self.buffer is not None:
            return self.buffer[:, : self.count]
        out = torch.cat(self.parts, dim=1)
        self.parts = []
        return out


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
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: Optional[List[int]] = None) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): the model, or any function running it.
            layer (torch.nn.Module): the layer whose channels are ranked; its output is
                        ``(N, C, H, W)`` or ``(N, C)`` (treated as ``H = W = 1``).
            device_ids (list[int], optional): kept for Captum's signature; the layer must run
                        once per forward pass (a DataParallel replica setup is not supported).
        """
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

        Returns:
            Tensor: ``[C]`` float64 PCACE scores in [0, 1], on the device of the activations.

        Examples::

            >>> pc = NeuronPCACE(model, model.layer4)
            >>> scores = pc.attribute(images, target=281)      # 300 images of class 281
            >>> channels, top = pc.rank_channels()
            >>> t = pc.ace_transforms(int(channels[0]))          # plot t.phi[0] vs t.component[0]
        """
        n_components = self._check_n_components(n_components)
        self._check_target_type(target)
        sync = distributed and _dist.is_distributed()
        if not sync and isinstance(inputs, Tensor) and inputs.dim() > 0 and inputs.shape[0] < MIN_IMAGES:
            raise CaptumElfaError(
                f"PCACE needs at least {MIN_IMAGES} images, got {inputs.shape[0]}; pass more images "
                "(the authors use 300 of one class)"
            )
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
        scores, constant, components, result, rows = pcace_statistics(acts, y, n_components, layer_name)

        self.scores_ = scores
        self.constant_channels_ = constant.nonzero().squeeze(-1)
        self.components_ = components
        self.target_scores_ = y.to(acts.device)
        self.n_images_ = n
        self.n_components_ = n_components
        self.activation_shape_ = spatial
        self.activation_bytes_ = acts.numel() * acts.element_size()
        self.layer_name_ = layer_name
        self._ace = result
        self._rows = rows
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
        cap = LayerCapture(self.forward_func, self.layer, lambda a, i: store.add(a, i))
        store = _ActivationStore(total, cap.layer_name, n_components)
        ys: List[Tensor] = []
        try:
            with cap:
                batches = iter_batches(inputs, batch_size)
                for i, batch in enumerate(progress_bar(batches, progress, "PCACE", _n_batches(inputs, batch_size))):
                    before = store.count
                    output = cap.run(batch, i, additional_forward_args)
                    ys.append(_select_target(output, target, store.count - before, i))
        except Exception:
            if sync:  # join the collective as failed: the other ranks raise instead of waiting
                try:
                    _dist.gather_header([0, -1, -1, -1], failed=True)
                except Exception:  # pragma: no cover - the original error matters more
                    pass
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
            ChannelRanking: ``(channels, scores)``, LongTensor and Tensor ``[C]``.
        """
        if scores is None:
            self._check_fitted("rank_channels")
            scores = self.scores_
        if not isinstance(scores, Tensor) or scores.dim() != 1:
            raise CaptumElfaError(
                f"scores must be a 1-D Tensor [C], got {type(scores).__name__} {getattr(scores, 'shape', '')}"
            )
        order = torch.sort(scores, descending=True, stable=True)
        return ChannelRanking(order.indices, order.values)

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
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise CaptumElfaError(
                f"n_components={n_components!r} is not valid; choose a positive int (1 gives the "
                "plain maximal correlation)"
            )
        return n_components

    @staticmethod
    def _check_target_type(target: Target) -> None:
        if target is None or callable(target):
            return
        if isinstance(target, bool) or not isinstance(target, int):
            raise CaptumElfaError(
                f"target={target!r} is not valid; pass a class index (int), None for a network "
                "with one output per image, or a callable mapping the output to a Tensor [N]"
            )


def pcace_statistics(
    acts: Tensor, y: Tensor, n_components: int = 1, layer_name: str = "layer"
) -> tuple[Tensor, Tensor, Tensor, Optional[ACEResult], Tensor]:
    """PCACE scores from captured activations: what :meth:`NeuronPCACE.attribute` computes after
    its forward pass.

    Args:
        acts (Tensor): ``[C, N, P]`` activations (float32 is enough; statistics in float64).
        y (Tensor): ``[N]`` the explained output of every image (not constant).
        n_components (int): principal components per channel, ``1 <= n_components <= min(N, P)``.
        layer_name (str): named in error messages.

    Returns:
        (scores, constant, components, ace_result, rows): ``[C]`` float64 scores (0 for constant
        channels), ``[C]`` bool mask of constant channels, ``[C, k, N]`` component scores, the
        :class:`ACEResult` of the non-constant channels (None if there is none) and ``[C]`` the row
        of each channel in it (-1 for constant channels).
    """
    c = acts.shape[0]
    components, constant = _standardized_components_chunked(acts, n_components, layer_name)
    live = (~constant).nonzero().squeeze(-1)
    scores = torch.zeros(c, dtype=torch.float64, device=acts.device)
    result: Optional[ACEResult] = None
    if live.numel() > 0:
        result = _batched_ace(components.index_select(0, live), y.to(acts.device))
        scores[live] = result.correlation
    rows = torch.full((c,), -1, dtype=torch.long, device=acts.device)
    rows[live] = torch.arange(live.numel(), device=acts.device)
    return scores, constant, components, result, rows


def _standardized_components_chunked(acts: Tensor, n_components: int, layer_name: str) -> tuple[Tensor, Tensor]:
    """:func:`standardized_components` over chunks of channels, checking the activations are finite."""
    c, n, p = acts.shape
    chunk = _chunk_channels(n, p)
    comps, consts = [], []
    for start in range(0, c, chunk):
        block = acts[start : start + chunk]
        if not bool(torch.isfinite(block).all()):
            bad = (~torch.isfinite(block)).flatten(1).any(1).nonzero().squeeze(-1) + start
            raise CaptumElfaError(
                f"layer '{layer_name}' produced NaN or Inf activations in channels "
                f"{bad[:10].tolist()}; every activation must be finite"
            )
        comp, const = standardized_components(block, n_components)
        comps.append(comp)
        consts.append(const)
    return torch.cat(comps), torch.cat(consts)


def _batched_ace(components: Tensor, y: Tensor) -> ACEResult:
    """ACE over the rows of ``components`` ``[B, k, N]``; rows are independent problems.

    On CPU the rows go in chunks small enough that every elementwise operation stays under
    PyTorch's parallel grain size (32768 elements): ACE is thousands of small operations, and
    forking OpenMP threads for each costs more than it gains (and stalls for whole scheduler time
    slices on a busy machine). Elsewhere, chunks of at most ``_CHUNK_BYTES`` of work arrays
    (about 40 arrays of ``[rows, N]``).
    """
    b, k, n = components.shape
    rows = max(1, _CHUNK_BYTES * 4 // (8 * 40 * n))
    if components.device.type == "cpu":
        rows = min(rows, max(8, _GRAIN_SIZE // ((n + 1) * k)))
    if components.shape[0] <= rows:
        return ace(components, y)
    parts = [ace(components[i : i + rows], y) for i in range(0, components.shape[0], rows)]
    return ACEResult(
        torch.cat([r.x_transforms for r in parts]),
        torch.cat([r.y_transform for r in parts]),
        torch.cat([r.rsq for r in parts]),
        torch.cat([r.outer_iterations for r in parts]),
    )


def _chunk_channels(n: int, p: int) -> int:
    """Channels standardised and projected at once: about ``_CHUNK_BYTES`` of float64 work arrays
    (the centred maps and a product of the same size, and the ``min(N, P)`` square Gram matrix)."""
    per_channel = 8 * (2 * n * p + min(n, p) ** 2)
    return max(1, _CHUNK_BYTES // per_channel)


def _gather_ranks(local: Optional[tuple[Tensor, Tensor]], spatial: Optional[tuple]) -> tuple[Tensor, Tensor, tuple]:
    """All ranks' activations ``[C, N_r, P]`` and targets ``[N_r]``, concatenated in rank order
    (every rank gets the same), with the activation shape ``(C, H, W)``. A collective.

    Sizes go first (a rank may have no image), then the tensors padded to the largest ``N_r``,
    trimmed after the gather.
    """
    n_local = 0 if local is None else int(local[0].shape[1])
    shape = list(spatial) if local is not None and spatial is not None else [-1, -1, -1]
    headers = _dist.gather_header([n_local] + shape)
    shapes = [tuple(h[1:]) if h[0] > 0 else None for h in headers]
    common = _dist.single_value("activation shape (C, H, W)", shapes)
    if common is None:
        raise CaptumElfaError(
            f"inputs yielded no image on any of the {len(headers)} ranks (empty DataLoaders or "
            f"iterables); pass at least {MIN_IMAGES} images in all"
        )
    c, h, w = common
    sizes = [hd[0] for hd in headers]
    if local is None:
        device = _dist.comm_device()
        acts = torch.zeros(c, 0, h * w, dtype=torch.float32, device=device)
        y = torch.zeros(0, dtype=torch.float64, device=device)
    else:
        acts, y = local[0], local[1].to(torch.float64)
    all_acts = _dist.all_gather_padded(acts.to(torch.float32), sizes, 1)
    all_y = _dist.all_gather_padded(y, sizes, 0)
    return torch.cat(all_acts, 1), torch.cat(all_y), (c, h, w)


def _describe(t: Tensor) -> str:
    bad = (~torch.isfinite(t)).nonzero().squeeze(-1)
    return f"images {bad[:10].tolist()}"


def _select_target(output: Any, target: Target, n: int, index: int) -> Tensor:
    """The explained score of every image of a batch, float64 ``[n]``."""
    if callable(target) and not isinstance(target, int):
        y = target(output)
        if not isinstance(y, Tensor):
            raise CaptumElfaError(f"target callable returned a {type(y).__name__}; it must return a Tensor [N]")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1 or y.shape[0] != n:
            raise CaptumElfaError(
                f"target callable returned shape {tuple(y.shape)} for batch {index} of {n} images; "
                f"it must return a Tensor [{n}]"
            )
        return y.detach().to(torch.float64)
    if not isinstance(output, Tensor):
        raise CaptumElfaError(
            f"the model returned a {type(output).__name__}, not a Tensor; pass target as a callable "
            "mapping the output to a Tensor [N]"
        )
    if output.dim() == 0 or output.shape[0] != n:
        raise CaptumElfaError(
            f"the model output has shape {tuple(output.shape)} for batch {index} of {n} images; "
            "expected the batch along the first dimension"
        )
    flat = output.detach().reshape(n, -1)
    k = flat.shape[1]
    if target is None:
        if k != 1:
            raise CaptumElfaError(
                f"target=None needs a network with one output per image (regression), but the "
                f"output has shape {tuple(output.shape)}; pass a class index 0..{k - 1} or a callable"
            )
        return flat[:, 0].to(torch.float64)
    if output.dim() != 2:
        raise CaptumElfaError(
            f"target={target} needs an output of shape (N, K), got {tuple(output.shape)}; pass a "
            "callable mapping the output to a Tensor [N]"
        )
    if not 0 <= target < k:
        raise CaptumElfaError(
            f"target={target} is out of range for an output with {k} classes; choose an index in [0, {k - 1}]"
        )
    return flat[:, target].to(torch.float64)
