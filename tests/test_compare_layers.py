"""compare_layers: one pass over the data, results equal to separate per-layer runs."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from captum_elfa import CaptumElfaError, LayerFactorAnalysis, NeuronPCACE
from captum_elfa.attr.compare_layers import LayerComparison, compare_layers
from helpers import SmallCNN, assert_same_state, model_state

pytestmark = pytest.mark.filterwarnings("ignore:Heywood case:RuntimeWarning")


@pytest.fixture(scope="module")
def x150(digits):
    return digits[0][:150]


@pytest.fixture(scope="module")
def model():
    return SmallCNN(c1=12, c2=16, seed=3).eval()


@pytest.fixture(scope="module")
def comparison(model, x150):
    layers = {"conv1": model.relu1, "conv2": model.conv2, "relu2": model.relu2}
    return compare_layers(model, layers, x150, target=3, n_factors="kaiser", progress=False, batch_size=40)


class CountingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_equals_separate_runs(model, x150, comparison):
    assert isinstance(comparison, LayerComparison)
    assert comparison.names == ["conv1", "conv2", "relu2"]
    for name, layer in (("conv1", model.relu1), ("conv2", model.conv2), ("relu2", model.relu2)):
        ref = LayerFactorAnalysis(model, layer).fit(x150, n_factors="kaiser", progress=False, batch_size=40)
        got = comparison.elfa[name]
        assert got.n_factors_ == ref.n_factors_
        for attr in ("mean_", "correlation_", "loadings_", "uniquenesses_", "score_weights_"):
            torch.testing.assert_close(getattr(got, attr), getattr(ref, attr), rtol=0, atol=1e-8)
        assert abs(got.adequacy_.kmo - ref.adequacy_.kmo) < 1e-8
        assert abs(got.metrics_.r2 - ref.metrics_.r2) < 1e-8
        assert got.activation_shape_ == ref.activation_shape_
        torch.testing.assert_close(got.attribute(x150[:5]), ref.attribute(x150[:5]), rtol=0, atol=1e-6)
        ref_pc = NeuronPCACE(model, layer)
        pc = ref_pc.attribute(x150, target=3, progress=False, batch_size=40)
        torch.testing.assert_close(comparison.pcace[name], pc, rtol=0, atol=1e-8)
        # the same permutation null (same seed): p-values, threshold, significant channels
        null = comparison.pcace_null[name]
        torch.testing.assert_close(null.p_values, ref_pc.p_values_, rtol=0, atol=1e-12)
        assert null.threshold == pytest.approx(ref_pc.threshold_, abs=1e-10)
        row = comparison.row(name)
        assert row["channels"] == ref.n_channels_ and row["n_factors"] == ref.n_factors_
        assert row["dead"] == ref.dead_channels_.numel()
        assert row["kmo"] == pytest.approx(ref.adequacy_.kmo, abs=1e-8)
        assert row["pcace_max"] == pytest.approx(float(pc.max()), abs=1e-8)
        assert row["pcace_top_channels"][0] == int(NeuronPCACE(model, layer).rank_channels(pc).channels[0])
        assert row["pcace_n_images"] == 150 and row["pcace_threshold"] == pytest.approx(ref_pc.threshold_, abs=1e-10)
        assert row["pcace_significant"] == int(ref_pc.significant_.sum())


def test_model_runs_once_per_batch_and_state_restored(x150):
    inner = SmallCNN(c1=12, c2=16, seed=3)
    inner.train()
    inner.fc.weight.requires_grad_(False)
    model = CountingModel(inner)
    model.train()
    before = model_state(model)
    with pytest.warns(UserWarning, match="training mode"):
        out = compare_layers(model, [inner.relu1, inner.relu2], x150, target=0, progress=False, batch_size=32)
    assert model.calls == 5  # ceil(150 / 32), not 5 per layer
    assert out.names == ["inner.relu1", "inner.relu2"]
    assert_same_state(before, model_state(model))
    assert model.training and inner.relu1.training


def test_state_restored_when_a_batch_raises(x150):
    model = SmallCNN(c1=12, c2=16, seed=3)
    before = model_state(model)
    bad = [x150[:20], torch.zeros(20, 1, 4)]  # the second batch breaks the convolution
    with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="training mode"):
        compare_layers(model, [model.relu1, model.relu2], bad, target=0, progress=False)
    assert_same_state(before, model_state(model))


def test_to_dict_and_figure(comparison):
    d = comparison.to_dict(reports=True)
    text = json.dumps(d)
    assert "relu2" in text and len(d["rows"]) == 3 and set(d["elfa"]) == {"conv1", "conv2", "relu2"}
    fig = comparison.figure()
    assert len([a for a in fig.axes if a.get_visible()]) >= 4
    # the PCACE panel marks each layer's family-wise null threshold
    (thr,) = [ln for a in fig.axes for ln in a.get_lines() if ln.get_label() == "FWER 5% null threshold"]
    assert thr.get_ydata().tolist() == pytest.approx([r["pcace_threshold"] for r in comparison.rows])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getbuffer().nbytes > 5000


def test_null_off_and_its_warnings(model, x150):
    from captum_elfa.stats.pcace import PCACEWarning

    with pytest.warns(PCACEWarning) as caught:
        out = compare_layers(model, {"a": model.relu1}, x150[:40], target=3, progress=False, n_permutations=5)
    assert any("layer 'a': PCACE with 40 images" in str(w.message) for w in caught)
    assert out.pcace_null["a"].null_scores.shape == (5, 12) and out.rows[0]["pcace_threshold"] is not None
    assert len(out.to_dict()["pcace_p_values"]["a"]) == 12
    off = compare_layers(model, {"a": model.relu1}, x150, target=3, progress=False, n_permutations=0)
    assert off.pcace_null == {} and off.rows[0]["pcace_threshold"] is None and off.rows[0]["pcace_n_images"] == 150
    with pytest.raises(CaptumElfaError, match="n_permutations"):
        compare_layers(model, {"a": model.relu1}, x150, target=3, progress=False, n_permutations=-1)


def test_without_pcace_and_skipped_pcace(model, x150):
    out = compare_layers(model, {"a": model.relu1}, x150[:6], pcace=False, progress=False)
    assert out.pcace == {} and out.rows[0]["pcace_max"] is None
    with pytest.warns(UserWarning, match="PCACE is skipped"):
        out = compare_layers(model, {"a": model.relu1}, x150, progress=False)
    assert out.pcace == {}
    fig = out.figure()
    assert fig is not None


def test_regression_target_none_and_callable(x150):
    model = nn.Sequential(SmallCNN(c1=12, c2=16, seed=4), nn.Linear(10, 1)).eval()
    a = compare_layers(model, [model[0].relu2], x150, target=None, progress=False)
    b = compare_layers(model, [model[0].relu2], x150, target=lambda o: o[:, 0] * 2.0, progress=False)
    pc = NeuronPCACE(model, model[0].relu2).attribute(x150, progress=False)
    torch.testing.assert_close(a.pcace["0.relu2"], pc, rtol=0, atol=1e-8)
    torch.testing.assert_close(b.pcace["0.relu2"], pc, rtol=0, atol=1e-6)  # ACE is scale-invariant


def test_errors(model, x150):
    with pytest.raises(CaptumElfaError, match="empty"):
        compare_layers(model, [], x150, progress=False)
    with pytest.raises(CaptumElfaError, match="twice"):
        compare_layers(model, [model.relu1, model.relu1], x150, progress=False)
    with pytest.raises(CaptumElfaError, match="not a submodule"):
        compare_layers(model, [nn.ReLU()], x150, progress=False)
    with pytest.raises(CaptumElfaError, match="at least 10"):
        compare_layers(model, [model.relu1], x150[:5], target=1, progress=False)
    with pytest.raises(CaptumElfaError, match="n_factors"):
        compare_layers(model, [model.relu1], x150, n_factors="bogus", progress=False)
    with pytest.raises(CaptumElfaError, match="out of range"):
        compare_layers(model, [model.relu1], x150, target=12, progress=False)
    shared = nn.ReLU()
    torch.manual_seed(0)  # seeded: unseeded 4-channel convs sometimes left 2 dead channels (too few for a fit)
    twice = nn.Sequential(nn.Conv2d(1, 8, 3), shared, nn.Conv2d(8, 8, 3), shared).eval()
    with pytest.raises(CaptumElfaError, match="call_index=2 is not valid.*called 2 time"):
        compare_layers(twice, [shared], x150, pcace=False, progress=False, call_index=2)
    assert all(len(m._forward_hooks) == 0 for m in twice.modules())
    # a module called twice: refused by default (naming call_index), the last call with -1 (as
    # Captum's LayerGradCam), or another call_index
    with pytest.raises(CaptumElfaError, match="called 2 times per forward pass"):
        compare_layers(twice, [shared], x150, pcace=False, progress=False, n_factors=1)
    last = compare_layers(twice, [shared], x150, pcace=False, progress=False, n_factors=1, call_index=-1)
    first = compare_layers(twice, {"s": shared}, x150, pcace=False, progress=False, n_factors=1, call_index=0)
    with torch.no_grad():
        a0 = twice[1](twice[0](x150))
        a1 = twice[1](twice[2](a0))
    torch.testing.assert_close(last.elfa["1"].mean_, a1.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(first.elfa["s"].mean_, a0.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-8)


def test_dataloader_and_uneven_batches_match_tensor(model, x150, comparison):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x150, torch.zeros(150, dtype=torch.long)), batch_size=40)
    a = compare_layers(model, {"relu2": model.relu2}, loader, target=3, progress=False)
    b = compare_layers(
        model,
        {"relu2": model.relu2},
        iter([x150[:40], x150[40:80], x150[80:120], x150[120:]]),
        target=3,
        progress=False,
    )
    for out in (a, b):
        torch.testing.assert_close(out.pcace["relu2"], comparison.pcace["relu2"], rtol=0, atol=1e-8)
        torch.testing.assert_close(out.elfa["relu2"].loadings_, comparison.elfa["relu2"].loadings_, rtol=0, atol=1e-8)


def test_figure_legends_cover_no_line_and_no_text(comparison):
    """The legends sit beside the panels: no legend box touches a data point of its panel (the
    KMO line was covered), the 0.6 line included, and no two texts overlap (as test_figures_scale)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from test_figures_scale import _check_layout

    from captum_elfa.visualization import plot_layer_comparison

    fig = comparison.figure()
    assert type(fig) is type(plot_layer_comparison(comparison))  # the method delegates to visualization
    _check_layout(fig, "compare_layers")
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        box = leg.get_window_extent(renderer)
        assert box.x0 >= ax.get_window_extent(renderer).x1 - 1.0  # beside the panel, not on it
        for line in ax.get_lines():
            pts = line.get_transform().transform(np.column_stack(line.get_data()).astype(float))
            pts = pts[np.isfinite(pts).all(1)]
            inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
            assert not inside.any(), (ax.get_title(), line.get_label())
            checked += 1
    kmo = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "KMO"]
    assert kmo and checked >= 6
