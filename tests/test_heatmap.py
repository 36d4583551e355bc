"""heatmap presets (VisionHeatmaps.jl) and the bridge to Captum's visualize_image_attr."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from captum_elfa._validation import CaptumElfaError
from captum_elfa.attr.analyze import Explanation, Gradient, analyze
from captum_elfa.visualization import heatmap, visualize_explanation


def _expl(val: torch.Tensor, preset: str) -> Explanation:
    n = val.shape[0]
    return Explanation(
        val=val,
        output=torch.zeros(n, 2),
        target=torch.zeros(n, dtype=torch.long),
        method="constructed",
        heatmap=preset,
    )


ROW = torch.tensor([[[[2.0, 1.0, 0.0, -1.0, -2.0]]]])  # [1, 1, 1, 5]


def test_attribution_preset_red_white_blue():
    rgb = heatmap(_expl(ROW, "attribution"))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 1, 5, 3)
    strong_pos, pos, zero, neg, strong_neg = rgb[0, 0].astype(int)
    assert zero.tolist() == [255, 255, 255]  # zero is white
    for red in (strong_pos, pos):
        assert red[0] > 120 and red[1] == 0 and red[2] == 0
    for blue in (neg, strong_neg):
        assert blue[2] > 70 and blue[0] == 0 and blue[1] == 0
    assert pos[0] > strong_pos[0]  # seismic: the extreme is the darker red
    # centred at zero: a map with only positive values has no blue pixel
    only_pos = heatmap(_expl(ROW.clamp(min=0), "attribution"))[0, 0]
    assert (only_pos[:, 2] <= only_pos[:, 0]).all()
    assert only_pos[2:].tolist() == [[255, 255, 255]] * 3


def test_attribution_preset_sums_channels():
    val = torch.stack([torch.tensor([[[1.0, -3.0]]]), torch.tensor([[[2.0, 3.0]]])], dim=1)  # [1,2,1,2]
    rgb = heatmap(_expl(val, "attribution"))[0, 0]
    assert rgb[0].tolist() == [127, 0, 0]  # 1 + 2 = 3 = max|sum|: darkest red
    assert rgb[1].tolist() == [255, 255, 255]  # -3 + 3 = 0: white


def test_sensitivity_preset_grey_norm_extrema():
    val = torch.zeros(1, 3, 1, 3)
    val[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # norm 5 (largest)
    val[0, :, 0, 1] = torch.tensor([0.0, -2.5, 0.0])  # norm 2.5 (middle)
    rgb = heatmap(_expl(val, "sensitivity"))[0, 0]
    assert (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all()  # grey
    assert rgb[:, 0].tolist() == [255, 128, 0]  # max white, middle grey, min (0) black
    # one channel: nothing to reduce (VisionHeatmaps), the signed values are rescaled
    grey = heatmap(_expl(ROW, "sensitivity"))[0, 0, :, 0]
    assert grey.tolist() == [255, 192, 128, 64, 0]


def test_cam_preset_jet_extremes():
    cam = torch.tensor([[[[0.0, 0.5, 4.0]]]])
    rgb = heatmap(_expl(cam, "cam"))[0, 0].astype(int)
    assert rgb[0].tolist() == [0, 0, 127]  # minimum: dark blue
    assert rgb[2].tolist() == [127, 0, 0]  # maximum: dark red
    assert rgb[1, 2] > rgb[1, 0]  # a low value is still bluish
    turbo = heatmap(_expl(cam, "cam"), cmap="turbo")[0, 0]
    assert turbo[0].tolist() == list(matplotlib.colormaps["turbo"](0.0, bytes=True)[:3])


def test_options_override_presets():
    val = torch.stack([ROW[0, 0], -ROW[0, 0]])[:, None]  # [2, 1, 1, 5]
    rgb = heatmap(_expl(val, "attribution"), rangescale="extrema", cmap="gray")
    assert rgb[0, 0, :, 0].tolist() == [255, 192, 128, 64, 0]
    assert rgb[1, 0, :, 0].tolist() == [0, 64, 128, 192, 255]
    two = torch.tensor([[[[1.0, 2.0]], [[-3.0, 1.0]]]])  # [1, 2, 1, 2]
    expected = {"sum": [0, 255], "maxabs": [255, 0], "sumabs": [255, 0], "abssum": [0, 255]}
    for reduce, grey in expected.items():
        out = heatmap(_expl(two, "sensitivity"), reduce=reduce)[0, 0, :, 0]
        assert out.tolist() == grey, reduce
    # process_batch: one scale for the batch, so the weaker sample is paler
    batch = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 4.0]]]])
    own = heatmap(_expl(batch, "sensitivity"))[:, 0, 1, 0]
    joint = heatmap(_expl(batch, "sensitivity"), process_batch=True)[:, 0, 1, 0]
    assert own.tolist() == [255, 255] and joint.tolist() == [64, 255]
    # a raw tensor gets the attribution preset
    assert heatmap(ROW)[0, 0, 2].tolist() == [255, 255, 255]


def test_overlay_blend_and_resize():
    cam = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    heat = heatmap(_expl(cam, "cam"))
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[..., 1] = 200
    assert np.array_equal(heatmap(_expl(cam, "cam"), overlay=image, alpha=1.0), heat)
    assert np.array_equal(heatmap(_expl(cam, "cam"), overlay=image, alpha=0.0)[0], image)
    half = heatmap(_expl(cam, "cam"), overlay=image, alpha=0.5)[0].astype(float)
    np.testing.assert_allclose(half, 0.5 * image + 0.5 * heat[0], atol=0.51)
    # a float Tensor image (channel-first, any range) is rescaled to [0, 1]; maps are resized
    img_t = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    out = heatmap(_expl(cam, "cam"), overlay=img_t, alpha=0.0)
    assert out.shape == (1, 4, 4, 3)
    assert out[0, 0, 0].tolist() == [0, 0, 0] and out[0, 3, 3].tolist() == [255, 255, 255]
    assert heatmap(_expl(cam, "cam"), overlay=img_t).shape == (1, 4, 4, 3)


def test_save_png(tmp_path):
    val = torch.randn(2, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    rgb = heatmap(_expl(val, "attribution"), save=tmp_path / "maps.png")
    for i in range(2):
        back = imread(tmp_path / f"maps_{i}.png")
        assert np.array_equal(np.rint(back[..., :3] * 255).astype(np.uint8), rgb[i])
    one = heatmap(_expl(val[:1], "cam"), save=str(tmp_path / "one"))
    assert np.array_equal(np.rint(imread(tmp_path / "one.png")[..., :3] * 255).astype(np.uint8), one[0])


def test_heatmap_of_a_real_explanation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 25, 4))
    x = torch.randn(2, 3, 5, 5)
    expl = analyze(x, Gradient(model))
    rgb = heatmap(expl)
    norm = expl.val.norm(dim=1)
    brightest = [np.unravel_index(int(norm[i].argmax()), (5, 5)) for i in range(2)]
    assert rgb.shape == (2, 5, 5, 3)
    assert all(rgb[i][brightest[i]].tolist() == [255, 255, 255] for i in range(2))


def test_bad_heatmap_arguments(tmp_path):
    e = _expl(ROW, "attribution")
    with pytest.raises(CaptumElfaError, match=r"reduce='mean'.*'norm'"):
        heatmap(e, reduce="mean")
    with pytest.raises(CaptumElfaError, match=r"rangescale='minmax'.*'centered'"):
        heatmap(e, rangescale="minmax")
    with pytest.raises(CaptumElfaError, match="not a matplotlib colormap"):
        heatmap(e, cmap="no-such-map")
    with pytest.raises(CaptumElfaError, match=r"alpha=1.5"):
        heatmap(e, overlay=np.zeros((1, 5)), alpha=1.5)
    with pytest.raises(CaptumElfaError, match=r"shape \[N, C, H, W\].*\(3, 4\)"):
        heatmap(torch.zeros(3, 4))
    with pytest.raises(CaptumElfaError, match="NaN/Inf"):
        heatmap(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(CaptumElfaError, match="overlay holds 2 images for 1"):
        heatmap(e, overlay=np.zeros((2, 1, 5, 3)))
    with pytest.raises(CaptumElfaError, match=r"overlay has shape \(5, 1, 5\).*C in \(1, 3, 4\)"):
        heatmap(e, overlay=torch.zeros(5, 1, 5))
    with pytest.raises(CaptumElfaError, match="use a .png path"):
        heatmap(e, save=tmp_path / "x.jpg")
    with pytest.raises(CaptumElfaError, match="does not exist"):
        heatmap(e, save=tmp_path / "missing" / "x.png")
    with pytest.raises(CaptumElfaError, match="heatmap='rainbow'"):
        _expl(ROW, "rainbow")
    with pytest.raises(CaptumElfaError, match="Explanation"):
        heatmap("picture")


def test_visualize_explanation_uses_captum():
    val = torch.zeros(1, 1, 4, 4)
    val[0, 0, 0, 0], val[0, 0, 3, 3] = 1.0, -1.0
    fig, ax = visualize_explanation(_expl(val, "attribution"))
    assert isinstance(fig, Figure)
    shown = ax.images[0]
    assert shown.get_cmap().name == "seismic"
    data = np.asarray(shown.get_array())
    assert data[0, 0] == 1.0 and data[3, 3] == -1.0  # sign="all": signed values kept
    fig, ax = visualize_explanation(
        _expl(val.abs(), "cam"), original_image=torch.rand(3, 4, 4), method="blended_heat_map"
    )
    assert ax.images[-1].get_cmap().name == "jet"
    with pytest.raises(CaptumElfaError, match="index=3"):
        visualize_explanation(_expl(val, "cam"), index=3)
