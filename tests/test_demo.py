"""captum_elfa.demo: the digits loader, the demo CNN and its seeded training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from captum_elfa import CaptumElfaError
from captum_elfa.demo import DigitsCNN, load_digits_tensors, train_digits_cnn, train_model


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_load_digits_tensors_is_sklearn_digits_scaled() -> None:
    x, y = load_digits_tensors()
    d = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy() * 16.0, d.images.astype(np.float32))
    np.testing.assert_array_equal(y.numpy(), d.target)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


@pytest.mark.parametrize(
    ("depth", "names", "n_params"),
    [
        (
            2,
            ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc"],
            16 * 9 + 16 + 32 * 16 * 9 + 32 + 128 * 10 + 10,
        ),
        (
            3,
            ["conv1", "relu1", "conv2", "relu2", "pool", "conv3", "relu3", "gap", "flatten", "fc"],
            16 * 9 + 16 + 32 * 16 * 9 + 32 + 32 * 32 * 9 + 32 + 32 * 10 + 10,
        ),
    ],
)
def test_digits_cnn_layout(depth: int, names: list[str], n_params: int) -> None:
    model = DigitsCNN(depth)
    assert [n for n, _ in model.named_children()] == names
    assert model[3] is model.relu2 and model[2] is model.conv2
    assert sum(p.numel() for p in model.parameters()) == n_params
    out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10)


@pytest.mark.parametrize("depth", [1, 4, 2.0, True, "2"])
def test_digits_cnn_rejects_bad_depth(depth: object) -> None:
    with pytest.raises(CaptumElfaError, match="depth"):
        DigitsCNN(depth)  # type: ignore[arg-type]


def test_train_digits_cnn_is_seeded() -> None:
    x, y = load_digits_tensors()
    x, y = x[:300], y[:300]
    a = train_digits_cnn(2, seed=0, x=x, y=y)
    b = train_digits_cnn(2, seed=0, x=x, y=y)
    c = train_digits_cnn(2, seed=1, x=x, y=y)
    assert all(torch.equal(p, q) for p, q in zip(_params(a.model), _params(b.model)))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a.model), _params(c.model)))
    assert a.accuracy == b.accuracy and a.x is x and a.y is y and not a.model.training
    # the accuracy reported is the one on (x, y)
    with torch.no_grad():
        assert a.accuracy == (a.model(x).argmax(1) == y).float().mean().item()


def test_train_model_shuffle_seed_and_threads() -> None:
    x, y = load_digits_tensors()
    x, y = x[:256], y[:256]
    threads = torch.get_num_threads()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN()
        torch.manual_seed(123 + len(runs))  # a different global state: the shuffles must not use it
        runs.append(_params(train_model(model, x, y, 1, shuffle_seed=7)))
    assert all(torch.equal(p, q) for p, q in zip(*runs))
    assert torch.get_num_threads() == threads


def test_training_learns_the_digits() -> None:
    x, y = load_digits_tensors()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    # a few seeds: held-out accuracy of the tutorials' setting (15 epochs on 1,400 digits)
    for seed in range(3):
        model = train_digits_cnn(15, seed=seed, x=x[train], y=y[train]).model
        with torch.no_grad():
            acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
        assert acc > 0.9, (seed, acc)


def test_x_and_y_go_together() -> None:
    x, _ = load_digits_tensors()
    with pytest.raises(CaptumElfaError, match="both x and y"):
        train_digits_cnn(1, x=x)
