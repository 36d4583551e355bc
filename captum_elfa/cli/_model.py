"""``--model``, ``--weights`` and ``--layer``: build the model, load its weights, find the layer."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from captum_elfa.cli._common import CliError, _clean  # noqa: F401
from captum_elfa.cli._images import check_weights_file


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
