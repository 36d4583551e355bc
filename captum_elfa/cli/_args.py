"""The command line of ``captum-elfa``: the argument parser and its value types."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from captum_elfa.cli._common import IMAGE_EXTENSIONS


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


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int ``>= minimum``, else an error naming the value and ``what``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive int")
_nonneg_int = _int_at_least(0, "a class index (a non-negative int)")
_nonneg_count = _int_at_least(0, "a non-negative int")


def _channel_dim(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; use an int: 1 for channels first (N, C, ...), -1 for channels last "
            "(N, ..., C) and tokens (N, L, C)"
        ) from None
    if v == 0:
        raise argparse.ArgumentTypeError("0 is the batch dimension; use 1 (channels first) or -1 (channels last)")
    return v


def _call_index(text: str) -> Any:
    t = text.strip().lower()
    if t == "all":
        return "all"
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; use an int (0 for the first call, -1 for the last) or 'all'"
        ) from None


def _token_grid(text: str) -> Any:
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    parts = t.split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return (int(parts[0]), int(parts[1]))
    raise argparse.ArgumentTypeError(f"{text!r} is not valid; use 'auto' or HxW with positive ints, e.g. 14x14")


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
        "  captum-elfa report --model mynet.py:Net --weights net.pt --layer features.6 --images data/ --target 3\n"
        "  captum-elfa report --model torchvision:vit_b_16 --weights vit.pth --layer encoder.layers.5 "
        "--images photos/ --channel-dim -1 --drop-tokens 1 --token-grid auto\n"
        "  captum-elfa report --model torchvision:convnext_tiny --weights cnx.pth --layer features.5.0.block.3 "
        "--images photos/ --channel-dim -1\n"
        "  captum-elfa report --model torchvision:resnet18 --weights resnet18.pth --layer layer1.0.relu "
        "--images photos/ --call-index -1",
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
    r.add_argument(
        "--permutations",
        type=_nonneg_count,
        default=20,
        help="PCACE: seeded permutations of the target for the null band, p-values and the layer-wide "
        "threshold; 0 turns the null off (default: %(default)s)",
    )
    r.add_argument(
        "--bootstrap",
        type=_nonneg_count,
        default=0,
        help="PCACE: seeded half-samples for bias-corrected scores and 95%% intervals (error bars on the "
        "ranking); they undercover below 200 images, which the report notes (default: %(default)s, none)",
    )
    lay = r.add_argument_group(
        "layer layout",
        "how to read the layer's output (as the channel_dim, token_grid, drop_tokens and "
        "call_index arguments of LayerFactorAnalysis and NeuronPCACE)",
    )
    lay.add_argument(
        "--channel-dim",
        type=_channel_dim,
        default=None,
        help="the channel dimension of the layer output: 1 for (N, C, ...), -1 for channels-last (N, H, W, C) "
        "or tokens (N, L, C) (default: decided from the module, refused when ambiguous)",
    )
    lay.add_argument(
        "--token-grid",
        type=_token_grid,
        default=None,
        help="grid of a token layer's patch tokens: auto (a square count) or HxW, e.g. 14x14 (default: none)",
    )
    lay.add_argument(
        "--drop-tokens",
        type=_nonneg_count,
        default=0,
        help="leading tokens of a token layer left out, e.g. 1 for ViT's CLS token (default: %(default)s)",
    )
    lay.add_argument(
        "--call-index",
        type=_call_index,
        default=None,
        help="which call of a module run several times per forward pass: an int (-1: the last) or all "
        "(every call's output is a sample set; Grad-CAM is then left out) (default: refuse such a module)",
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
