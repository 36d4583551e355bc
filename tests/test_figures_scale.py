"""Every figure stays readable at real scale (issue 13): 64, 256 and 512 channels with 8, 36 and 60
factors. Each figure must fit a ~1200 px column (at 100 dpi) and none of its texts may overlap
another or leave the figure (matplotlib's text bounding boxes after a draw)."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from torch import nn

from captum_elfa import LayerFactorAnalysis, NeuronPCACE
from captum_elfa.stats.moments import Moments
from captum_elfa.visualization import (
    plot_ace_transforms,
    plot_cam_vs_efam,
    plot_channel_insights,
    plot_efam,
    plot_fit_summary,
    plot_loadings,
    plot_pcace_ranking,
    plot_scree,
    plot_top_channel_maps,
)

# the 512-channel, 60-factor fit takes 15-30 s on a busy 2-core machine (the ML fit and the
# parallel analysis of factor_count_criteria): it runs with -m slow; 512 x 20 runs always
SIZES = [
    pytest.param((64, 8), id="64ch-8f"),
    pytest.param((256, 36), id="256ch-36f"),
    pytest.param((512, 20), id="512ch-20f"),
    pytest.param((512, 60), id="512ch-60f", marks=pytest.mark.slow),
]
MAX_W_PX, MAX_H_PX = 1200, 2000  # at 100 dpi


def _fitted(c: int, k: int, seed: int = 0) -> Tuple[nn.Module, Any]:
    """A ``LayerFactorAnalysis`` fitted (``fit_moments``) on the population covariance of a
    k-factor model of c channels whose channels load on factor ``j % k``, attached to a tiny CNN
    with a c-channel layer (so that EFAM, Grad-CAM and PCACE can run on images)."""
    g = np.random.default_rng(seed)
    w = np.zeros((c, k))
    w[np.arange(c), np.arange(c) % k] = g.uniform(0.5, 0.9, c)
    w += g.normal(0.0, 0.08, (c, k))
    psi = np.clip(1.0 - (w**2).sum(1), 0.05, None)
    n = 40 * 49
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)
    ).eval()
    lfa = LayerFactorAnalysis(model, model[1])
    m = Moments(n, torch.zeros(c, dtype=torch.float64), torch.as_tensor((w @ w.T + np.diag(psi)) * n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the too-few-images caution is expected
        lfa.fit_moments(m, n_factors=k, n_images=40, activation_shape=(c, 8, 8))
    assert lfa.n_factors_ == k
    return model, lfa


@pytest.fixture(scope="module", params=SIZES)
def fitted(request: pytest.FixtureRequest) -> Dict[str, Any]:
    c, k = request.param
    model, lfa = _fitted(c, k)
    torch.manual_seed(1)
    x = torch.rand(12, 3, 8, 8)
    pc = NeuronPCACE(model, model[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few images: the chance-level cautions are expected
        pc.attribute(x, target=0, progress=False)
    return {"model": model, "lfa": lfa, "pc": pc, "x": x, "c": c, "k": k}


def _visible_texts(fig: Figure) -> List[Text]:
    """The texts a draw paints: titles, labels, legends, annotations and the tick labels of the
    ticks inside the view (matplotlib keeps Text objects for ticks it does not draw)."""
    out: List[Text] = []

    def add(t: Any) -> None:
        if isinstance(t, Text) and t.get_visible() and t.get_text().strip() and all(t is not o for o in out):
            out.append(t)

    for t in fig.texts:
        add(t)
    if fig._suptitle is not None:
        add(fig._suptitle)
    axes = list(fig.axes)
    for ax in list(axes):
        axes.extend(a for a in ax.child_axes if a not in axes)
    for ax in axes:
        if not ax.get_visible():
            continue
        for t in (ax.title, ax._left_title, ax._right_title, *ax.texts):
            add(t)
        leg = ax.get_legend()
        if leg is not None:
            for t in leg.get_texts():
                add(t)
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.get_visible():
                continue
            add(axis.label)
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for tick, loc in zip(axis.get_major_ticks(), axis.get_majorticklocs()):
                if lo - eps <= loc <= hi + eps:
                    for lab in (tick.label1, tick.label2):
                        if tick.get_visible() and lab.get_visible():
                            add(lab)
    return out


def _check_layout(fig: Figure, name: str) -> None:
    w, h = fig.get_size_inches() * 100
    assert 300 <= w <= MAX_W_PX and 150 <= h <= MAX_H_PX, f"{name}: {w:.0f} x {h:.0f} px at 100 dpi"
    fig.set_dpi(50)  # the layout does not depend on it; the draw is cheaper
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fw, fh = fig.bbox.width, fig.bbox.height
    texts = _visible_texts(fig)
    assert texts, name
    boxes = [t.get_window_extent(renderer) for t in texts]
    for t, b in zip(texts, boxes):  # inside the figure: a clipped label cannot be read
        assert b.x0 >= -2 and b.y0 >= -2 and b.x1 <= fw + 2 and b.y1 <= fh + 2, (name, t.get_text()[:60], b)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert dx <= 1.0 or dy <= 1.0, (name, texts[i].get_text()[:40], texts[j].get_text()[:40])


def test_elfa_figures_fit_and_do_not_overlap(fitted: Dict[str, Any]) -> None:
    lfa, x, model = fitted["lfa"], fitted["x"], fitted["model"]
    figs = {
        "scree": plot_scree(lfa),
        "loadings": plot_loadings(lfa),
        "channel_insights": plot_channel_insights(lfa),
        "fit_summary": plot_fit_summary(lfa),
        "efam": plot_efam(lfa, x[:4]),
        "cam_vs_efam": plot_cam_vs_efam(model, lfa, x[:4], model[0], target=0),
    }
    for name, fig in figs.items():
        _check_layout(fig, f"{name} at {fitted['c']} channels")
    # the EFAM default: the combined map and the first 4 factors, and it says so
    efam = figs["efam"]
    assert len([a for a in efam.axes if a.get_images()]) == 4 * (2 + 4)
    assert f"(4 of {fitted['k']} shown)" in efam._suptitle.get_text()
    # the factor maps are signed scores on a diverging scale centred at 0, with a colorbar
    heat = efam.axes[2].get_images()[1]
    lo, hi = heat.get_clim()
    assert lo == -hi and hi > 0
    assert any("factor score" in a.get_xlabel() for a in efam.axes)
    # no colour is repeated among the factors (tab20 repeated after F20)
    insights = figs["channel_insights"]
    colours = {
        tuple(np.round(fc[:3], 4))
        for c in insights.axes[0].collections
        if c.get_gid() in ("communality", "communality_ungrouped")
        for fc in c.get_facecolor()
    }
    assert len(colours) == fitted["k"]
    # the loadings heatmap keeps every live channel, grouped by dominant factor
    data = np.ma.getdata(figs["loadings"].axes[0].get_images()[0].get_array())
    assert data.shape == (len(lfa.live_channels_), fitted["k"])
    dom = np.abs(data).argmax(1)
    assert np.all(np.diff(dom) >= 0)


def test_pcace_figures_fit_and_do_not_overlap(fitted: Dict[str, Any]) -> None:
    pc, x, c = fitted["pc"], fitted["x"], fitted["c"]
    rank = plot_pcace_ranking(pc)
    _check_layout(rank, "pcace_ranking")
    assert f"top 20 of {c} channels ({c - 20} more not shown)" in rank.axes[0].get_title()
    _check_layout(plot_pcace_ranking(pc, top=60), "pcace_ranking top 60")
    _check_layout(plot_top_channel_maps(pc, x, k=5, n_images=4), "top_channel_maps")
    best = next(int(j) for j in pc.rank_channels().channels.tolist() if j not in set(pc.constant_channels_.tolist()))
    _check_layout(plot_ace_transforms(pc, best), "ace_transforms")


def test_pcace_ranking_draws_uncertainty_when_present(fitted: Dict[str, Any]) -> None:
    """The attributes of the PCACE null/bootstrap contract, set here on a fitted object: error
    bars, the per-channel null quantile, the FWER threshold and significance are drawn; without
    them (above) the figure is drawn as before."""
    import copy

    pc = copy.copy(fitted["pc"])
    s = pc.scores_.double()
    g = torch.Generator().manual_seed(0)
    null = torch.rand(20, s.numel(), generator=g, dtype=torch.float64) * 0.6
    pc.null_scores_ = null
    pc.null_quantiles_ = {0.5: null.quantile(0.5, 0), 0.95: null.quantile(0.95, 0)}
    pc.threshold_ = float(null.max(1).values.quantile(0.95))
    pc.significant_ = s > pc.threshold_
    pc.p_values_ = (1 + (null >= s).sum(0)) / 21.0
    # asymmetric around the score, and for some channels above it (an interval is centred on the
    # bias-corrected score, not on the bar)
    shift = torch.where(torch.arange(s.numel()) % 3 == 0, 0.15, -0.05).double()
    pc.intervals_ = torch.stack([(s + shift).clamp(0, 1), (s + shift + 0.2).clamp(0, 1)], 1)
    pc.confidence_ = 0.95
    fig = plot_pcace_ranking(pc, top=20)
    _check_layout(fig, "pcace_ranking with uncertainty")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "FWER 5% threshold" in labels and "null 95% quantile" in labels and "95% bootstrap interval" in labels
    thr = [ln for ln in ax.get_lines() if ln.get_label() == "FWER 5% threshold"][0]
    assert thr.get_ydata()[0] == pytest.approx(pc.threshold_)
    q = [ln for ln in ax.get_lines() if ln.get_label() == "null 95% quantile"][0]
    top = pc.rank_channels().channels[:20]
    np.testing.assert_allclose(q.get_ydata(), pc.null_quantiles_[0.95][top].numpy())
    # the error bars run exactly from each interval's lower to its upper end
    (bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    ends = np.array([[seg[0][1], seg[1][1]] for seg in bars.lines[2][0].get_segments()])
    np.testing.assert_allclose(np.sort(ends, 1), pc.intervals_[top].numpy(), atol=1e-12)
    n_sig = int(pc.significant_.sum())
    assert f"{n_sig} significant" in ax.get_title()
    # significant bars dark, the others light
    sig = pc.significant_[top].tolist()
    faces = [tuple(np.round(p.get_facecolor()[:3], 4)) for p in ax.patches[:20]]
    assert len({f for f, ok in zip(faces, sig) if ok}) <= 1 and len({f for f, ok in zip(faces, sig) if not ok}) <= 1
    if any(sig) and not all(sig):
        assert {f for f, ok in zip(faces, sig) if ok} != {f for f, ok in zip(faces, sig) if not ok}


def test_factor_palette_distinct_past_20() -> None:
    from captum_elfa.visualization._figure_utils import _factor_colors

    for k in (5, 10, 20, 36, 60, 200):
        cols = _factor_colors(k)
        assert len(cols) == k and len({tuple(np.round(c[:3], 4)) for c in cols}) == k, k
