"""The demo's report opens in headless Chromium and shows its figures (a screenshot, not blank)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_cli import demo_report_dir  # one demo run per session, shared with test_cli.py

    return demo_report_dir(tmp_path_factory)


def _browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    return sync_api


def test_report_renders_in_chromium(demo_report: Path) -> None:
    from PIL import Image

    sync_api = _browser()
    index = demo_report / "index.html"
    shot = demo_report / "screenshot.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri(), wait_until="load")
            imgs = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({src: e.src.slice(0, 30), complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))",
            )
            title = page.title()
            headings = page.eval_on_selector_all("h2, h3", "els => els.map(e => e.textContent)")
            table_rows = page.eval_on_selector_all("table.summary tr", "els => els.length")
            page.screenshot(path=str(shot), full_page=False)
            height = page.evaluate("document.documentElement.scrollHeight")
            efam = page.locator("#fig-efam img").screenshot()  # a figure, scrolled into view and painted
        finally:
            browser.close()

    assert "captum-elfa" in title
    # every figure is embedded and decodes in the browser
    assert len(imgs) >= 8, imgs
    for im in imgs:
        assert im["src"].startswith("data:image/png;base64"), im
        assert im["complete"] and im["w"] > 0 and im["h"] > 0, im
    for h in ("Summary", "Channel insights", "Scree plot", "EFAM gallery", "PCACE ranking", "Grad-CAM vs EFAM"):
        assert any(h in t for t in headings), (h, headings)
    assert table_rows >= 10  # header + KMO, Bartlett, factors, D1, D>, Res, gamma2, R2, variance, loglike
    # self-contained: nothing but the page itself (and data: URIs) was requested
    assert all(u.startswith(("file:", "data:")) for u in requests), requests

    # the screenshot is not blank: many colours, real variance; the same for a painted figure
    for data, min_size in ((shot.read_bytes(), (800, 1000)), (efam, (300, 500))):
        a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        assert a.shape[0] >= min_size[0] and a.shape[1] >= min_size[1], a.shape
        assert a.std() > 10.0
        colours = np.unique(a.reshape(-1, 3).astype(np.uint8), axis=0).shape[0]
        assert colours > 200, colours
    assert height > 3000  # the figures are laid out below the tables
    keep = os.environ.get("CAPTUM_ELFA_SCREENSHOT_DIR")
    if keep:  # to look at them
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "report_top.png"))
        Path(keep, "report_efam.png").write_bytes(efam)


# ----------------------------------------------------------------------------------------------
# screenshots of the whole page, the demo and a ResNet-18 layer4 report: no image wider than its
# column, no two images overlapping (bounding boxes from the DOM)
# ----------------------------------------------------------------------------------------------
_LAYOUT_JS = """() => {
  const imgs = Array.from(document.querySelectorAll('img'));
  return imgs.map(img => {
    const r = img.getBoundingClientRect();
    const col = img.parentElement;
    const cs = getComputedStyle(col);
    const c = col.getBoundingClientRect();
    const left = c.left + parseFloat(cs.paddingLeft) + parseFloat(cs.borderLeftWidth);
    const right = c.right - parseFloat(cs.paddingRight) - parseFloat(cs.borderRightWidth);
    return {id: col.id, x0: r.left + window.scrollX, x1: r.right + window.scrollX,
            y0: r.top + window.scrollY, y1: r.bottom + window.scrollY,
            colLeft: left + window.scrollX, colRight: right + window.scrollX,
            natural: img.naturalWidth, complete: img.complete};
  });
}"""


def _check_page(index: Path, shot: Path, width: int = 1200) -> list:
    """Open ``index`` at ``width`` px, save a full-page screenshot to ``shot``, and check that every
    image lies inside its column and that no two images overlap; returns the boxes."""
    sync_api = _browser()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(index.as_uri(), wait_until="load")
            boxes = page.evaluate(_LAYOUT_JS)
            page_width = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert boxes, index
    assert page_width <= width, page_width  # nothing makes the page scroll sideways
    for b in boxes:
        assert b["complete"] and b["natural"] > 0, b
        assert b["x1"] - b["x0"] > 100, b  # drawn, not collapsed
        assert b["x0"] >= b["colLeft"] - 0.5 and b["x1"] <= b["colRight"] + 0.5, b  # inside its column
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            dx = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
            dy = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
            assert dx <= 0.5 or dy <= 0.5, (a["id"], b["id"])
    return boxes


def _check_screenshot(shot: Path, min_height: int) -> None:
    from PIL import Image

    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert a.shape[0] >= min_height and a.shape[1] >= 1000, a.shape
    assert a.std() > 10.0


def _keep(shot: Path, name: str) -> None:
    keep = os.environ.get("CAPTUM_ELFA_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, name))


def test_demo_report_full_page_layout(demo_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "demo_full.png"
    boxes = _check_page(demo_report / "index.html", shot)
    assert {b["id"] for b in boxes} >= {"fig-scree", "fig-efam", "fig-pcace_ranking", "fig-cam_vs_efam"}
    _check_screenshot(shot, 3000)
    _keep(shot, "report_demo_full.png")


@pytest.fixture(scope="module")
def resnet_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 (random init) layer4 report: 60 crops of 96x96 from scikit-learn's sample photos
    (3x3 maps: 540 samples for 512 channels), 4 factors, PCACE for the most predicted class."""
    import warnings

    import torch
    import torchvision
    from sklearn.datasets import load_sample_images

    from captum_elfa import LayerFactorAnalysis, NeuronPCACE
    from captum_elfa.report import write_report

    photos = [
        torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        for im in load_sample_images().images
    ]
    g = np.random.default_rng(0)
    crops = []
    for i in range(60):
        p = photos[i % 2]
        y, x = int(g.integers(0, p.shape[1] - 96)), int(g.integers(0, p.shape[2] - 96))
        crops.append(p[:, y : y + 96, x : x + 96])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    xs = (torch.stack(crops) - mean) / std
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        target = int(torch.bincount(model(xs).argmax(1)).argmax())
    out = tmp_path_factory.mktemp("resnet_report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few images for 512 channels: the cautions are expected
        lfa = LayerFactorAnalysis(model, model.layer4).fit(xs, n_factors=4, progress=False)
        pc = NeuronPCACE(model, model.layer4)
        pc.attribute(xs, target=target, progress=False, n_permutations=0)
        write_report(
            out,
            lfa,
            pc,
            images=xs[::15],
            model=model,
            gradcam_layer=model.layer4,
            target=target,
            title="ResNet-18 (random init) layer4",
        )
    return out


def test_resnet_layer4_report_full_page_layout(resnet_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "resnet_layer4_full.png"
    boxes = _check_page(resnet_report / "index.html", shot)
    names = {b["id"] for b in boxes}
    assert {"fig-loadings", "fig-channel_insights", "fig-efam", "fig-top_channel_maps"} <= names, names
    # the 512-channel figures fit the column at their natural size or are scaled down to it, never past it
    for b in boxes:
        assert b["x1"] - b["x0"] <= b["colRight"] - b["colLeft"] + 0.5
    _check_screenshot(shot, 3000)
    _keep(shot, "report_resnet_layer4_full.png")
