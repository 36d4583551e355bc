"""``write_report`` never loses or overwrites what it should not (issue 13): JSON-safe metadata,
staged writes moved into place, symlinks replaced not followed, stale figures removed, duplicate
images drawn once; and the page says what the numbers cannot (cautions, PCACE null, versions)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from captum_elfa import LayerFactorAnalysis, NeuronPCACE, __version__
from captum_elfa._validation import CaptumElfaError
from captum_elfa.report import write_report
from helpers import SmallCNN

DPI = 40  # the layout is what is tested, not the resolution: cheap PNGs


@pytest.fixture(scope="module")
def fitted(digits):
    x, y = digits
    model = SmallCNN(n_dead=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lfa = LayerFactorAnalysis(model, model.relu2).fit(x[:400], n_factors=3, progress=False)
        few = LayerFactorAnalysis(model, model.relu2).fit(x[:6], n_factors=2, progress=False)  # 6 images
        pc = NeuronPCACE(model, model.relu2)
        pc.attribute(x[y == 3][:60], target=3, n_permutations=10, progress=False)
        pc0 = NeuronPCACE(model, model.relu2)
        pc0.attribute(x[y == 3][:60], target=3, n_permutations=0, progress=False)
    return {"model": model, "lfa": lfa, "few": few, "pc": pc, "pc0": pc0, "x": x, "y": y}


def _page(out: Path) -> str:
    return (out / "index.html").read_text(encoding="utf-8")


def test_callable_target_and_path_meta_are_json_safe(fitted, tmp_path: Path) -> None:
    def seg_target(out):  # the README's DeepLab recipe passes a callable target
        return out.sum()

    out = tmp_path / "rep"
    meta = {"weights": tmp_path / "w.pt", "fn": seg_target, "shape": torch.tensor([1, 2]), "tags": {"b", "a"}}
    index = write_report(out, fitted["lfa"], fitted["pc"], pcace_target=seg_target, meta=meta, dpi=DPI)
    assert index == out / "index.html" and index.is_file()
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["meta"]["weights"] == str(tmp_path / "w.pt")
    assert doc["meta"]["fn"].endswith("seg_target") and doc["pcace"]["target"].endswith("seg_target")
    assert doc["meta"]["shape"] == [1, 2] and doc["meta"]["tags"] == ["a", "b"]
    assert doc["versions"]["captum_elfa"] == __version__ and doc["versions"]["torch"] == torch.__version__
    page = _page(out)
    assert "seg_target" in page and "<function" not in page
    assert __version__ in page and doc["created"] in page


def test_symlinks_in_out_are_replaced_not_followed(fitted, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    other = tmp_path / "precious.png"
    other.write_bytes(b"not a figure")
    (out / "index.html").symlink_to(outside)
    (out / "scree.png").symlink_to(other)
    (out / "metrics.json").symlink_to(tmp_path / "dangling.json")
    write_report(out, fitted["lfa"], dpi=DPI)
    assert outside.read_text() == "keep me" and other.read_bytes() == b"not a figure"
    assert not (tmp_path / "dangling.json").exists()
    for name in ("index.html", "scree.png", "metrics.json"):
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert _page(out).startswith("<!DOCTYPE html>")


def test_stale_figures_removed_and_failures_leave_the_old_report(fitted, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "rep"
    x = fitted["x"]
    write_report(
        out,
        fitted["lfa"],
        fitted["pc"],
        images=x[:2],
        model=fitted["model"],
        gradcam_layer=fitted["model"].conv2,
        dpi=DPI,
    )
    for name in ("efam", "cam_vs_efam", "pcace_ranking", "top_channel_maps"):
        assert (out / f"{name}.png").is_file()
    (out / "mine.png").write_bytes(b"a file this package did not write")
    write_report(out, fitted["lfa"], dpi=DPI)  # ELFA only: the PCACE and image figures of the first run go
    for name in ("efam", "cam_vs_efam", "pcace_ranking", "top_channel_maps", "ace_transforms"):
        assert not (out / f"{name}.png").exists(), name
    assert (out / "scree.png").is_file() and (out / "mine.png").read_bytes().startswith(b"a file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    from captum_elfa.stats import insights

    def broken(*a, **k):
        raise RuntimeError("simulated failure after the figures")

    monkeypatch.setattr(insights, "channel_insights", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        write_report(out, fitted["lfa"], fitted["pc"], dpi=DPI)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # nothing half-written, no staging folder left behind


def test_out_dir_that_is_a_file(fitted, tmp_path: Path) -> None:
    f = tmp_path / "report.txt"
    f.write_text("x")
    with pytest.raises(CaptumElfaError, match="not a folder"):
        write_report(f, fitted["lfa"], dpi=DPI)
    with pytest.raises(CaptumElfaError, match="is a file"):
        write_report(f / "sub", fitted["lfa"], dpi=DPI)
    assert f.read_text() == "x"


def test_duplicate_images_drawn_once_and_pcace_images(fitted, tmp_path: Path) -> None:
    x, y = fitted["x"], fitted["y"]
    dup = torch.cat([x[:1]] * 3 + [x[1:2]])  # three copies of one image
    out = tmp_path / "rep"
    write_report(out, fitted["lfa"], fitted["pc"], images=dup, pcace_images=x[y == 3][:3], pcace_target=3, dpi=DPI)
    doc = json.loads((out / "metrics.json").read_text())
    assert any("2 duplicate image(s)" in n for n in doc["notes"])
    from PIL import Image

    with Image.open(out / "efam.png") as im:  # two rows of panels, not four
        h_two = im.size[1]
    write_report(tmp_path / "rep4", fitted["lfa"], images=x[:4], dpi=DPI)
    with Image.open(tmp_path / "rep4" / "efam.png") as im:
        assert im.size[1] > 1.5 * h_two
    page = _page(out)
    assert "images of the ranked class 3" in page


def test_page_shows_cautions_pcace_null_toc_and_alt_text(fitted, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    write_report(out, fitted["few"], fitted["pc"], images=fitted["x"][:2], pcace_target=3, dpi=DPI)
    page = _page(out)
    few = fitted["few"]
    assert few.n_images_ < few.min_images_
    assert "Read with caution" in page and f"{few.n_images_}" in page
    assert "PCACE on 60 images: below 100 images" in page
    pc = fitted["pc"]
    assert "<th>p-value</th>" in page and "<th>significant</th>" in page
    assert f"threshold {pc.threshold_:.3f}" in page
    assert "id='toc'" in page and "href='#summary'" in page and "href='#fig-efam'" in page
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs and all(re.search(r"alt='[^']{20,}'", im) for im in imgs)
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["pcace"]["p_values"]) == pc.scores_.numel() and doc["pcace"]["threshold"] == pytest.approx(
        pc.threshold_
    )
    # without a permutation null the page says the scores are descriptive only
    out0 = tmp_path / "rep0"
    write_report(out0, fitted["lfa"], fitted["pc0"], pcace_target=3, dpi=DPI)
    page0 = _page(out0)
    assert "descriptive only" in page0 and "<th>p-value</th>" not in page0
    assert json.loads((out0 / "metrics.json").read_text())["pcace"]["p_values"] is None
