"""Figures of ELFA and PCACE results, rendered with Agg on models fitted on scikit-learn's digits."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread
from torch import nn

from captum_elfa import GradCAM, LayerFactorAnalysis, NeuronPCACE, analyze
from captum_elfa._validation import CaptumElfaError, NotFittedError
from captum_elfa.stats.nfactors import parallel_analysis
from captum_elfa.visualization import (
    channel_insights,
    plot_ace_transforms,
    plot_cam_vs_efam,
    plot_channel_insights,
    plot_efam,
    plot_fit_summary,
    plot_loadings,
    plot_pcace_ranking,
    plot_scree,
    plot_top_channel_maps,
    redundancy_groups,
)
from helpers import SmallCNN, assert_same_state, model_state

N_DEAD = 2


# ----------------------------------------------------------------------------------------------
# fixtures: fitted once per module
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(digits):
    x, y = digits
    return x[:500], y[:500]


@pytest.fixture(scope="module")
def model():
    return SmallCNN(n_dead=N_DEAD).eval()


@pytest.fixture(scope="module")
def lfa(model, images):
    # the standard-error scree gives 4 factors here, without Heywood cases
    return LayerFactorAnalysis(model, model.relu2).fit(images[0], n_factors="scree", progress=False)


@pytest.fixture(scope="module")
def lfa_parallel(model, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a Heywood case is irrelevant to a plot
        return LayerFactorAnalysis(model, model.relu2).fit(images[0], n_factors="parallel", progress=False)


@pytest.fixture(scope="module")
def pc(model, digits):
    x, y = digits
    p = NeuronPCACE(model, model.relu2)
    p.attribute(x[y == 3], target=3, progress=False)
    return p


def _png(fig: Figure) -> np.ndarray:
    """Render with Agg, decode, and check the picture is not empty."""
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.tell() > 1000
    buf.seek(0)
    img = imread(buf, format="png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3].reshape(-1, 3)
    assert np.unique(rgb, axis=0).shape[0] > 10, "the PNG is (almost) one colour"
    return img


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "a figure function registered a pyplot figure"


# ----------------------------------------------------------------------------------------------
# scree
# ----------------------------------------------------------------------------------------------
def _line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def test_scree_without_parallel_curve(lfa):
    assert lfa.parallel_threshold_ is None
    fig = plot_scree(lfa)
    _png(fig)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert not any("parallel" in lb for lb in labels)
    k = lfa.n_factors_
    retained = _line(ax, f"retained ({k})")
    np.testing.assert_allclose(retained.get_ydata(), lfa.eigenvalues_[:k].numpy())
    assert np.all(np.diff(_line(ax, "eigenvalue").get_ydata()) <= 0)
    # Kaiser line at 1 and the chosen count at k + 0.5
    kaiser = _line(ax, "Kaiser (eigenvalue = 1)")
    assert list(kaiser.get_ydata()) == [1.0, 1.0]
    assert any(list(ln.get_xdata()) == [k + 0.5, k + 0.5] for ln in ax.get_lines())


def test_scree_parallel_computed_on_request(lfa):
    fig = plot_scree(lfa, parallel=True)
    _png(fig)
    curve = _line(fig.axes[0], "parallel analysis (95%)")
    _, expected = parallel_analysis(lfa.eigenvalues_, lfa.n_samples_, random_state=0)
    np.testing.assert_allclose(curve.get_ydata(), expected.numpy())
    assert lfa.parallel_threshold_ is None  # the fitted object is not modified


def test_scree_uses_fitted_parallel_curve(lfa_parallel):
    fig = plot_scree(lfa_parallel)
    _png(fig)
    curve = _line(fig.axes[0], "parallel analysis (95%)")
    np.testing.assert_allclose(curve.get_ydata(), lfa_parallel.parallel_threshold_.numpy())
    labels = [ln.get_label() for ln in plot_scree(lfa_parallel, parallel=False).axes[0].get_lines()]
    assert not any("parallel" in lb for lb in labels)
    with pytest.raises(CaptumElfaError, match="parallel"):
        plot_scree(lfa_parallel, parallel="yes")


# ----------------------------------------------------------------------------------------------
# loadings and channel insights
# ----------------------------------------------------------------------------------------------
def test_loadings_heatmap_ordered_by_dominant_factor(lfa):
    fig = plot_loadings(lfa)
    _png(fig)
    assert len(fig.axes) == 2  # heatmap + colorbar
    ax = fig.axes[0]
    im = ax.get_images()[0]
    data = np.ma.getdata(im.get_array())
    w = lfa.loadings_.numpy()
    live = lfa.live_channels_.tolist()
    assert data.shape == (len(live), lfa.n_factors_)  # dead channels omitted
    rows = [int(t.get_text()) for t in ax.get_yticklabels()]
    assert sorted(rows) == live
    np.testing.assert_allclose(data, w[rows])
    dom = np.abs(w[rows]).argmax(1)
    assert np.all(np.diff(dom) >= 0), "channels not grouped by dominant factor"
    for f in set(dom.tolist()):  # within a block, by decreasing |loading|
        mags = np.abs(w[rows][dom == f, f])
        assert np.all(np.diff(mags) <= 1e-12)
    vmin, vmax = im.get_clim()
    assert vmin == -vmax and vmax == pytest.approx(np.abs(w[live]).max())


def test_loadings_dead_channels_greyed(lfa):
    assert len(lfa.dead_channels_) == N_DEAD
    fig = plot_loadings(lfa, dead="grey")
    _png(fig)
    arr = fig.axes[0].get_images()[0].get_array()
    assert arr.shape[0] == lfa.n_channels_
    masked_rows = np.where(np.ma.getmaskarray(arr).all(1))[0]
    assert masked_rows.tolist() == list(range(lfa.n_channels_ - N_DEAD, lfa.n_channels_))
    labels = [int(t.get_text()) for t in fig.axes[0].get_yticklabels()]
    assert labels[-N_DEAD:] == lfa.dead_channels_.tolist()
    with pytest.raises(CaptumElfaError, match="dead"):
        plot_loadings(lfa, dead="hide")


def test_channel_insights_consistent_with_loadings(lfa):
    threshold = 0.4
    rows = channel_insights(lfa, threshold)
    w = lfa.loadings_.numpy()
    dead = set(lfa.dead_channels_.tolist())
    assert [r["channel"] for r in rows] == list(range(lfa.n_channels_))
    expected_groups = {f: [] for f in range(lfa.n_factors_)}
    for r in rows:
        j = r["channel"]
        assert r["dead"] == (j in dead)
        if r["dead"]:
            assert r["dominant_factor"] is None and r["group"] is None and r["redundant_with"] == []
            continue
        f = int(np.abs(w[j]).argmax())
        assert r["dominant_factor"] == f
        assert r["loading"] == pytest.approx(w[j, f])
        assert r["communality"] == pytest.approx(float((w[j] ** 2).sum()), rel=1e-6)
        assert r["uniqueness"] == pytest.approx(float(lfa.uniquenesses_[j]))
        if abs(w[j, f]) >= threshold:
            expected_groups[f].append(j)
            assert r["group"] == f
        else:
            assert r["group"] is None and r["redundant_with"] == []
    assert redundancy_groups(lfa, threshold) == expected_groups
    assert any(len(g) >= 2 for g in expected_groups.values()), "the test model should have redundant channels"
    for r in rows:
        if r["group"] is not None:
            assert sorted(r["redundant_with"] + [r["channel"]]) == expected_groups[r["group"]]
            for other in r["redundant_with"]:  # redundancy is symmetric
                assert r["channel"] in rows[other]["redundant_with"]
    # threshold 0 puts every live channel in a group; an impossible one puts none
    assert sum(len(g) for g in redundancy_groups(lfa, 0.0).values()) == len(lfa.live_channels_)
    assert all(r["group"] is None for r in channel_insights(lfa, 10.0))
    for bad in (-0.1, "0.4", True, float("nan")):
        with pytest.raises(CaptumElfaError, match="threshold"):
            channel_insights(lfa, bad)


def test_plot_channel_insights(lfa):
    fig = plot_channel_insights(lfa, threshold=0.4)
    _png(fig)
    assert len(fig.axes) == 2
    from captum_elfa.visualization._figure_utils import _bar_heights

    colls = {c.get_gid(): c for c in fig.axes[0].collections}
    n_live = len(lfa.live_channels_)
    # the communalities (grouped channels, then hatched ungrouped ones) and the uniquenesses
    h2 = np.concatenate([_bar_heights(colls[g]) for g in ("communality", "communality_ungrouped") if g in colls])
    assert h2.size == n_live and _bar_heights(colls["uniqueness"]).size == n_live
    heights = sorted(round(float(b), 9) for b in h2)
    expected = sorted(round(float(lfa.metrics_.communalities[j]), 9) for j in lfa.live_channels_.tolist())
    assert heights == expected
    psi = sorted(round(float(b), 9) for b in _bar_heights(colls["uniqueness"]))
    assert psi == sorted(round(float(lfa.uniquenesses_[j]), 9) for j in lfa.live_channels_.tolist())
    text = fig.axes[1].texts[0].get_text()
    groups = redundancy_groups(lfa, 0.4)
    for f, chans in groups.items():  # every non-empty group listed with its size; empty ones counted
        if chans:
            assert f"F{f + 1} ({len(chans)}): " + ", ".join(map(str, chans)) in text
    n_empty = sum(1 for c in groups.values() if not c)
    assert (f"{n_empty} factor(s) with no such channel" in text) == (n_empty > 0)


# ----------------------------------------------------------------------------------------------
# fit summary
# ----------------------------------------------------------------------------------------------
def test_plot_fit_summary(lfa):
    fig = plot_fit_summary(lfa)
    _png(fig)
    assert len(fig.axes) == 4
    a_kmo, a_g2, a_var, a_txt = fig.axes
    live = lfa.live_channels_
    from captum_elfa.visualization._figure_utils import _bar_heights

    kmo_bars = [c for c in a_kmo.collections if c.get_gid() == "kmo"][0]
    np.testing.assert_allclose(_bar_heights(kmo_bars), lfa.adequacy_.kmo_per_channel[live].numpy())
    p20 = [ln for ln in a_g2.get_lines() if "20th percentile" in ln.get_label()][0]
    assert p20.get_xdata()[0] == pytest.approx(lfa.metrics_.gamma2_p20)
    assert sum(p.get_height() for p in a_g2.patches) == len(live)  # every live channel counted
    m = lfa.metrics_
    np.testing.assert_allclose([p.get_height() for p in a_var.patches], np.asarray(m.proportional_variance))
    np.testing.assert_allclose(_line(a_var, "cumulative").get_ydata(), np.asarray(m.cumulative_variance))
    text = a_txt.texts[0].get_text()
    for value in (f"{m.d1:.3f}", f"{m.d_greater:.3f}", f"{m.res:.4f}", f"{m.r2:.4f}", f"{lfa.adequacy_.kmo:.3f}"):
        assert value in text


# ----------------------------------------------------------------------------------------------
# EFAM and Grad-CAM
# ----------------------------------------------------------------------------------------------
def test_plot_efam_gallery(lfa, images):
    x = images[0][:3]
    k = lfa.n_factors_
    assert k <= 4  # the default draws the first 4 factors
    fig = plot_efam(lfa, x)
    _png(fig)
    assert len(fig.axes) == 3 * (k + 2) + 2  # the image panels, then two colorbars
    # panel (i, 1) overlays the upsampled EFAM of image i; (i, 2 + f) the map of factor f
    from captum.attr import LayerAttribution

    efam = LayerAttribution.interpolate(lfa.attribute(x), x.shape[2:], "bilinear")
    # the factor maps are the raw (signed) factor scores, on limits symmetric about 0
    per = LayerAttribution.interpolate(lfa.attribute(x, factors="all", normalize=None), x.shape[2:], "bilinear")
    cols = k + 2
    for i in range(3):
        base = fig.axes[i * cols].get_images()
        assert len(base) == 1
        np.testing.assert_allclose(
            base[0].get_array(), (x[i, 0] - x[i, 0].min()) / (x[i, 0].max() - x[i, 0].min()), atol=1e-6
        )
        heat = fig.axes[i * cols + 1].get_images()[1]
        np.testing.assert_allclose(heat.get_array(), efam[i, 0].numpy(), atol=1e-6)
        assert heat.get_alpha() == 0.5
        for f in range(k):
            im = fig.axes[i * cols + 2 + f].get_images()[1]
            np.testing.assert_allclose(im.get_array(), per[i, f].numpy(), atol=1e-5)
            lo, hi = im.get_clim()
            assert lo == -hi and hi > 0
    assert f"({k} of {k} shown)" in fig._suptitle.get_text()


def test_plot_efam_factor_choices(lfa, images):
    x = images[0][:3]
    fig = plot_efam(lfa, x, factors=None, alpha=0.3)
    _png(fig)
    assert len(fig.axes) == 3 * 2 + 1  # one colorbar: the EFAM's
    assert fig.axes[1].get_images()[1].get_alpha() == 0.3

    def panels(f):
        return len([a for a in f.axes if a.get_images()])

    assert panels(plot_efam(lfa, x[:2], factors=[0, 2])) == 2 * 4
    assert panels(plot_efam(lfa, x[:1], factors=1)) == 1 * 3
    assert panels(plot_efam(lfa, x[:1], factors="all")) == 1 * (2 + lfa.n_factors_)
    assert panels(plot_efam(lfa, x[:1], max_factors=2)) == 1 * (2 + min(2, lfa.n_factors_))
    with pytest.raises(CaptumElfaError, match="max_factors"):
        plot_efam(lfa, x, max_factors=0)
    with pytest.raises(CaptumElfaError, match="factor index"):
        plot_efam(lfa, x, factors=[lfa.n_factors_])
    with pytest.raises(CaptumElfaError, match="alpha"):
        plot_efam(lfa, x, alpha=1.5)
    with pytest.raises(CaptumElfaError, match="1 \\(grayscale\\) or 3 \\(RGB\\)"):
        plot_efam(lfa, x.repeat(1, 2, 1, 1))
    with pytest.raises(CaptumElfaError, match="N, C, H, W"):
        plot_efam(lfa, x[0])


def test_plot_efam_rgb_images(digits):
    x, _ = digits
    rgb = torch.cat([x[:300], 1 - x[:300], x[:300].flip(-1)], 1)  # [N, 3, 8, 8]
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rgb_lfa = LayerFactorAnalysis(net, net[1]).fit(rgb, n_factors=2, progress=False)
    fig = plot_efam(rgb_lfa, rgb[:2])
    _png(fig)
    assert len(fig.axes) == 2 * (2 + 2) + 2
    base = fig.axes[0].get_images()[0].get_array()
    assert base.shape == (8, 8, 3) and base.min() == 0.0 and base.max() == 1.0


def test_plot_cam_vs_efam(model, lfa, images):
    x = images[0][:4]
    fig = plot_cam_vs_efam(model, lfa, x, model.conv2, target=3)
    _png(fig)
    assert len(fig.axes) == 4 * 3
    cam = analyze(x, GradCAM(model, model.conv2), 3).val
    from captum.attr import LayerAttribution

    efam = LayerAttribution.interpolate(lfa.attribute(x), x.shape[2:], "bilinear")
    for i in range(4):
        c = cam[i, 0].double().numpy()
        expected = (c - c.min()) / (c.max() - c.min()) if c.max() > c.min() else np.zeros_like(c)
        np.testing.assert_allclose(fig.axes[3 * i + 1].get_images()[1].get_array(), expected, atol=1e-6)
        np.testing.assert_allclose(fig.axes[3 * i + 2].get_images()[1].get_array(), efam[i, 0].numpy(), atol=1e-6)
        assert "class 3" in fig.axes[3 * i].get_ylabel()
    assert len(plot_cam_vs_efam(model, lfa, x[:2], model.conv2).axes) == 2 * 3


# ----------------------------------------------------------------------------------------------
# PCACE
# ----------------------------------------------------------------------------------------------
def test_plot_pcace_ranking(pc):
    fig = plot_pcace_ranking(pc, top=10)
    _png(fig)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 10
    channels, scores = pc.rank_channels()
    np.testing.assert_allclose(heights, scores[:10].numpy())
    assert all(a >= b for a, b in zip(heights, heights[1:]))
    assert heights[0] == pytest.approx(float(pc.scores_.max()))
    assert [int(t.get_text()) for t in ax.get_xticklabels()] == channels[:10].tolist()
    c = pc.scores_.numel()
    assert len(plot_pcace_ranking(pc, top=None).axes[0].patches) == c
    assert len(plot_pcace_ranking(pc, top=1000).axes[0].patches) == c
    with pytest.raises(CaptumElfaError, match="top"):
        plot_pcace_ranking(pc, top=0)


def test_plot_top_channel_maps(pc, model, digits):
    x, y = digits
    x3 = x[y == 3]
    before = model_state(model)
    fig = plot_top_channel_maps(pc, x3, k=5, n_images=4)
    assert_same_state(before, model_state(model))  # hook removed, flags restored
    _png(fig)
    assert len(fig.axes) == 4 * (5 + 1)
    acts = []
    h = model.relu2.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            model(x3[:4])
    finally:
        h.remove()
    top = pc.rank_channels().channels[:5].tolist()
    for i in range(4):
        for col, ch in enumerate(top):
            np.testing.assert_allclose(
                fig.axes[i * 6 + col + 1].get_images()[0].get_array(), acts[0][i, ch].double().numpy(), atol=1e-6
            )
    assert f"ch {top[0]}" in fig.axes[1].get_title()
    assert len(plot_top_channel_maps(pc, x3[:2], k=3, n_images=4).axes) == 2 * 4  # fewer images
    with pytest.raises(CaptumElfaError, match="k=50"):
        plot_top_channel_maps(pc, x3, k=50)


def test_plot_ace_transforms(pc, model, digits):
    ch = int(pc.rank_channels().channels[0])
    fig = plot_ace_transforms(pc, ch)
    _png(fig)
    assert len(fig.axes) == 1 + 2
    t = pc.ace_transforms(ch)
    pts = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(pts.get_xdata(), t.component[0].numpy())
    np.testing.assert_allclose(pts.get_ydata(), t.phi[0].numpy())
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), t.theta.numpy())
    s, theta = fig.axes[2].get_lines()[0].get_xdata(), fig.axes[2].get_lines()[0].get_ydata()
    assert abs(np.corrcoef(s, theta)[0, 1]) == pytest.approx(t.score, abs=1e-6)
    assert f"{t.score:.3f}" in fig.axes[2].get_title()
    const = int(pc.constant_channels_[0])
    with pytest.raises(CaptumElfaError, match="constant"):
        plot_ace_transforms(pc, const)
    # two principal components: one phi panel each
    x, y = digits
    pc2 = NeuronPCACE(model, model.relu2)
    pc2.attribute(x[y == 3], target=3, n_components=2, progress=False)
    fig2 = plot_ace_transforms(pc2, int(pc2.rank_channels().channels[0]))
    _png(fig2)
    assert len(fig2.axes) == 2 + 2


# ----------------------------------------------------------------------------------------------
# unfitted objects
# ----------------------------------------------------------------------------------------------
def test_unfitted_objects_raise(model, images):
    x = images[0][:2]
    raw_lfa = LayerFactorAnalysis(model, model.relu2)
    for call in (
        lambda: plot_scree(raw_lfa),
        lambda: plot_loadings(raw_lfa),
        lambda: channel_insights(raw_lfa),
        lambda: plot_channel_insights(raw_lfa),
        lambda: plot_fit_summary(raw_lfa),
        lambda: plot_efam(raw_lfa, x),
        lambda: plot_cam_vs_efam(model, raw_lfa, x, model.conv2),
    ):
        with pytest.raises(NotFittedError, match="fit"):
            call()
    raw_pc = NeuronPCACE(model, model.relu2)
    for call in (
        lambda: plot_pcace_ranking(raw_pc),
        lambda: plot_top_channel_maps(raw_pc, x),
        lambda: plot_ace_transforms(raw_pc, 0),
    ):
        with pytest.raises(NotFittedError, match="attribute"):
            call()


# ----------------------------------------------------------------------------------------------
# figures take data: with the maps computed beforehand, drawing runs no model
# ----------------------------------------------------------------------------------------------
def test_figures_draw_precomputed_data_without_running_the_model(model, lfa, pc, images, digits):
    from captum_elfa.attr.figure_data import cam_and_efam_maps, efam_maps, top_channel_activations

    x = images[0][:3]
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        em = efam_maps(lfa, x, factors=[0, 1])
        cm = cam_and_efam_maps(model, lfa, x, model.conv2, target=3, efam=em.efam)
        xs = digits[0][digits[1] == 3][:3]
        tm = top_channel_activations(pc, xs, k=4, n_images=3)
        assert calls  # the data functions ran the model
        calls.clear()
        f_efam = plot_efam(lfa, x, maps=em)
        f_cam = plot_cam_vs_efam(model, lfa, x, model.conv2, maps=cm)
        f_top = plot_top_channel_maps(pc, xs, k=4, n_images=3, maps=tm)
        for fig in (f_efam, f_cam, f_top):
            _png(fig)
        assert not calls  # drawing did not
    finally:
        hook.remove()
    # the same pictures as the figures that compute their data themselves
    np.testing.assert_allclose(f_efam.axes[1].get_images()[1].get_array(), em.efam[0, 0])
    direct = plot_efam(lfa, x, factors=[0, 1])
    np.testing.assert_allclose(direct.axes[2].get_images()[1].get_array(), f_efam.axes[2].get_images()[1].get_array())
    direct_top = plot_top_channel_maps(pc, xs, k=4, n_images=3)
    np.testing.assert_allclose(direct_top.axes[1].get_images()[0].get_array(), tm.maps[0, 0])
    np.testing.assert_allclose(f_top.axes[1].get_images()[0].get_array(), tm.maps[0, 0])
    assert tm.channels == pc.rank_channels().channels[:4].tolist()
    with pytest.raises(CaptumElfaError, match="EfamMaps"):
        plot_efam(lfa, x, maps=cm)
    with pytest.raises(CaptumElfaError, match="maps hold 3 images"):
        plot_efam(lfa, x[:2], maps=em)


def test_insights_live_in_stats_and_are_re_exported():
    from captum_elfa.stats import insights
    from captum_elfa.visualization import figures

    assert channel_insights is insights.channel_insights is figures.channel_insights
    assert redundancy_groups is insights.redundancy_groups is figures.redundancy_groups


def test_visualization_runs_no_model():
    """No module of captum_elfa.visualization captures a layer or calls a model itself: no call of
    ``.attribute``, ``analyze``, ``LayerCapture``, ``register_forward_hook`` or ``forward_func``."""
    import ast
    import pathlib

    import captum_elfa.visualization as vis

    banned = {"attribute", "analyze", "LayerCapture", "register_forward_hook", "forward_func", "ace_transforms_of"}
    for path in pathlib.Path(vis.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                assert name not in banned, (path.name, name, node.lineno)
