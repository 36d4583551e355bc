"""The demo digits CNN: scikit-learn's 8x8 digits as tensors, a small CNN and its seeded training.

The command line demo (``captum-elfa demo``), ``examples/quickstart.py``, the tutorials and the
benchmarks all explain this one network, trained here in a few seconds on the CPU with nothing
downloaded:

* :func:`load_digits_tensors` -- :func:`sklearn.datasets.load_digits` as ``x`` ``[1797, 1, 8, 8]``
  in [0, 1] and labels ``y`` ``[1797]``;
* :class:`DigitsCNN` -- two convolutions (``depth=2``: ``conv1 relu1 conv2 relu2 pool flatten fc``,
  the layer usually explained is ``relu2``, 32 channels of 8x8 maps) or three with a 4x4 stage for
  CAM-style maps (``depth=3``);
* :func:`train_model` -- Adam on shuffled mini-batches for a fixed number of epochs;
* :func:`train_digits_cnn` -- seed, build, train: the same network for the same seed.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_elfa._validation import CaptumElfaError, check_bool, check_float, check_int

__all__ = ["DigitsCNN", "TrainedDigitsCNN", "load_digits_tensors", "train_model", "train_digits_cnn"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def load_digits_tensors() -> Tuple[Tensor, Tensor]:
    r"""
    scikit-learn's handwritten digits (:func:`sklearn.datasets.load_digits`, bundled with
    scikit-learn: nothing is downloaded) as tensors.

    Returns:
        2-element tuple of **x**, **y**:
        - **x** (*Tensor*): the 1,797 images, ``float32`` of shape ``[1797, 1, 8, 8]``, the
          0..16 grey levels divided by 16 (so in [0, 1]).
        - **y** (*Tensor*): their digits 0..9, ``int64`` of shape ``[1797]``.

    Examples::

        >>> x, y = load_digits_tensors()
        >>> x.shape, y.shape
        (torch.Size([1797, 1, 8, 8]), torch.Size([1797]))
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


class DigitsCNN(nn.Sequential):
    r"""
    The small CNN of the demo, the quickstart, the tutorials and the benchmarks, for 8x8
    grayscale inputs ``[N, 1, 8, 8]`` and 10 classes.

    It is an :class:`torch.nn.Sequential` with named children, so a layer can be reached by
    name (``model.relu2``) or by position (``model[3]``):

    * ``depth=2``: ``conv1`` (1 -> 16, 3x3), ``relu1``, ``conv2`` (16 -> 32, 3x3), ``relu2``,
      ``pool`` (adaptive average pooling to 2x2), ``flatten``, ``fc`` (128 -> 10). ``relu2`` gives
      32 channels of 8x8 maps.
    * ``depth=3``: as above up to ``relu2``, then ``pool`` (2x2 max pooling to 4x4), ``conv3``
      (32 -> 32, 3x3), ``relu3``, ``gap`` (global average pooling), ``flatten``, ``fc``
      (32 -> 10): a 4x4 stage for CAM-style maps (Grad-CAM, EFAM on ``relu3``).

    The weights are initialised by PyTorch's default (global) random generator: seed it with
    :func:`torch.manual_seed` first, or use :func:`train_digits_cnn`.

    Args:
        depth (int, optional): Number of convolutions, 2 or 3.
                    Default: 2

    Examples::

        >>> model = DigitsCNN()
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
        >>> model[3] is model.relu2
        True
    """

    def __init__(self, depth: int = 2) -> None:
        depth = check_int("depth", depth, minimum=2, maximum=3)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 16, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
                ("relu2", nn.ReLU()),
            ]
        )
        if depth == 2:
            layers["pool"] = nn.AdaptiveAvgPool2d(2)
            layers["flatten"] = nn.Flatten()
            layers["fc"] = nn.Linear(128, 10)
        else:
            layers["pool"] = nn.MaxPool2d(2)
            layers["conv3"] = nn.Conv2d(32, 32, 3, padding=1)
            layers["relu3"] = nn.ReLU()
            layers["gap"] = nn.AdaptiveAvgPool2d(1)
            layers["flatten"] = nn.Flatten()
            layers["fc"] = nn.Linear(32, 10)
        super().__init__(layers)
        self.depth = depth


def train_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 15,
    *,
    lr: float = 1e-2,
    batch_size: int = 128,
    loss_fn: LossFn = nn.functional.cross_entropy,
    shuffle_seed: Optional[int] = None,
    num_threads: Optional[int] = 1,
    progress: bool = False,
) -> nn.Module:
    r"""
    Train ``model`` with Adam on shuffled mini-batches of ``(x, y)`` for a fixed number of
    epochs, then put it in eval mode.

    Args:
        model (nn.Module): The model to train (in place).
        x (Tensor): Inputs, one per row.
        y (Tensor): Targets, one per row of ``x`` (class indices for the default loss).
        epochs (int, optional): Number of passes over the data.
                    Default: 15
        lr (float, optional): Adam's learning rate.
                    Default: 1e-2
        batch_size (int, optional): Mini-batch size.
                    Default: 128
        loss_fn (Callable, optional): ``loss_fn(model(x[i]), y[i])`` is minimised, e.g.
                    :func:`torch.nn.functional.mse_loss` for a regression.
                    Default: :func:`torch.nn.functional.cross_entropy`
        shuffle_seed (int, optional): Seed of a private generator for the shuffles; with None
                    the shuffles draw from PyTorch's global generator (seed it with
                    :func:`torch.manual_seed` for a reproducible run).
                    Default: None
        num_threads (int, optional): PyTorch threads while training (restored afterwards). The
                    digits models are tiny: one thread is as fast, and far faster when other
                    work shares the CPU. None leaves the setting alone.
                    Default: 1
        progress (bool, optional): Show a progress bar over the epochs (on stderr).
                    Default: False

    Returns:
        *nn.Module*: **model**, trained and in eval mode.

    Examples::

        >>> x, y = load_digits_tensors()
        >>> torch.manual_seed(0)
        >>> model = train_model(DigitsCNN(), x, y, epochs=5)
    """
    epochs = check_int("epochs", epochs, minimum=0)
    lr = check_float("lr", lr, minimum=0.0, open_min=True)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    progress = check_bool("progress", progress)
    if num_threads is not None:
        num_threads = check_int("num_threads", num_threads, minimum=1)
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(check_int("shuffle_seed", shuffle_seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    epochs_it: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_it = tqdm(epochs_it, desc="training", unit="epoch", leave=False, file=sys.stderr)
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        model.train()
        for _ in epochs_it:
            for i in torch.randperm(len(x), generator=generator).split(batch_size):
                opt.zero_grad()
                loss_fn(model(x[i]), y[i]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


class TrainedDigitsCNN(NamedTuple):
    """What :func:`train_digits_cnn` returns: unpack it as ``model, x, y, accuracy``."""

    model: DigitsCNN
    """The trained network, in eval mode."""
    x: Tensor
    """The images it was trained on."""
    y: Tensor
    """Their labels."""
    accuracy: float
    """Accuracy on ``(x, y)``, the training data, in [0, 1]."""


def train_digits_cnn(
    epochs: int = 15,
    *,
    seed: int = 0,
    depth: int = 2,
    x: Optional[Tensor] = None,
    y: Optional[Tensor] = None,
    lr: float = 1e-2,
    batch_size: int = 128,
    shuffle_seed: Optional[int] = None,
    num_threads: Optional[int] = 1,
    progress: bool = False,
) -> TrainedDigitsCNN:
    r"""
    Seed PyTorch, build a :class:`DigitsCNN` and train it (:func:`train_model`) on the digits:
    the same seed gives the same network (on the same PyTorch build and thread count).

    The seed is set with :func:`torch.manual_seed` before the weights are initialised, and the
    shuffles continue from that generator unless ``shuffle_seed`` is given. With the defaults
    (all 1,797 digits, 15 epochs) training takes a few seconds (seed 0: 97.2% training accuracy).

    Args:
        epochs (int, optional): Number of passes over the data.
                    Default: 15
        seed (int, optional): Seed for :func:`torch.manual_seed`.
                    Default: 0
        depth (int, optional): 2 or 3 convolutions, see :class:`DigitsCNN`.
                    Default: 2
        x (Tensor, optional): Training images ``[N, 1, 8, 8]``; None for all the digits of
                    :func:`load_digits_tensors`.
                    Default: None
        y (Tensor, optional): Their labels ``[N]``; given exactly when ``x`` is.
                    Default: None
        lr (float, optional): Adam's learning rate.
                    Default: 1e-2
        batch_size (int, optional): Mini-batch size.
                    Default: 128
        shuffle_seed (int, optional): See :func:`train_model`.
                    Default: None
        num_threads (int, optional): See :func:`train_model`.
                    Default: 1
        progress (bool, optional): Show a progress bar over the epochs.
                    Default: False

    Returns:
        *TrainedDigitsCNN*: a named tuple ``(model, x, y, accuracy)``: the trained model in eval
        mode, the training images and labels, and the accuracy on them.

    Examples::

        >>> model, x, y, acc = train_digits_cnn()
        >>> layer = model.relu2   # 32 channels of 8x8 maps
    """
    seed = check_int("seed", seed)
    if (x is None) != (y is None):
        raise CaptumElfaError(
            f"give both x and y or neither (got x={'None' if x is None else 'a tensor'}, "
            f"y={'None' if y is None else 'a tensor'})"
        )
    torch.manual_seed(seed)
    if x is None or y is None:
        x, y = load_digits_tensors()
    model = DigitsCNN(depth)
    train_model(
        model,
        x,
        y,
        epochs,
        lr=lr,
        batch_size=batch_size,
        shuffle_seed=shuffle_seed,
        num_threads=num_threads,
        progress=progress,
    )
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return TrainedDigitsCNN(model, x, y, acc)
