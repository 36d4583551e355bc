"""Quantus' explain_func adapter: EFAM and the analyzers scored by a Quantus faithfulness metric
(Selectivity: the output drop as the most relevant patches are removed), next to our deletion curve."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus", reason="quantus is not installed (pip install quantus)")

from captum_elfa import LayerFactorAnalysis  # noqa: E402
from captum_elfa._validation import CaptumElfaError  # noqa: E402
from captum_elfa.attr.analyzers import EFAM, GradCAM, InputTimesGradient, analyze  # noqa: E402
from captum_elfa.metrics import auc, deletion_curve  # noqa: E402
from captum_elfa.metrics.quantus_adapter import quantus_explain_func  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    from captum_elfa.demo import train_digits_cnn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, x, y, acc = train_digits_cnn(6, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lfa = LayerFactorAnalysis(model, model.get_submodule("relu2")).fit(x, n_factors=6, progress=False)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)[:48]
    return model, lfa, x[idx], y[idx]


def _random_explain(model, inputs, targets, **kwargs):
    g = np.random.default_rng(0)
    return g.random((inputs.shape[0], 1) + tuple(inputs.shape[2:])).astype(np.float32)


def _selectivity(model, x, y, explain) -> float:
    metric = quantus.Selectivity(patch_size=2, disable_warnings=True, display_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=explain, device="cpu"
        )
    # Selectivity's per-sample score is the area under its curve of the class score: lower is better
    return float(np.mean(scores))


def test_explain_func_is_the_analyzers_attribution(trained):
    model, lfa, x, y = trained
    a = InputTimesGradient(model)
    f = quantus_explain_func(a)
    got = f(model=model, inputs=x[:5].numpy(), targets=y[:5].numpy())
    ref = analyze(x[:5], a, y[:5]).val.sum(1, keepdim=True).double().numpy()
    assert got.shape == (5, 1, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # a fitted LayerFactorAnalysis is explained by its EFAM
    efam = quantus_explain_func(lfa)(model=model, inputs=x[:5].numpy(), targets=None)
    np.testing.assert_allclose(efam, analyze(x[:5], EFAM(lfa)).val.sum(1, keepdim=True).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(CaptumElfaError, match="analyzer"):
        quantus_explain_func(object())
    with pytest.raises(CaptumElfaError, match="not the analyzer's model"):
        f(model=torch.nn.Linear(2, 2), inputs=x[:2].numpy(), targets=y[:2].numpy())
    with pytest.raises(CaptumElfaError, match="reduce"):
        quantus_explain_func(a, reduce="mean")


def test_quantus_selectivity_agrees_with_our_deletion_curve(trained):
    """Quantus' Selectivity and our deletion AUC (both: lower is better) both put InputTimesGradient
    ahead of random maps on a trained CNN, and put Grad-CAM and EFAM on the same side of random
    (the coarse conv2 Grad-CAM of 8x8 digits is no better than random by either)."""
    model, lfa, x, y = trained
    explainers = {
        "input_x_gradient": quantus_explain_func(InputTimesGradient(model)),
        "gradcam": quantus_explain_func(GradCAM(model, model.get_submodule("conv2"))),
        "efam": quantus_explain_func(lfa),
        "random": _random_explain,
    }
    sel = {k: _selectivity(model, x, y, f) for k, f in explainers.items()}
    dele = {}
    for k, f in explainers.items():
        maps = torch.from_numpy(f(model=model, inputs=x.numpy(), targets=y.numpy()))
        fr, sc = deletion_curve(model, x, maps, target=y, steps=16, score="prob")
        dele[k] = float(auc(fr, sc).mean())
    assert sel["input_x_gradient"] < sel["random"], sel
    assert dele["input_x_gradient"] < dele["random"], dele
    # the two measures put each explanation on the same side of random maps
    for k in ("gradcam", "efam"):
        assert (sel[k] < sel["random"]) == (dele[k] < dele["random"]), (k, sel, dele)
