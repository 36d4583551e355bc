"""The ``captum-elfa`` command: ``demo``, ``report`` on a torchvision ResNet-18 and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_elfa.cli import main

FIGURES_DEMO = (
    "scree",
    "loadings",
    "channel_insights",
    "fit_summary",
    "efam",
    "cam_vs_efam",
    "pcace_ranking",
    "top_channel_maps",
    "ace_transforms",
)


# ----------------------------------------------------------------------------------------------
# fixtures: a demo report, ResNet-18 weights and a folder of images, all written by the tests
# ----------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models: torch's worker threads only contend on a busy 2-core CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_DEMO: dict = {}


def demo_report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of ``captum-elfa demo``, run once per test session (shared with the browser test)."""
    if "out" not in _DEMO:
        out = tmp_path_factory.mktemp("demo")
        assert main(["demo", "--out", str(out), "--no-progress"]) == 0
        _DEMO["out"] = out
    return _DEMO["out"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_report_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 crops of scikit-learn's two sample photos as JPEG and PNG, in nested class-less folders."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("images")
    (root / "more" / "deeper").mkdir(parents=True)
    k = 0
    for photo in load_sample_images().images:
        for j in range(6):
            crop = Image.fromarray(photo[40 * j : 40 * j + 160, 60 * j : 60 * j + 200])
            folder = root if k < 6 else (root / "more" if k < 10 else root / "more" / "deeper")
            crop.save(folder / (f"img{k:02d}.jpg" if k % 2 else f"img{k:02d}.png"))
            k += 1
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def _report_args(weights: Path, images: Path, out: Path, *extra: str) -> list:
    return [
        "report",
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(weights),
        "--layer",
        "layer3",
        "--images",
        str(images),
        "--image-size",
        "96",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _check_pngs(out: Path, names) -> None:
    from PIL import Image

    for name in names:
        path = out / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, path
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert a.shape[0] > 100 and a.shape[1] > 100
        assert a.std() > 5.0, f"{path} looks blank"


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------
def test_demo_writes_the_report(demo_out: Path, capsys: pytest.CaptureFixture) -> None:
    html = (demo_out / "index.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # self-contained: every figure embedded, nothing loaded from elsewhere
    assert html.count("data:image/png;base64,") == len(FIGURES_DEMO)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for word in ("KMO", "Bartlett", "D1", "Res", "R&sup2;", "Channel insights", "PCACE", "what it means"):
        assert word in html, word

    doc = json.loads((demo_out / "metrics.json").read_text())  # strict JSON (no NaN)
    assert {"elfa", "pcace", "channel_insights", "figures", "meta", "notes"} <= set(doc)
    elfa = doc["elfa"]
    for key in ("n_factors", "adequacy", "metrics", "loadings", "eigenvalues", "dead_channels"):
        assert key in elfa
    assert elfa["n_channels"] == 32 and 1 <= elfa["n_factors"] < 32
    assert 0 < elfa["adequacy"]["kmo"] <= 1
    assert len(elfa["loadings"]) == 32 and len(elfa["loadings"][0]) == elfa["n_factors"]
    pc = doc["pcace"]
    assert pc["target"] == 3 and pc["n_images"] == 183
    assert len(pc["scores"]) == 32 and sorted(pc["ranking"]) == list(range(32))
    assert pc["ranked_scores"] == sorted(pc["ranked_scores"], reverse=True)
    assert all(0 <= s <= 1 for s in pc["scores"])
    assert pc["scores"][pc["ranking"][0]] == pc["ranked_scores"][0]
    assert len(doc["channel_insights"]) == 32
    assert sorted(doc["figures"]) == sorted(f"{n}.png" for n in FIGURES_DEMO)
    _check_pngs(demo_out, FIGURES_DEMO)


# ----------------------------------------------------------------------------------------------
# report on a torchvision model
# ----------------------------------------------------------------------------------------------
def test_report_resnet18(resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep"
    extra = ("--n-factors", "8", "--target", "5", "--permutations", "7", "--bootstrap", "4")
    assert main(_report_args(resnet_weights, image_dir, out, *extra)) == 0
    captured = capsys.readouterr()
    assert "report written to" in captured.out
    assert "12 images" in captured.err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["elfa"]["n_channels"] == 256 and doc["elfa"]["n_factors"] == 8
    assert doc["elfa"]["activation_shape"] == [256, 6, 6]
    assert doc["elfa"]["n_samples"] == 12 * 36
    assert doc["pcace"]["target"] == 5 and doc["pcace"]["n_images"] == 12
    assert len(doc["pcace"]["scores"]) == 256
    # the null and the intervals the options asked for, and why the intervals undercover here
    assert doc["pcace"]["n_permutations"] == 7 and doc["pcace"]["n_bootstrap"] == 4
    assert len(doc["pcace"]["p_values"]) == 256 and min(doc["pcace"]["p_values"]) >= 1 / 8
    iv = np.array(doc["pcace"]["intervals"])
    assert iv.shape == (256, 2) and (iv[:, 0] <= iv[:, 1]).all()
    assert any("intervals with 12 images: below 200 images" in n for n in doc["notes"])
    _check_pngs(out, FIGURES_DEMO)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(FIGURES_DEMO)
    assert "layer3" in html


def test_report_max_images_skips_pcace(
    resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Fewer than 10 images: ELFA only, PCACE skipped with a note (no --target: top class)."""
    out = tmp_path / "rep"
    # an earlier run's report: a PCACE figure this run will not draw, and an index.html that is a
    # symlink to a file outside --out (it must be replaced, not followed)
    out.mkdir()
    (out / "pcace_ranking.png").write_bytes(b"stale figure of an earlier run")
    (out / "my_notes.png").write_bytes(b"not ours")
    outside = tmp_path / "outside.html"
    outside.write_text("do not overwrite")
    (out / "index.html").symlink_to(outside)
    args = _report_args(resnet_weights, image_dir, out, "--n-factors", "6", "--max-images", "6", "--batch-size", "4")
    args[args.index("--image-size") + 1] = "64"
    args[args.index("--layer") + 1] = "layer2"  # 128 channels; 6 images x 8x8 pixels
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "PCACE skipped" in err
    assert "PCACE and Grad-CAM use" not in err and "Grad-CAM uses class" in err  # PCACE did not run
    assert "of the 6 images" in err  # two batches of 4: the top class rests on every image
    assert outside.read_text() == "do not overwrite" and not (out / "index.html").is_symlink()
    assert (out / "my_notes.png").read_bytes() == b"not ours"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "Read with caution" in html  # 6 images: below the ELFA minimum
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["pcace"] is None and any("PCACE skipped" in n for n in doc["notes"])
    assert doc["elfa"]["n_samples"] == 6 * 64 and doc["elfa"]["n_factors"] == 6
    assert doc["elfa"]["layer"] == "layer2" and doc["elfa"]["n_channels"] == 128
    _check_pngs(out, ("scree", "loadings", "channel_insights", "fit_summary", "efam", "cam_vs_efam"))
    assert not (out / "pcace_ranking.png").exists()


def test_report_user_constructor_from_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--model path/to/file.py:callable, a 1-channel model, and --model module:callable."""
    from PIL import Image
    from sklearn.datasets import load_digits

    (tmp_path / "mynet_cli_test.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import mynet_cli_test

        torch.manual_seed(0)
        torch.save({"state_dict": mynet_cli_test.build().state_dict()}, tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
    imgs = tmp_path / "digits"
    imgs.mkdir()
    for i, d in enumerate(load_digits().images[:12]):
        Image.fromarray((d * 15).astype(np.uint8)).convert("RGB").save(imgs / f"{i}.bmp")
    out = tmp_path / "rep"
    args = [
        "report",
        "--model",
        f"{tmp_path / 'mynet_cli_test.py'}:build",
        "--weights",
        str(tmp_path / "w.pt"),
        "--layer",
        "3",
        "--images",
        str(imgs),
        "--image-size",
        "16",
        "--out",
        str(out),
        "--no-progress",
        "--n-factors",
        "0.8",
    ]
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["elfa"]["n_channels"] == 12 and doc["elfa"]["activation_shape"] == [12, 16, 16]
    assert doc["pcace"] is not None  # no --target: the class most images are predicted as
    assert any("No --target given" in n for n in doc["notes"])

    # module:callable, imported from the working directory
    from captum_elfa.cli import load_model

    monkeypatch.chdir(tmp_path)
    sys.modules.pop("mynet_cli_test", None)
    try:
        model = load_model("mynet_cli_test:build")
        assert isinstance(model, torch.nn.Sequential) and model[2].out_channels == 12
    finally:
        sys.modules.pop("mynet_cli_test", None)


# ----------------------------------------------------------------------------------------------
# errors: exit status 2, one clear message on stderr, no traceback
# ----------------------------------------------------------------------------------------------
def _fails(args: list, capsys: pytest.CaptureFixture) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("captum-elfa: error:") or "error:" in err
    return err


def test_error_wrong_layer_lists_valid_names(
    resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = _report_args(resnet_weights, image_dir, tmp_path / "o")
    args[args.index("--layer") + 1] = "layer33"
    err = _fails(args, capsys)
    assert "'layer33' is not a layer" in err
    assert "did you mean layer3" in err
    for name in ("conv1", "bn1", "layer1", "layer1.0.conv1"):
        assert name in err
    assert "in all" in err  # ResNet-18 has more than 40 named modules: the list is cut
    assert not (tmp_path / "o").exists()


def test_error_unreadable_image_names_the_file(
    resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    bad = tmp_path / "imgs"
    shutil.copytree(image_dir, bad)
    (bad / "more" / "x.jpg").write_bytes(b"this is not a jpeg \x00\x01\x02" * 10)
    err = _fails(_report_args(resnet_weights, bad, tmp_path / "o"), capsys)
    assert "cannot read image" in err and str(bad / "more" / "x.jpg") in err


def test_error_empty_image_folder(resnet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    err = _fails(_report_args(resnet_weights, empty, tmp_path / "o"), capsys)
    assert "no images found in" in err and str(empty) in err
    err = _fails(_report_args(resnet_weights, tmp_path / "missing", tmp_path / "o"), capsys)
    assert "image folder not found" in err


def test_error_missing_weights(image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.pt"
    err = _fails(_report_args(missing, image_dir, tmp_path / "o"), capsys)
    assert "weights file not found" in err and str(missing) in err


def test_error_weights_that_do_not_fit(image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torchvision

    wrong = tmp_path / "resnet18_7classes.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), wrong)
    err = _fails(_report_args(wrong, image_dir, tmp_path / "o"), capsys)
    assert "do not fit --model torchvision:resnet18" in err and "fc.weight" in err and "size mismatch" in err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    err = _fails(_report_args(garbage, image_dir, tmp_path / "o"), capsys)
    assert "cannot read weights file" in err and str(garbage) in err

    partial = tmp_path / "partial.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    err = _fails(_report_args(partial, image_dir, tmp_path / "o"), capsys)
    assert "Missing key(s)" in err


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet18", "is not valid; use torchvision:NAME"),
        ("torchvision:resnet19", "torchvision.models has no model 'resnet19'; did you mean resnet18"),
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("captum_elfa:no_such_callable", "has no attribute 'no_such_callable'"),
        ("captum_elfa:__version__", "not a callable"),
        ("/nonexistent/net.py:build", "file '/nonexistent/net.py' not found"),
    ],
)
def test_error_bad_model_spec(
    spec: str, message: str, resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = _report_args(resnet_weights, image_dir, tmp_path / "o")
    args[args.index("--model") + 1] = spec
    err = _fails(args, capsys)
    assert message in err, err


def test_error_target_and_arguments(
    resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _fails(_report_args(resnet_weights, image_dir, tmp_path / "o", "--target", "1000"), capsys)
    assert "--target 1000 is not valid: the model has 1000 outputs" in err
    err = _fails(_report_args(resnet_weights, image_dir, tmp_path / "o", "--n-factors", "many"), capsys)
    assert "--n-factors" in err and "kaiser" in err
    # too few samples for the layer's channels: says what to change
    args = _report_args(resnet_weights, image_dir, tmp_path / "o", "--max-images", "2")
    err = _fails(args, capsys)
    assert "more samples than channels" in err and "--image-size" in err
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_module_help_runs(capsys: pytest.CaptureFixture) -> None:
    r = subprocess.run([sys.executable, "-m", "captum_elfa.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "demo" in r.stdout and "report" in r.stdout
    assert main(["report", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--image-size" in out and "torchvision:NAME" in out
    # the report's PCACE defaults are the library's
    from captum_elfa.attr.neuron_pcace import DEFAULT_PERMUTATIONS
    from captum_elfa.cli._args import build_parser

    defaults = build_parser().parse_args(["report", "--model", "m", "--layer", "l", "--images", "i"])
    assert defaults.permutations == DEFAULT_PERMUTATIONS and defaults.bootstrap == 0


# ----------------------------------------------------------------------------------------------
# cheap checks first, robust inputs (issue 13)
# ----------------------------------------------------------------------------------------------
def test_cheap_checks_run_before_the_model_is_built(
    resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With an invalid --model too, the cheap errors are the ones reported: they ran first."""
    bad_model = ["--model", "torchvision:resnet19"]

    def args(weights: Path, images: Path, out: Path) -> list:
        a = _report_args(weights, images, out)
        a[a.index("--model") : a.index("--model") + 2] = bad_model
        return a

    a_file = tmp_path / "out.txt"
    a_file.write_text("a file")
    err = _fails(args(resnet_weights, image_dir, a_file), capsys)
    assert "--out" in err and "is an existing file, not a folder" in err and "resnet19" not in err
    assert a_file.read_text() == "a file"
    err = _fails(args(resnet_weights, image_dir, a_file / "sub"), capsys)
    assert "is a file, not a folder" in err
    err = _fails(args(tmp_path / "missing.pt", image_dir, tmp_path / "o"), capsys)
    assert "weights file not found" in err and "resnet19" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _fails(args(tmp_path / "missing.pt", empty, tmp_path / "o"), capsys)
    assert "no images found" in err
    assert not (tmp_path / "o").exists()


def test_control_characters_in_file_names_are_escaped(
    resnet_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "evil\x1b[2Jname\x07.jpg").write_bytes(b"not a jpeg at all" * 4)
    err = _fails(_report_args(resnet_weights, imgs, tmp_path / "o"), capsys)
    assert "cannot read image" in err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2Jname\\x07.jpg" in err


def test_16_bit_and_palette_images_are_converted_correctly(tmp_path: Path) -> None:
    from PIL import Image

    from captum_elfa.cli import ImageFolderFlat, to_mode

    a16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 8).astype(np.uint16)  # 0 .. 32760
    p16 = tmp_path / "gray16.png"
    Image.fromarray(a16).save(p16)
    with Image.open(p16) as im:
        assert im.mode.startswith("I")
        gray = np.asarray(to_mode(im, "L"), dtype=np.float64)
        rgb = np.asarray(to_mode(im, "RGB"), dtype=np.float64)
    expected = np.round(a16 / 65535.0 * 255.0)
    np.testing.assert_allclose(gray, expected, atol=1.0)  # not saturated to white
    assert gray.max() < 130 and rgb.shape == (64, 64, 3)
    np.testing.assert_allclose(rgb[..., 0], gray)
    # palette image with transparency and an 8-bit one: what convert gives
    pal = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("P")
    pal.info["transparency"] = 0
    assert to_mode(pal, "RGB").mode == "RGB"
    data = ImageFolderFlat([p16], 32, 1)
    x = data[0]
    assert x.shape == (1, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) < 0.55


def test_gallery_picks_distinct_spread_images(tmp_path: Path) -> None:
    from captum_elfa.cli import gallery_indices

    files = []
    for i in range(20):
        p = tmp_path / f"{i:02d}.png"
        p.write_bytes(b"same" if i < 8 else f"image {i}".encode())  # the first 8 are copies
        files.append(p)
    picked = gallery_indices(files, 4)
    assert len(picked) == 4
    assert len({files[i].read_bytes() for i in picked}) == 4  # distinct contents
    assert max(picked) - min(picked) >= 10  # spread over the set, not the first files
    among = [3, 9, 12, 15]
    assert set(gallery_indices(files, 4, among)) <= set(among)
    assert gallery_indices(files, 4, []) == []


# ----------------------------------------------------------------------------------------------
# layouts: token, channels-last and shared layers through the command line
# ----------------------------------------------------------------------------------------------
_LAYOUT_MODELS = """
import torch
import torchvision
from torch import nn


def vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )  # the report's block is not the last one, whose patch tokens never reach the head (0 gradient)
    nn.init.normal_(m.heads.head.weight)  # torchvision starts the head at 0: a constant class score
    return m


def convnext():
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(weights=None)
"""


@pytest.fixture(scope="module")
def layout_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout_models") / "layout_models_cli.py"
    path.write_text(_LAYOUT_MODELS)
    return path


def _layout_report(model: str, layer: str, images: Path, out: Path, size: int, *extra: str) -> list:
    return ["report", "--model", model, "--layer", layer, "--images", str(images), "--image-size", str(size)] + [
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_report_vit_token_layer(layout_models: Path, image_dir: Path, tmp_path: Path, capsys) -> None:
    spec = f"{layout_models}:vit"
    layer = "encoder.layers.encoder_layer_1"
    # without a layout the (N, L, C) output is refused, naming the options
    err = _fails(_layout_report(spec, layer, image_dir, tmp_path / "a", 32), capsys)
    assert "(12, 17, 32) is ambiguous" in err and "--channel-dim -1" in err and "--token-grid" in err
    assert not (tmp_path / "a").exists()
    out = tmp_path / "vit"
    args = _layout_report(spec, layer, image_dir, out, 32, "--channel-dim", "-1", "--drop-tokens", "1")
    assert main([*args, "--token-grid", "auto", "--target", "3"]) == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["elfa"]["n_channels"] == 32 and doc["elfa"]["activation_shape"] == [32, 4, 4]
    assert doc["pcace"] is not None and len(doc["pcace"]["scores"]) == 32
    assert {p.stem for p in out.glob("*.png")} >= {"efam", "cam_vs_efam", "pcace_ranking"}
    # the same numbers as the library with the same layout on the same images
    from captum_elfa import NeuronPCACE
    from captum_elfa.cli import load_model
    from captum_elfa.cli._images import ImageFolderFlat, find_images

    model = load_model(spec).eval()
    data = ImageFolderFlat(find_images(str(image_dir), None, False), 32, 3)
    x = torch.stack([data[i] for i in range(len(data))])
    pc = NeuronPCACE(model, model.get_submodule(layer), channel_dim=-1, drop_tokens=1, token_grid="auto")
    with pytest.warns(UserWarning):  # 12 images: below the reliable count
        scores = pc.attribute(x, target=3, progress=False)
    np.testing.assert_allclose(doc["pcace"]["scores"], scores.numpy(), atol=1e-6)
    # a grid that does not hold the patch tokens: a clear error naming the options
    err = _fails([*args, "--token-grid", "3x5"], capsys)
    assert "--token-grid (3, 5) holds 15 tokens" in err and "--drop-tokens 1" in err


def test_report_convnext_channels_last_and_call_index(
    layout_models: Path, resnet_weights: Path, image_dir: Path, tmp_path: Path, capsys
) -> None:
    spec = f"{layout_models}:convnext"
    layer = "features.1.0.block.5"  # nn.Linear(384, 96) on (N, H, W, C)
    err = _fails(_layout_report(spec, layer, image_dir, tmp_path / "a", 64), capsys)
    assert "acts on the last dimension" in err and "--channel-dim -1" in err
    out = tmp_path / "cnx"
    assert main(_layout_report(spec, layer, image_dir, out, 64, "--channel-dim", "-1")) == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["elfa"]["n_channels"] == 96 and doc["elfa"]["activation_shape"] == [96, 16, 16]
    # ResNet's BasicBlock.relu runs twice per forward pass: refused, then --call-index
    rargs = _report_args(resnet_weights, image_dir, tmp_path / "r0")
    rargs[rargs.index("layer3")] = "layer1.0.relu"
    err = _fails(rargs, capsys)
    assert "--call-index" in err and "layer1.0" in err
    rargs[rargs.index(str(tmp_path / "r0"))] = str(tmp_path / "r1")
    assert main([*rargs, "--call-index", "-1"]) == 0, capsys.readouterr().err
    assert (tmp_path / "r1" / "cam_vs_efam.png").is_file()
    rargs[rargs.index(str(tmp_path / "r1"))] = str(tmp_path / "r2")
    assert main([*rargs, "--call-index", "all"]) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert not (tmp_path / "r2" / "cam_vs_efam.png").exists()
    assert any("Grad-CAM left out" in n for n in doc["notes"])
    assert doc["elfa"]["n_images"] == 24  # two calls per image, each a sample set
    for bad, msg in (("x", "'x' is not valid"), ("0", "batch dimension")):
        err = _fails([*rargs, "--channel-dim", bad], capsys)
        assert msg in err
