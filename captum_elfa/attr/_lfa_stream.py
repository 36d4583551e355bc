"""Streaming a layer's channel moments for :meth:`LayerFactorAnalysis.fit` (one process or several).

Private: :func:`stream_moments` runs the model over the inputs with the layer captured,
accumulates the float64 count, mean and co-moments of the channels (or those of two seeded halves
of the images, for the stability check), combines the ranks' statistics under
``torch.distributed`` and refuses empty inputs and non-finite activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from torch import Tensor

from captum_elfa._capture import Inputs, LayerCapture, iter_batches_with_args
from captum_elfa._progress import n_batches as _n_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.moments import Moments, RunningMoments
from captum_elfa.stats.stability import SplitHalfMoments

__all__ = ["Streamed", "stream_moments"]


@dataclass
class Streamed:
    """What :func:`stream_moments` gathered.

    Attributes:
        moments (Moments): the moments of all the images (of every rank).
        n_images (int): the number of images behind them.
        halves (tuple, optional): ``(moments_a, moments_b, n_images_a, n_images_b)`` with
                    ``stability=True``, else None.
        layer_name (str): the layer's name in the model.
        activation_shape (tuple of int): the layer output's shape without the batch dimension.
        checked (Any): what ``validate`` returned.
    """

    moments: Moments
    n_images: int
    halves: Optional[tuple]
    layer_name: str
    activation_shape: tuple
    checked: Any


def stream_moments(
    make_capture: Callable[[Callable[[Tensor, int], None]], LayerCapture],
    inputs: Inputs,
    *,
    batch_size: int,
    additional_forward_args: Any,
    progress: bool,
    sync: bool,
    stability: bool,
    random_state: Optional[int],
    validate: Callable[[], Any],
) -> Streamed:
    """Stream the moments of the captured layer's channels over ``inputs``.

    Args:
        make_capture (Callable): builds the :class:`LayerCapture` from the per-batch callback.
        inputs, batch_size, additional_forward_args, progress, stability, random_state: as in
                    :meth:`LayerFactorAnalysis.fit`.
        sync (bool): combine the statistics of the ranks of the ``torch.distributed`` group.
        validate (Callable): the argument checks, run first inside the ``try`` so that a rank
                    failing one joins the first collective as failed; its result is returned in
                    ``checked``.

    Returns:
        Streamed: the moments and what goes with them.
    """
    acc: Union[RunningMoments, SplitHalfMoments] = RunningMoments()
    spatial: dict = {}

    def on_output(a: Tensor, index: int) -> None:
        if "shape" not in spatial:
            spatial["shape"] = tuple(a.shape[1:])
        elif a.shape[1] != spatial["shape"][0]:
            raise CaptumElfaError(
                f"batch {index}: layer '{cap.layer_name}' has {a.shape[1]} channels, "
                f"earlier batches had {spatial['shape'][0]}"
            )
        acc.update(a, index)

    # every check runs inside the try: a rank failing one joins the first collective as failed,
    # so the other ranks raise a DistributedError at once instead of waiting for the timeout
    try:
        checked = validate()
        if stability:
            acc = SplitHalfMoments(0 if random_state is None else random_state)
        batches = iter_batches_with_args(inputs, batch_size, additional_forward_args)
        cap = make_capture(on_output)
        with cap:
            n_batches = 0
            for i, (batch, extra) in enumerate(
                progress_bar(batches, progress, "ELFA fit", _n_batches(inputs, batch_size))
            ):
                cap.run(batch, i, extra)
                n_batches += 1
    except BaseException:
        if sync and isinstance(acc, RunningMoments):  # join the collective as failed: no rank waits
            try:
                acc.all_reduce(failed=True)
            except Exception:  # pragma: no cover - the original error matters more
                pass
        raise
    if sync and isinstance(acc, RunningMoments):  # every rank now holds all ranks' statistics
        acc.all_reduce()
        n_batches = acc.batches
        if acc.spatial is not None:
            spatial["shape"] = acc.spatial
    if n_batches == 0 or acc.moments is None:
        raise CaptumElfaError(
            "inputs yielded no batch (an empty DataLoader or iterable); pass at least one batch of images"
        )
    bad = acc.first_nonfinite()
    if bad >= 0:
        rank = getattr(acc, "nonfinite_rank", None)
        raise CaptumElfaError(
            f"layer '{cap.layer_name}' produced NaN or Inf activations in batch {bad}"
            f"{'' if rank is None else f' of rank {rank}'}; "
            "check the inputs and the model (every activation must be finite)"
        )
    halves = None
    if isinstance(acc, SplitHalfMoments):
        ma, mb = acc.halves()
        halves = (ma, mb, acc.n_images_a, acc.n_images_b)
        n_images = acc.n_images_a + acc.n_images_b
    else:
        n_images = acc.images
    return Streamed(acc.moments, n_images, halves, cap.layer_name, spatial["shape"], checked)
