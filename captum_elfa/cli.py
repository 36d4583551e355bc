"""The ``captum-elfa`` command: an ELFA + PCACE report of a layer, as a web page.

    captum-elfa demo [--out DIR] [--no-progress]
    captum-elfa report --model torchvision:resnet18 --weights FILE --layer layer3 --images DIR
                       [--target CLASS] [--n-factors kaiser] [--out DIR] [--image-size 224]
                       [--batch-size 16] [--max-images N] [--no-progress]

``demo`` trains a small CNN on scikit-learn's digits (seeded, a few seconds, no network), fits
ELFA on its second convolutional layer and ranks that layer's channels for class 3 with PCACE.
``report`` does the same for your model and a folder of images. Both write ``index.html`` (one
self-contained page), ``metrics.json`` and the figures as PNG files into ``--out``.

Errors in the arguments (a wrong layer name, an unreadable image, a missing weights file, ...)
print one message on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, List, Optional, Sequence, cast

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_PCACE_IMAGES = 10


class CliError(Exception):
    """An error in the command's arguments or inputs: reported on stderr, exit status 2."""


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def _n_factors(text: str) -> Any:
    t = text.strip().lower()
    if t in ("kaiser", "scree", "parallel"):
        return t
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; use an int, a float in (0, 1), 'kaiser', 'scree' or 'parallel'"
        ) from None
    if not 0 < f < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; a float must be in (0, 1) (a fraction of variance)")
    return f


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive int") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive int")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a class index (a non-negative int)") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a class index (a non-negative int)")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="captum-elfa",
        description="Explain what a layer of a CNN has learned: an ELFA factor analysis and a PCACE "
        "channel ranking, written as a self-contained HTML report with metrics.json and PNG figures.",
    )
    sub = ap.add_subparsers(dest="command", metavar="{demo,report}")
    sub.required = True

    d = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits and write its report (no network, ~1 min)",
        description="Train a small CNN on scikit-learn's digits (seeded, a few seconds), fit ELFA on its "
        "second conv layer, rank the layer's channels for class 3 with PCACE and write the report.",
    )
    d.add_argument("--out", default="captum_elfa_demo", help="output folder (default: %(default)s)")
    d.add_argument(
        "--n-factors",
        type=_n_factors,
        default="parallel",
        help="int, float in (0, 1), kaiser, scree or parallel (default: %(default)s)",
    )
    d.add_argument("--epochs", type=_positive_int, default=15, help="training epochs (default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser(
        "report",
        help="the report of a layer of your model on a folder of images",
        description="Fit ELFA on a layer of your model over a folder of images and write the report. "
        "PCACE ranks the layer's channels for --target; without --target it uses the class most "
        "images are predicted as. PCACE needs at least 10 images and is skipped (with a note) otherwise.",
        epilog="Examples:\n  captum-elfa report --model torchvision:resnet18 --weights resnet18.pth --layer layer3 --images photos/\n"
        "  captum-elfa report --model mynet.py:Net --weights net.pt --layer features.6 --images data/ --target 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME (torchvision.models.NAME(weights=None)), module:callable or path/to/file.py:callable",
    )
    r.add_argument(
        "--weights",
        help="state_dict file (torch.save of model.state_dict(), or a dict with a 'state_dict' entry); "
        "loaded with weights_only=True and strict key matching",
    )
    r.add_argument(
        "--layer", required=True, help="the layer's name in model.named_modules(), e.g. layer3 or features.6"
    )
    r.add_argument(
        "--images", required=True, help="folder of images (searched recursively: " + ", ".join(IMAGE_EXTENSIONS) + ")"
    )
    r.add_argument(
        "--target",
        type=_nonneg_int,
        default=None,
        help="class index for PCACE and Grad-CAM (default: the class most images are predicted as)",
    )
    r.add_argument(
        "--n-factors",
        type=_n_factors,
        default="kaiser",
        help="int, float in (0, 1), kaiser, scree or parallel (default: %(default)s)",
    )
    r.add_argument("--out", default="captum_elfa_report", help="output folder (default: %(default)s)")
    r.add_argument(
        "--image-size",
        type=_positive_int,
        default=224,
        help="images are resized and center-cropped to this (default: %(default)s)",
    )
    r.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default: %(default)s)")
    r.add_argument(
        "--max-images",
        type=_positive_int,
        default=None,
        help="use at most this many images (the first in sorted order)",
    )
    r.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    r.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often faster for small models on a busy machine)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


# ----------------------------------------------------------------------------------------------
# model, weights, layer
# ----------------------------------------------------------------------------------------------
def load_model(spec: str) -> Any:
    """Build the model named by ``spec``: ``torchvision:NAME``, ``module:callable`` or ``file.py:callable``."""
    from torch import nn

    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise CliError(
            f"--model {spec!r} is not valid; use torchvision:NAME (e.g. torchvision:resnet18), "
            "module:callable or path/to/file.py:callable"
        )
    if mod_name == "torchvision":
        import torchvision.models as tvm

        fn = getattr(tvm, attr, None)
        if attr.startswith("_") or fn is None or not callable(fn) or isinstance(fn, type(tvm)):
            names = tvm.list_models() if hasattr(tvm, "list_models") else []
            close = difflib.get_close_matches(attr, names, n=3)
            raise CliError(
                f"--model {spec!r}: torchvision.models has no model {attr!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + (f" (available: {', '.join(names[:30])}{', ...' if len(names) > 30 else ''})" if names else "")
            )
        try:
            model = fn(weights=None)
        except Exception as e:
            raise CliError(
                f"--model {spec!r}: torchvision.models.{attr}(weights=None) failed: {type(e).__name__}: {e}"
            ) from None
    else:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise CliError(f"--model {spec!r}: file {str(path)!r} not found")
            try:
                mspec = importlib.util.spec_from_file_location(f"captum_elfa_user_{path.stem}", path)
                if mspec is None or mspec.loader is None:
                    raise ImportError("Python found no module loader for this file")
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
            except Exception as e:
                raise CliError(f"--model {spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}") from None
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:  # a console script does not put the working directory on sys.path
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(mod_name)
            except Exception as e:
                raise CliError(
                    f"--model {spec!r}: cannot import module {mod_name!r}: {type(e).__name__}: {e}"
                ) from None
            finally:
                if added and cwd in sys.path:
                    sys.path.remove(cwd)
        obj = getattr(module, attr, None)
        if obj is None:
            raise CliError(f"--model {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        if isinstance(obj, nn.Module):
            model = obj
        elif callable(obj):
            try:
                model = obj()
            except Exception as e:
                raise CliError(f"--model {spec!r}: calling {attr}() failed: {type(e).__name__}: {e}") from None
        else:
            raise CliError(
                f"--model {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable returning an nn.Module"
            )
    if not isinstance(model, nn.Module):
        raise CliError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: Any, path: str, spec: str) -> None:
    """Load a state_dict file into ``model`` (strict), or raise :class:`CliError`."""
    import torch

    check_weights_file(path)
    p = Path(path)
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CliError(
            f"cannot read weights file {path}: {type(e).__name__}: {first[:300]} "
            "(save it with torch.save(model.state_dict(), path); files holding pickled objects "
            "are refused for safety)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliError(
            f"weights file {path} does not hold a state_dict (a dict of tensors, or {{'state_dict': ...}}), "
            f"got {type(state).__name__}"
        )
    if all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "\n  ".join(ln[:400] + ("..." if len(ln) > 400 else "") for ln in lines[:8])
        raise CliError(
            f"the weights in {path} do not fit --model {spec}:\n  {detail}"
            + ("\n  ..." if len(lines) > 8 else "")
            + "\n(check the architecture and its number of classes)"
        ) from None


def find_layer(model: Any, name: str) -> Any:
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=3)
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    raise CliError(
        f"--layer {name!r} is not a layer of the model"
        + (f"; did you mean {', '.join(close)}?" if close else "")
        + f"\nvalid names (from model.named_modules()): {shown}"
        + "\nhint: nested layers use dots, e.g. 'layer3' or 'layer3.1.conv2'"
    )


def _input_channels(model: Any) -> int:
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return int(m.in_channels)
    return 3


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
class ImageFolderFlat:
    """Every image file under a folder (no class sub-folders needed), as normalised tensors."""

    def __init__(self, files: Sequence[Path], image_size: int, channels: int) -> None:
        from torchvision import transforms as T

        self.files = list(files)
        self.mode = "L" if channels == 1 else "RGB"
        steps = [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()]
        if channels == 3:
            steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        self.transform = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                img = to_mode(im, self.mode)
        except Exception as e:
            raise CliError(f"cannot read image {_clean(str(path))}: {type(e).__name__}: {_clean(str(e))}") from None
        return self.transform(img)


def to_mode(im: Any, mode: str) -> Any:
    """``im`` as an 8-bit ``"L"`` or ``"RGB"`` PIL image. 16-bit and 32-bit grayscale (modes
    ``I;16*``, ``I``, ``F``) are rescaled from their full range (65535 for 16 bits, the image's
    own maximum for ``I``/``F`` beyond 16 bits) instead of being clipped to white by
    ``convert``; palette and alpha images are composited on black by ``convert``."""
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        else:
            hi = float(a.max()) if a.size else 0.0
            top = 255.0 if hi <= 255 else (65535.0 if hi <= 65535 else hi)
        lo = min(0.0, float(a.min())) if a.size else 0.0
        a = np.clip((a - lo) / max(top - lo, 1e-12), 0.0, 1.0)
        im = Image.fromarray(np.round(a * 255.0).astype(np.uint8), mode="L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert(mode)


def _clean(text: str) -> str:
    """``text`` with control characters (terminal escape codes in file names, ...) escaped as
    ``\\xNN`` / ``\\uNNNN``; newlines and tabs are kept."""
    import unicodedata

    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def find_images(folder: str, max_images: Optional[int], progress: bool) -> List[Path]:
    from PIL import Image

    root = Path(folder)
    if not root.exists():
        raise CliError(f"image folder not found: {_clean(folder)}")
    if not root.is_dir():
        raise CliError(f"--images {_clean(folder)} is not a folder")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as e:
        raise CliError(f"cannot list the image folder {_clean(folder)}: {type(e).__name__}: {_clean(str(e))}") from None
    if not files:
        raise CliError(f"no images found in {_clean(folder)} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    if max_images is not None:
        files = files[:max_images]
    it = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="checking images", unit="img", leave=False, file=sys.stderr)
    for p in it:  # headers only: fails early, naming the file, before any model work
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018
        except Exception as e:
            raise CliError(f"cannot read image {_clean(str(p))}: {type(e).__name__}: {_clean(str(e))}") from None
    return files


def check_out_dir(out: str) -> None:
    """Fail early when ``--out`` cannot be a folder (an existing file, or under one)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CliError(f"--out {_clean(out)} is an existing file, not a folder; choose a folder (new or existing)")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise CliError(f"--out {_clean(out)}: {_clean(str(parent))} is a file, not a folder")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CliError(f"--out {_clean(out)}: cannot write into {_clean(str(parent))} (permission denied)")
            break


def check_weights_file(path: str) -> None:
    """Fail early (before the model is built) when ``--weights`` names no readable file."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"weights file not found: {_clean(path)}")
    if not p.is_file():
        raise CliError(f"--weights {_clean(path)} is not a file")
    if not os.access(p, os.R_OK):
        raise CliError(f"weights file {_clean(path)} is not readable (permission denied)")


def gallery_indices(files: Sequence[Path], n: int, among: Optional[Sequence[int]] = None) -> List[int]:
    """Up to ``n`` indices of files with distinct contents (SHA-1 of the bytes), spread evenly
    over ``among`` (default: every file) rather than the first ``n`` in sorted order."""
    import hashlib

    import numpy as np

    pool = list(range(len(files))) if among is None else list(among)
    if not pool:
        return []
    # visit the pool in an evenly spread order: n evenly spaced positions, then 2n, 4n, ...
    m = len(pool)
    order: List[int] = []
    seen_pos: set = set()
    k = max(1, n)
    while True:
        for pos in np.linspace(0, m - 1, min(k, m)).round().astype(int).tolist():
            if pos not in seen_pos:
                seen_pos.add(pos)
                order.append(pos)
        if k >= m:
            break
        k *= 2
    picked: List[int] = []
    hashes: set = set()
    for pos in order:
        i = pool[pos]
        try:
            h = hashlib.sha1(Path(files[i]).read_bytes()).hexdigest()
        except OSError:
            continue
        if h in hashes:
            continue
        hashes.add(h)
        picked.append(i)
        if len(picked) == n:
            break
    return sorted(picked)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(_clean(msg), file=sys.stderr, flush=True)


class _Warnings:
    """Collect warnings (e.g. a Heywood case) as one-line messages: logged now, kept for the report."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def __enter__(self) -> _Warnings:
        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        for w in self._caught:
            msg = f"{w.category.__name__}: {w.message}"
            if msg not in self.messages:
                self.messages.append(msg)
                _log(f"  warning: {msg}")


def run_demo(args: argparse.Namespace) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny CNN on 8x8 images: threads only contend (see captum_elfa.demo)
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _run_demo(args: argparse.Namespace) -> Path:
    from captum_elfa import LayerFactorAnalysis, NeuronPCACE
    from captum_elfa.demo import train_digits_cnn
    from captum_elfa.report import write_report

    progress = not args.no_progress
    t0 = time.perf_counter()
    check_out_dir(args.out)
    _log("captum-elfa demo: training a CNN on scikit-learn's digits ...")
    model, x, y, acc = train_digits_cnn(args.epochs, seed=0, progress=progress)
    _log(f"  accuracy {acc:.1%} on {len(x)} images")
    layer = model.get_submodule("relu2")  # ReLU after the second conv: 32 channels of 8x8 maps
    _log("  ELFA on relu2 (second conv + ReLU) ...")
    with _Warnings() as caught:
        lfa = LayerFactorAnalysis(model, layer).fit(x, n_factors=args.n_factors, progress=progress)
        _log("  PCACE for class 3 ...")
        pc = NeuronPCACE(model, layer)
        pc.attribute(x[y == 3], target=3, progress=progress)
    # one image of each of the first four digits
    idx = [int((y == c).nonzero()[0]) for c in range(4)]
    _log("  writing the report ...")
    index = write_report(
        args.out,
        lfa,
        pc,
        images=x[idx],
        model=model,
        gradcam_layer=model.get_submodule("conv2"),
        title="captum-elfa demo: a CNN on scikit-learn's digits",
        meta={
            "model": "2-conv CNN trained on scikit-learn's digits (seed 0)",
            "training accuracy": f"{acc:.1%}",
            "layer": "relu2 (ReLU after the second conv, 32 channels)",
            "images": f"{len(x)} (8x8 grayscale)",
            "n_factors": str(args.n_factors),
            "PCACE": f"class 3, on its {int((y == 3).sum())} images",
            "Grad-CAM layer": "conv2 (second conv)",
            "command": getattr(args, "command_line", None) or "captum-elfa demo",
        },
        pcace_target=3,
        pcace_images=x[y == 3][:4],
        notes=caught.messages,
    )
    _log(f"  done in {time.perf_counter() - t0:.1f} s")
    return index


def run_report(args: argparse.Namespace) -> Path:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from captum_elfa import LayerFactorAnalysis, NeuronPCACE
    from captum_elfa._validation import CaptumElfaError, TooFewSamplesError
    from captum_elfa.report import write_report

    progress = not args.no_progress
    t0 = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # the cheap checks first, before the model is built: --out, the images, the weights file
    check_out_dir(args.out)
    files = find_images(args.images, args.max_images, progress)
    if args.weights:
        check_weights_file(args.weights)
    model = load_model(args.model)
    if args.weights:
        load_weights(model, args.weights, args.model)
    else:
        _log("warning: no --weights given: using the model's initial weights (random for torchvision:NAME)")
    layer = find_layer(model, args.layer)
    try:
        device = torch.device(args.device)
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as e:
        raise CliError(f"--device {args.device!r} is not usable: {e}") from None
    channels = _input_channels(model)
    if channels not in (1, 3):
        raise CliError(
            f"the model's first convolution takes {channels} channels; the report reads images as "
            "1-channel (grayscale) or 3-channel (RGB) only"
        )
    data = ImageFolderFlat(files, args.image_size, channels)
    # ImageFolderFlat is a map-style dataset by duck typing (it does not subclass Dataset, so that
    # importing the CLI does not import torch)
    loader: DataLoader[Any] = DataLoader(
        cast("Dataset[Any]", data), batch_size=args.batch_size, shuffle=False, num_workers=0
    )
    _log(f"captum-elfa report: {len(files)} images, layer {args.layer!r} of {args.model}")
    # one image through the model first: a model that cannot run on these images, or a --target
    # out of range, fails now rather than after the ELFA pass
    try:
        with torch.no_grad():
            probe = model(data[0][None].to(device))
    except CliError:
        raise
    except Exception as e:
        raise CliError(
            f"the model cannot run on the images ({args.image_size}x{args.image_size}, {channels} "
            f"channel(s)): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if (
        args.target is not None
        and isinstance(probe, torch.Tensor)
        and probe.dim() == 2
        and args.target >= probe.shape[1]
    ):
        raise CliError(
            f"--target {args.target} is not valid: the model has {probe.shape[1]} outputs "
            f"(classes 0 to {probe.shape[1] - 1})"
        )

    # record the predicted classes during the ELFA pass (no extra forward pass)
    preds: List[int] = []

    def record(_m: Any, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            preds.extend(out.argmax(1).tolist())

    hook = model.register_forward_hook(record)
    try:
        with _Warnings() as caught:
            lfa = LayerFactorAnalysis(model, layer).fit(loader, n_factors=args.n_factors, progress=progress)
    except TooFewSamplesError as e:
        raise CliError(f"{e}, or a larger --image-size (every pixel of the layer's output is a sample)") from None
    finally:
        hook.remove()
    _log(f"  ELFA: {lfa.n_factors_} factors, KMO {float(lfa.adequacy_.kmo):.3f}")

    notes: List[str] = list(caught.messages)

    def note(msg: str) -> None:
        notes.append(msg)
        _log("  " + msg)

    # ELFA ends its forward passes at the layer from the second batch on: predict the rest here
    # (one no-grad pass over the images the hook did not see), so that the top class and the
    # images of the ranked class rest on every image, not on the first batch
    if preds and len(preds) < len(files):
        with torch.no_grad():
            for start in range(len(preds), len(files), args.batch_size):
                xb = torch.stack([data[i] for i in range(start, min(start + args.batch_size, len(files)))])
                out = model(xb.to(device))
                if not (isinstance(out, torch.Tensor) and out.dim() == 2):
                    break
                preds.extend(out.argmax(1).tolist())
    pc_target = args.target
    top_count = None
    if pc_target is None and preds:
        pc_target, top_count = Counter(preds).most_common(1)[0]
    pc = None
    if pc_target is None:
        note("PCACE skipped: the model's output is not (N, classes) and no --target was given.")
    elif len(files) < MIN_PCACE_IMAGES:
        note(f"PCACE skipped: it needs at least {MIN_PCACE_IMAGES} images, the folder has {len(files)}.")
    else:
        try:
            with _Warnings() as caught:
                pc = NeuronPCACE(model, layer)
                pc.attribute(loader, target=pc_target, progress=progress)
            notes.extend(caught.messages)
        except CaptumElfaError as e:
            pc = None
            note(f"PCACE skipped: {e}")
    if top_count is not None:  # say which analyses use the class, only those that ran
        users = "PCACE and Grad-CAM use" if pc is not None else "Grad-CAM uses"
        note(
            f"No --target given: {users} class {pc_target}, the top prediction of {top_count} of the "
            f"{len(preds)} images."
        )
    # the gallery: distinct images (by content) spread over the folder, not the first 4 files;
    # the PCACE maps on images predicted as the ranked class when there are such images
    gallery = gallery_indices(files, 4)
    images = torch.stack([data[i] for i in gallery]).to(device)
    pcace_images = None
    if pc is not None and len(preds) == len(files):
        of_class = [i for i, c in enumerate(preds) if c == pc_target]
        if of_class:
            pcace_images = torch.stack([data[i] for i in gallery_indices(files, 4, of_class)]).to(device)
    index = write_report(
        args.out,
        lfa,
        pc,
        images=images,
        pcace_images=pcace_images,
        model=model,
        gradcam_layer=layer,
        target=pc_target,
        title=f"captum-elfa report: {args.model}, layer {args.layer}",
        meta={
            "model": args.model,
            "weights": args.weights or "(initial weights)",
            "layer": args.layer,
            "images": f"{len(files)} from {args.images} at {args.image_size}x{args.image_size}",
            "n_factors": str(args.n_factors),
            "command": getattr(args, "command_line", None) or "captum-elfa report",
        },
        notes=notes,
    )
    _log(f"  done in {time.perf_counter() - t0:.1f} s")
    return index


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``captum-elfa`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already on stderr)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    if "matplotlib.pyplot" not in sys.modules:  # headless: the report never opens a window
        import matplotlib

        matplotlib.use("Agg")
    import shlex

    from captum_elfa._validation import CaptumElfaError

    args.command_line = " ".join(shlex.quote(a) for a in ["captum-elfa", *(sys.argv[1:] if argv is None else argv)])
    try:
        index = run_demo(args) if args.command == "demo" else run_report(args)
    except (CliError, CaptumElfaError) as e:
        print(f"captum-elfa: error: {_clean(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the report: a full disk, a read-only folder, ...
        print(f"captum-elfa: error: cannot write the report: {type(e).__name__}: {_clean(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captum-elfa: interrupted (no report written; an earlier one is left as it was)", file=sys.stderr)
        return 130
    print(f"report written to {_clean(str(index))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
