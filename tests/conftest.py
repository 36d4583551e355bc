"""Shared fixtures: small real data (scikit-learn's digits) and small CNNs built in the tests."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from threadpoolctl import threadpool_limits

# numba compiles the statistics kernels once per process; with bytecode writing off (as in CI) it
# would compile again in every subprocess a test starts (CLI, distributed ranks). One cache
# folder for the session, inherited by the subprocesses, removed at exit.
if not os.environ.get("NUMBA_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    _numba_cache = tempfile.mkdtemp(prefix="captum-elfa-numba-")
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache
    atexit.register(shutil.rmtree, _numba_cache, ignore_errors=True)

# The tests' matrices are small: OpenBLAS worker threads spinning against torch's own threads on
# a 2-core machine made the scikit-learn oracles 10x slower (numpy 1.26's OpenBLAS especially).
_BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")


from helpers import SmallCNN  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_torch() -> None:
    """Every test starts from the same torch seed, whatever ran before it: a model or input built
    without a seed of its own is the same in every run and every order (an unseeded 4-channel conv
    in test_compare_layers left two channels dead in some runs and failed)."""
    torch.manual_seed(0)


#: test modules marked ``slow`` as a whole (``pytest -m "not slow"`` is the fast loop), and why
SLOW_MODULES = {
    "test_tutorials": "executes every notebook",
    "test_report_browser": "renders reports in headless Chromium",
    "test_insights_browser": "drives Captum Insights in headless Chromium",
    "test_ml_optimum": "the 40-model scan against scikit-learn's converged EM",
    "test_elfa_reference": "the elfa and factor_analyzer oracles at converged tolerances",
    "test_distributed": "spawns torch.distributed process groups",
    "test_figures_scale": "renders every figure at 64, 256 and 512 channels",
    "test_cli": "trains the demo CNN and reports on ResNet-18",
    "test_report_robust": "writes whole reports",
    "test_deeplab": "torchvision DeepLabV3",
    "test_layouts": "ViT, ConvNeXt, Conv1d and Conv3d layers",
    "test_quantus": "Quantus metrics on a trained CNN",
    "test_demo": "trains the digits CNN",
    "test_readme": "runs the README's quickstart",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float32 in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


@pytest.fixture
def small_cnn() -> SmallCNN:
    return SmallCNN().eval()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CAPTUM_ELFA_REQUIRE_BROWSER=1 (set by .ci/run), a browser test that would skip for want
    of Chromium or Playwright fails instead, so CI cannot pass without running them."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("CAPTUM_ELFA_REQUIRE_BROWSER") == "1"):
        return
    if "browser" not in item.module.__name__:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "chromium" in reason.lower() or "playwright" in reason.lower():
        report.outcome = "failed"
        report.longrepr = f"browser test required in CI but skipped: {reason}"
