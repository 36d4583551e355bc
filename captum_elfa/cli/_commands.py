"""The ``demo`` and ``report`` commands."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any, List, cast

from captum_elfa.cli._common import MIN_PCACE_IMAGES, CliError, _log, _Warnings
from captum_elfa.cli._images import (
    ImageFolderFlat,
    check_out_dir,
    check_weights_file,
    find_images,
    gallery_indices,
)
from captum_elfa.cli._model import _input_channels, find_layer, load_model, load_weights

_OPTION_NAMES = {
    "channel_dim": "--channel-dim",
    "token_grid": "--token-grid",
    "drop_tokens": "--drop-tokens",
    "call_index": "--call-index",
}


def _option_names(message: str) -> str:
    """A library message with its layout argument names written as the command-line options."""
    for arg, opt in _OPTION_NAMES.items():
        message = message.replace(f"{arg}=", f"{opt} ").replace(arg, opt)
    return message


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

    layout = {
        "channel_dim": args.channel_dim,
        "token_grid": args.token_grid,
        "drop_tokens": args.drop_tokens,
        "call_index": args.call_index,
    }
    hook = model.register_forward_hook(record)
    try:
        with _Warnings() as caught:
            lfa = LayerFactorAnalysis(model, layer, **layout).fit(loader, n_factors=args.n_factors, progress=progress)
    except TooFewSamplesError as e:
        raise CliError(f"{e}, or a larger --image-size (every pixel of the layer's output is a sample)") from None
    except CaptumElfaError as e:
        # a layout the layer's output does not have: the message names the constructor argument;
        # say which command-line option sets it
        raise CliError(_option_names(str(e))) from None
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
                pc = NeuronPCACE(model, layer, **layout)
                pc.attribute(
                    loader,
                    target=pc_target,
                    progress=progress,
                    n_permutations=args.permutations,
                    n_bootstrap=args.bootstrap,
                )
            notes.extend(caught.messages)
        except CaptumElfaError as e:
            pc = None
            note(f"PCACE skipped: {_option_names(str(e))}")
    if args.call_index == "all":
        note("Grad-CAM left out: --call-index all pools every call of the layer, Grad-CAM weights one of them.")
    if top_count is not None:  # say which analyses use the class, only those that ran
        used = (["PCACE"] if pc is not None else []) + (["Grad-CAM"] if args.call_index != "all" else [])
        users = " and ".join(used) + (" use" if len(used) > 1 else " uses")
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
        gradcam_layer=None if args.call_index == "all" else layer,
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
