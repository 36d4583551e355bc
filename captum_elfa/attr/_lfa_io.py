"""Saving and loading a fitted :class:`~captum_elfa.LayerFactorAnalysis`: one validated format.

The file is a ``torch.save`` of plain values and tensors (read with ``weights_only=True``: no
pickled code runs). Every field of :class:`~captum_elfa.stats.pipeline.ELFAResult` is stored
under ``"result"``; loading checks the keys, the types, the shapes against each other and the
values (finite loadings, uniquenesses in ``[0, 1]``, a positive definite ``Φ`` with unit
diagonal), so a damaged or edited file raises :class:`~captum_elfa.CaptumElfaError` instead of
giving wrong maps.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any, Dict, Union

import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError
from captum_elfa.stats.adequacy import Adequacy
from captum_elfa.stats.pipeline import Caution, ELFAResult
from captum_elfa.stats.stability import Stability
from captum_elfa.stats.validity import Metrics

FORMAT_NAME = "captum_elfa.LayerFactorAnalysis"
FORMAT_VERSION = 2

PathLike = Union[str, "os.PathLike[str]"]

_CATEGORIES = {"UserWarning": UserWarning, "RuntimeWarning": RuntimeWarning}


def _category(name: str) -> type:
    if name == "ConvergenceWarning":
        from sklearn.exceptions import ConvergenceWarning

        return ConvergenceWarning
    return _CATEGORIES.get(name, UserWarning)


def result_to_state(res: ELFAResult, layer_name: str, activation_shape: tuple) -> Dict[str, Any]:
    """The dict that :func:`save_result` writes."""
    out: Dict[str, Any] = {}
    for f in fields(res):
        v = getattr(res, f.name)
        if isinstance(v, (Adequacy, Metrics)):
            v = dict(vars(v))
        elif isinstance(v, Stability):
            v = dict(vars(v))
        elif f.name == "cautions":
            v = [{"kind": c.kind, "message": c.message, "category": c.category.__name__} for c in v]
        out[f.name] = v
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layer_name": str(layer_name),
        "activation_shape": [int(s) for s in activation_shape],
        "result": out,
    }


def save_result(path: PathLike, res: ELFAResult, layer_name: str, activation_shape: tuple) -> None:
    torch.save(result_to_state(res, layer_name, activation_shape), path)


def _bad(path: PathLike, what: str) -> CaptumElfaError:
    return CaptumElfaError(f"{os.fspath(path)!s} is not a valid captum_elfa LayerFactorAnalysis file: {what}")


def load_state(path: PathLike) -> Dict[str, Any]:
    """Read and check the envelope of a saved file; returns the raw state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, not a torch file, or containing pickled objects
        first = str(e).splitlines()[0] if str(e) else ""
        raise CaptumElfaError(
            f"{os.fspath(path)!s} is not a readable captum_elfa LayerFactorAnalysis file ({type(e).__name__}: {first})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CaptumElfaError(f"{os.fspath(path)!s} is not a captum_elfa LayerFactorAnalysis file (format {fmt!r})")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise CaptumElfaError(
            f"{os.fspath(path)!s} has format version {version!r}; this captum_elfa reads version "
            f"{FORMAT_VERSION}: upgrade captum_elfa (or refit) for other versions"
        )
    if version < FORMAT_VERSION:
        raise CaptumElfaError(
            f"{os.fspath(path)!s} has format version {version}, written before the factor model gained "
            "its multi-start fit, oblique rotations and diagnostics; its numbers cannot be upgraded "
            "faithfully: refit the model with this captum_elfa and save it again"
        )
    expected = {"format", "version", "layer_name", "activation_shape", "result"}
    if set(state) != expected:
        raise _bad(path, f"keys {sorted(set(state) ^ expected)} are {'missing or unexpected'}")
    return state


def _tensor(path: PathLike, name: str, v: Any, shape: tuple, dtype: torch.dtype, finite: bool = True) -> Tensor:
    if not isinstance(v, Tensor):
        raise _bad(path, f"'{name}' must be a Tensor, found {type(v).__name__}")
    if tuple(v.shape) != shape:
        raise _bad(path, f"'{name}' has shape {tuple(v.shape)}, expected {shape} from the other fields")
    if v.dtype != dtype:
        raise _bad(path, f"'{name}' has dtype {v.dtype}, expected {dtype}")
    if finite and v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise _bad(path, f"'{name}' contains NaN or Inf")
    return v


def _int(path: PathLike, name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(path, f"'{name}' must be an int >= {lo}, found {v!r}")
    return v


def state_to_result(path: PathLike, state: Dict[str, Any]) -> ELFAResult:
    """Validate the saved fields against each other and rebuild the :class:`ELFAResult`."""
    raw = state["result"]
    if not isinstance(raw, dict):
        raise _bad(path, "'result' is not a dict")
    names = {f.name for f in fields(ELFAResult)}
    if set(raw) != names:
        missing, extra = sorted(names - set(raw)), sorted(set(raw) - names)
        raise _bad(path, f"missing fields {missing}, unexpected fields {extra}")
    d = dict(raw)
    c = _int(path, "n_channels", d["n_channels"], 1)
    k = _int(path, "n_factors", d["n_factors"], 1)
    _int(path, "n_samples", d["n_samples"], 2)
    _int(path, "n_images", d["n_images"], 1)
    _int(path, "n_iter", d["n_iter"], 0)
    _int(path, "min_images", d["min_images"], 0)
    f64, i64 = torch.float64, torch.int64
    live = d["live_channels"]
    if not isinstance(live, Tensor) or live.dim() != 1:
        raise _bad(path, "'live_channels' must be a 1-d LongTensor")
    cl = int(live.numel())
    for name in ("live_channels", "dead_channels", "collinear_channels", "heywood_channels"):
        t = _tensor(path, name, d[name], (int(d[name].numel()) if isinstance(d[name], Tensor) else -1,), i64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            raise _bad(path, f"'{name}' holds channel indices outside [0, {c - 1}]")
    parts = torch.cat([d["live_channels"], d["dead_channels"], d["collinear_channels"]])
    if parts.numel() != c or torch.unique(parts).numel() != c:
        raise _bad(path, "live, dead and collinear channels must partition the layer's channels")
    if k >= cl:
        raise _bad(path, f"n_factors={k} is not below the {cl} live channels")
    for name, shape in (
        ("mean", (c,)),
        ("std", (c,)),
        ("correlation", (cl, cl)),
        ("eigenvalues", (cl,)),
        ("loadings", (c, k)),
        ("uniquenesses", (c,)),
        ("phi", (k, k)),
        ("structure", (c, k)),
        ("score_weights", (k, c)),
        ("score_bias", (k,)),
    ):
        _tensor(path, name, d[name], shape, f64)
    psi = d["uniquenesses"][live]
    if bool((psi < 0).any()) or bool((psi > 1 + 1e-9).any()):
        raise _bad(path, "uniquenesses must lie in [0, 1] for live channels")
    phi = d["phi"]
    if not torch.allclose(phi, phi.T, atol=1e-10) or not torch.allclose(
        torch.diagonal(phi), torch.ones(k, dtype=f64), atol=1e-8
    ):
        raise _bad(path, "'phi' must be a symmetric factor correlation matrix with unit diagonal")
    if float(torch.linalg.eigvalsh(phi).min()) <= 0:
        raise _bad(path, "'phi' is not positive definite")
    if d["parallel_threshold"] is not None:
        _tensor(path, "parallel_threshold", d["parallel_threshold"], (cl,), f64)
    for name in ("converged", "rotation_converged"):
        if not isinstance(d[name], bool):
            raise _bad(path, f"'{name}' must be a bool, found {d[name]!r}")
    if not isinstance(d["projected_gradient"], float) or math.isnan(d["projected_gradient"]):
        raise _bad(path, "'projected_gradient' must be a float")
    for name in ("n_factors_criteria", "rotation_kwargs"):
        if not isinstance(d[name], dict):
            raise _bad(path, f"'{name}' must be a dict")
    if not isinstance(d["n_factors_method"], str):
        raise _bad(path, "'n_factors_method' must be a str")
    if d["rotation"] is not None and not isinstance(d["rotation"], str):
        raise _bad(path, "'rotation' must be a str or None")
    try:
        d["adequacy"] = Adequacy(**d["adequacy"])
        d["metrics"] = Metrics(**d["metrics"])
        d["stability"] = None if d["stability"] is None else Stability(**d["stability"])
        d["cautions"] = [Caution(x["kind"], x["message"], _category(x["category"])) for x in d["cautions"]]
    except (TypeError, KeyError) as e:
        raise _bad(path, f"a nested record does not match this captum_elfa ({e})") from None
    _tensor(path, "adequacy.kmo_per_channel", d["adequacy"].kmo_per_channel, (c,), f64)
    for name in ("communalities", "uniquenesses", "gamma2"):
        _tensor(path, f"metrics.{name}", getattr(d["metrics"], name), (c,), f64)
    return ELFAResult(**d)
