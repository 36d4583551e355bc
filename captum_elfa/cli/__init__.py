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

import sys
from typing import Optional, Sequence

from captum_elfa.cli._args import _n_factors, _nonneg_int, _positive_int, build_parser  # noqa: F401
from captum_elfa.cli._commands import run_demo, run_report
from captum_elfa.cli._common import (  # noqa: F401
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_PCACE_IMAGES,
    CliError,
    _clean,
    _log,
)
from captum_elfa.cli._images import (  # noqa: F401
    ImageFolderFlat,
    check_out_dir,
    check_weights_file,
    find_images,
    gallery_indices,
    to_mode,
)
from captum_elfa.cli._model import find_layer, load_model, load_weights  # noqa: F401

__all__ = [
    "main",
    "build_parser",
    "CliError",
    "load_model",
    "load_weights",
    "find_layer",
    "ImageFolderFlat",
    "to_mode",
    "find_images",
    "check_out_dir",
    "check_weights_file",
    "gallery_indices",
    "run_demo",
    "run_report",
]


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
