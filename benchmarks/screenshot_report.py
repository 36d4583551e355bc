"""Write ``docs/_static/report_demo.png``: a screenshot of the digits demo report, for the README.

Runs ``captum-elfa demo`` into a temporary folder, opens its ``index.html`` in headless Chromium
(``/usr/bin/chromium`` through Playwright), takes the top of the page at 1200 px wide (title,
cautions, contents, the tables and the first figures), scales it to ``--width`` px and
stores it as a 256-colour PNG (well under 300 KB).

Usage::

    python benchmarks/screenshot_report.py                     # docs/_static/report_demo.png
    python benchmarks/screenshot_report.py --out shot.png --height 2400
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]


def screenshot(index: Path, height: int) -> bytes:
    """The top ``height`` px of the page at 1200 px wide, as PNG bytes."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": height})
            page.goto(index.as_uri(), wait_until="load")
            return page.screenshot(full_page=False)
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "_static" / "report_demo.png"))
    ap.add_argument("--height", type=int, default=3000, help="page height taken, in px (default: %(default)s)")
    ap.add_argument("--width", type=int, default=700, help="width of the stored image (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=15, help="demo training epochs (default: %(default)s)")
    args = ap.parse_args()
    from PIL import Image

    from captum_elfa.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        here = os.getcwd()
        os.chdir(tmp)  # the page shows the command line: "captum-elfa demo --out demo ...", no temp path
        try:
            status = cli(["demo", "--out", "demo", "--no-progress", "--epochs", str(args.epochs)])
        finally:
            os.chdir(here)
        if status != 0:
            raise SystemExit(f"captum-elfa demo failed with status {status}")
        shot = Image.open(io.BytesIO(screenshot(Path(tmp) / "demo" / "index.html", args.height))).convert("RGB")
    h = round(shot.height * args.width / shot.width)
    small = shot.resize((args.width, h), Image.Resampling.LANCZOS)
    small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    small.save(dest, format="PNG", optimize=True)
    print(f"{dest}: {args.width} x {h} px, {dest.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
