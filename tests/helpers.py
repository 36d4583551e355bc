"""Helpers shared by the tests: small CNNs, the reference's data matrix, model-state checks, oracles."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

#: set to 1 in CI (.ci/run): a missing oracle package fails the run instead of skipping its tests
REQUIRE_ORACLES_ENV = "CAPTUM_ELFA_REQUIRE_ORACLES"

#: how to install each oracle (by top-level module); others come with the package's ``dev`` extra
_INSTALL = {
    "elfa": "pip install --no-deps elfa==0.0.8 (as .ci/setup_env.sh: without its TensorFlow dependencies)",
    "factor_analyzer": "pip install factor_analyzer==0.5.1 (or pip install -e '.[dev]')",
    "ace": "pip install ace==0.4.2 (or pip install -e '.[dev]')",
    "sklearn": "pip install scikit-learn",
    "torchvision": "pip install torchvision",
}


def require(module_name: str) -> ModuleType:
    """Import an oracle (reference) package for a test module, as ``pytest.importorskip`` does.

    A missing module skips the calling test (or test module, when called at module level) on a
    local run; with the environment variable ``CAPTUM_ELFA_REQUIRE_ORACLES=1`` (CI) it fails
    instead, naming the module and how to install it, so CI cannot pass without the oracles.

    Args:
        module_name (str): the dotted module to import, e.g. ``"elfa.criteria"``.

    Returns:
        ModuleType: the imported module.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        top = module_name.split(".")[0]
        how = _INSTALL.get(top, f"pip install {top}")
        reason = f"oracle module {module_name!r} is not importable ({e}); install it with: {how}"
        if os.environ.get(REQUIRE_ORACLES_ENV) == "1":
            pytest.fail(f"{reason}. {REQUIRE_ORACLES_ENV}=1 requires every oracle test to run", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
        raise  # pragma: no cover - pytest.skip raises


class SmallCNN(nn.Module):
    """conv(1->c1) -> ReLU -> conv(c1->c2) -> ReLU -> global pool -> linear(10)."""

    def __init__(self, c1: int = 12, c2: int = 20, n_dead: int = 0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if n_dead:
                # dead ReLU channels: zero weights, negative bias -> always 0 after ReLU
                self.conv2.weight[:n_dead] = 0.0
                self.conv2.bias[:n_dead] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))


def layer_matrix(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The reference's data matrix: every pixel of every image a row, channels as columns."""
    acts = []
    h = layer.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    a = acts[0]
    if a.dim() == 2:
        return a.double().numpy()
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).double().numpy()


def standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(0)) / a.std(0)


def model_state(model: nn.Module) -> dict:
    """Everything that must be unchanged after captum_elfa touched the model."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)
