"""Captum Insights' real server and frontend serving ELFA's EFAM, driven in headless Chromium.

Starts ``AttributionVisualizer.serve(blocking=False)`` on 127.0.0.1, opens the page, selects our
EFAM in the method menu, presses Fetch and checks that attribution images appear and are not
blank. Skips where Chromium, Playwright or Captum Insights (captum < 0.9, flask) are missing.
Set ``CAPTUM_ELFA_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from helpers import SmallCNN

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def insights_server(monkeypatch, digits):
    """A visualizer with our methods registered, served by Insights' own Flask server; shut down
    (and Insights' module state reset) afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("captum.insights")
    import werkzeug.serving
    from captum.insights.attr_vis import server

    from captum_elfa import LayerFactorAnalysis
    from captum_elfa import insights as ins

    # a 3-channel model: a small CNN trained briefly on digits, behind GrayscaleToRGB (which
    # Insights needs: it draws 3-channel images only)
    x, y = digits
    torch.manual_seed(0)
    net = SmallCNN(c1=8, c2=16)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # PyTorch's default init trains faster than the helper's
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(60):  # about a second on 2 CPU cores
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    model = ins.GrayscaleToRGB(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a Heywood case on a briefly trained net
        lfa = LayerFactorAnalysis(net, net.conv2).fit(x[:300], n_factors=3, progress=False)
    ins.register(lfa, model=model)

    images = x[:4].repeat(1, 3, 1, 1)
    vis = ins.AttributionVisualizer(
        models=[model],
        classes=[str(i) for i in range(10)],
        features=[ins.ImageFeature("Digit", baseline_transforms=None, input_transforms=None)],
        dataset=[ins.Batch(images, labels=y[:4])],
    )

    # Insights' server runs werkzeug's serve_forever in a thread and keeps no handle on it:
    # record the server werkzeug makes so the test can shut it down.
    made = []
    real_make_server = werkzeug.serving.make_server

    def recording_make_server(*args, **kwargs):
        srv = real_make_server(*args, **kwargs)
        made.append(srv)
        return srv

    monkeypatch.setattr(werkzeug.serving, "make_server", recording_make_server)
    monkeypatch.setattr(server, "port", None)  # a fresh server even if one ran in this process
    werkzeug_log = logging.getLogger("werkzeug")
    log_disabled, app_log_disabled = werkzeug_log.disabled, server.app.logger.disabled
    port = _free_port()
    before = set(threading.enumerate())
    try:
        got = vis.serve(blocking=False, port=port, bind_all=False)
        assert got == port
        deadline = time.monotonic() + 20
        while True:  # wait for the server to accept connections
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Insights' server did not start within 20 s") from None
                time.sleep(0.05)
        yield vis, port, lfa, ins
    finally:
        for srv in made:
            stopper = threading.Thread(target=srv.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=10)
            srv.server_close()
        for t in set(threading.enumerate()) - before:
            t.join(timeout=10)
            assert not t.is_alive(), "Insights' server thread did not stop"
        werkzeug_log.disabled, server.app.logger.disabled = log_disabled, app_log_disabled
        ins.unregister()


def _png_pixels(data_uri: str) -> np.ndarray:
    from PIL import Image

    assert data_uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(data_uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float32)


@pytest.mark.filterwarnings("ignore:It looks like that the attribution")
def test_efam_in_insights_page(insights_server, tmp_path):
    from playwright.sync_api import sync_playwright

    vis, port, lfa, ins = insights_server
    url = f"http://127.0.0.1:{port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="load")
            method = page.locator('select[name="selected_method"]')
            method.wait_for(state="visible")
            options = method.locator("option").all_inner_texts()
            for name in (ins.EFAM_NAME, ins.GRADCAM_NAME, ins.SMOOTHGRAD_NAME, "Integrated Gradients"):
                assert name in options
            method.select_option(label=ins.EFAM_NAME)
            # our arguments are editable: the factor menu lists the combined EFAM and each factor
            factor = page.locator('select[name="factor"]')
            factor.wait_for(state="visible")
            assert factor.locator("option").all_inner_texts() == ["combined"] + [
                str(i) for i in range(lfa.loadings_.shape[1])
            ]
            with page.expect_request(lambda r: r.url.endswith("/fetch")) as request:
                page.get_by_role("button", name="Fetch").click()
            body = json.loads(request.value.post_data)
            assert body["attribution_method"] == ins.EFAM_NAME
            assert body["arguments"]["factor"] == "combined"
            page.wait_for_function(
                """() => {
                    const imgs = [...document.querySelectorAll('img[alt="attribution"]')];
                    return imgs.length >= 4 && imgs.every(i => i.complete && i.naturalWidth > 0);
                }"""
            )
            shot = tmp_path / "insights_efam.png"
            page.screenshot(path=str(shot), full_page=True)
            imgs = page.locator('img[alt="attribution"]')
            widths = imgs.evaluate_all("els => els.map(e => e.naturalWidth)")
            assert len(widths) >= 4 and all(w > 0 for w in widths)
            for src in imgs.evaluate_all("els => els.map(e => e.src)"):
                pixels = _png_pixels(src)
                assert pixels.std() > 5.0, "an attribution image is blank"
            originals = page.locator('img[alt="original"]').evaluate_all("els => els.map(e => e.src)")
            assert len(originals) >= 4
            assert _png_pixels(originals[0]).std() > 5.0
        finally:
            browser.close()
    assert vis._config.attribution_method == ins.EFAM_NAME
    keep = os.environ.get("CAPTUM_ELFA_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, shot.name))
    assert shot.stat().st_size > 10_000
