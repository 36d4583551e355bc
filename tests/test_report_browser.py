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
