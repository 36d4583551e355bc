"""JSON-safe values for ``metrics.json`` and the page: strict JSON (no NaN), callables and paths by
name, the library versions and the PCACE section."""

from __future__ import annotations

import math
import os
import platform
import sys
from typing import Any, Dict, Optional

from torch import Tensor


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by None and tensors by lists (strict JSON)."""
    if isinstance(obj, Tensor):
        obj = obj.detach().cpu().tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return _finite(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    return obj


def _jsonable(obj: Any) -> Any:
    """``obj`` made JSON-safe for ``meta`` and targets: tensors and numpy arrays as lists, paths as
    strings, callables by their qualified name, sets as sorted lists, anything else unknown as
    its ``str``; then :func:`_finite` (NaN/Inf as None)."""
    if isinstance(obj, (str, bool, int, type(None))):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Tensor):
        return _finite(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_jsonable(v) for v in obj), key=str)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        try:
            return _jsonable(obj.tolist())
        except (TypeError, ValueError):
            return str(obj)
    if callable(obj):
        return _describe(obj)
    return str(obj)


def _describe(obj: Any) -> str:
    """A short readable name of a value for the page: a callable by module and qualified name."""
    if callable(obj) and not isinstance(obj, (Tensor, type(None))):
        name = getattr(obj, "__qualname__", None) or getattr(type(obj), "__qualname__", type(obj).__name__)
        mod = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        return f"{mod}.{name}" if mod and mod != "builtins" else str(name)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _versions() -> Dict[str, Optional[str]]:
    """The versions of captum-elfa, Python and the libraries behind the numbers."""
    import importlib.metadata as md

    from captum_elfa import __version__

    found: Dict[str, Optional[str]] = {"captum_elfa": __version__, "python": platform.python_version()}
    for dist in ("torch", "captum", "numpy", "scipy", "matplotlib"):
        mod = sys.modules.get(dist)  # the imported module's own version (torch's has its +cuXXX)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if version is None:
            try:
                version = md.version(dist)
            except md.PackageNotFoundError:
                version = None
        found[dist] = str(version) if version is not None else None
    return found


def _opt_list(pc: Any, name: str) -> Any:
    v = getattr(pc, name, None)
    return None if v is None else _finite(v)


def _pcace_json(pc: Any, ranking: Any, tgt: Any) -> Dict[str, Any]:
    quantiles = getattr(pc, "null_quantiles_", None)
    diag = getattr(pc, "diagnostics_", None)
    ill = getattr(diag, "ill_defined", None) if diag is not None else None
    return {
        "layer": getattr(pc, "layer_name_", None),
        "target": _jsonable(tgt),
        "n_images": int(pc.n_images_),
        "n_components": int(pc.n_components_),
        "scores": pc.scores_.tolist(),
        "ranking": ranking.channels.tolist(),
        "ranked_scores": ranking.scores.tolist(),
        "constant_channels": pc.constant_channels_.tolist(),
        "n_permutations": getattr(pc, "n_permutations_", None),
        "n_bootstrap": getattr(pc, "n_bootstrap_", None),
        "p_values": _opt_list(pc, "p_values_"),
        "threshold": _jsonable(getattr(pc, "threshold_", None)),
        "significant": _opt_list(pc, "significant_"),
        "intervals": _opt_list(pc, "intervals_"),
        "bias_corrected_scores": _opt_list(pc, "bias_corrected_scores_"),
        "confidence": _jsonable(getattr(pc, "confidence_", None)),
        "null_quantiles": None if not quantiles else {str(q): _finite(v) for q, v in quantiles.items()},
        "ill_defined_channels": None if ill is None else [int(i) for i in ill.nonzero().flatten().tolist()],
    }
