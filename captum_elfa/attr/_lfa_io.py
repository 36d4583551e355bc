"""The fitted state of a :class:`~captum_elfa.LayerFactorAnalysis` and its one validated file format.

:class:`FittedELFA` holds everything ``fit`` computes once: the
:class:`~captum_elfa.stats.pipeline.ELFAResult`, the layer's name, the shape of its output and the
:class:`~captum_elfa._capture.LayerLayout` it was read with. The estimator's public attributes
(``loadings_``, ``n_factors_``, ...) are derived from it (:func:`fitted_attributes`), and
:func:`to_state` / :func:`from_state` serialise it field by field from the same dataclass fields
(each field's ``metadata`` holds its encoder and decoder).

The file is a ``torch.save`` of plain values and tensors (read with ``weights_only=True``: no
pickled code runs). Format version 3 stores every field of :class:`FittedELFA`; version 2 files
(no ``"layout"``) still load, with the layout passed to ``load``. Loading checks the keys, the
types, the shapes against each other and the values (finite loadings, uniquenesses in ``[0, 1]``,
a positive definite ``Φ`` with unit diagonal, a valid layout), so a damaged or edited file raises
:class:`~captum_elfa.CaptumElfaError` instead of giving wrong maps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Tuple, Union

import torch
from torch import Tensor, nn

from captum_elfa._capture import LayerLayout
from captum_elfa._capture import layer_name as _lname
from captum_elfa._validation import CaptumElfaError, NotFittedError, is_int
from captum_elfa.stats.adequacy import Adequacy
from captum_elfa.stats.pipeline import Caution, ELFAResult
from captum_elfa.stats.stability import Stability
from captum_elfa.stats.validity import Metrics

__all__ = [
    "FittedELFA",
    "fitted_attributes",
    "fitted_property",
    "to_state",
    "from_state",
    "save",
    "load",
    "load_state",
    "check_layer",
    "check_layout_arguments",
]

FORMAT_NAME = "captum_elfa.LayerFactorAnalysis"
FORMAT_VERSION = 3
#: versions :func:`load` reads (version 2 has no saved layout)
READABLE_VERSIONS = (2, 3)

PathLike = Union[str, "os.PathLike[str]"]


class _Saved:
    """Default of :meth:`LayerFactorAnalysis.load`'s layout arguments: the value saved in the file."""

    def __repr__(self) -> str:
        return "<saved>"


SAVED: Any = _Saved()


_CATEGORIES = {"UserWarning": UserWarning, "RuntimeWarning": RuntimeWarning}


def _category(name: str) -> type:
    if name == "ConvergenceWarning":
        from sklearn.exceptions import ConvergenceWarning

        return ConvergenceWarning
    return _CATEGORIES.get(name, UserWarning)


# -- encoders / decoders of the fields (decoders get the file's path for their messages) ------------
def _encode_result(res: ELFAResult) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in fields(res):
        v = getattr(res, f.name)
        if isinstance(v, (Adequacy, Metrics, Stability)):
            v = dict(vars(v))
        elif f.name == "cautions":
            v = [{"kind": c.kind, "message": c.message, "category": c.category.__name__} for c in v]
        out[f.name] = v
    return out


def _encode_layout(layout: LayerLayout) -> Dict[str, Any]:
    out = {f.name: getattr(layout, f.name) for f in fields(layout)}
    if isinstance(out.get("token_grid"), tuple):
        out["token_grid"] = [int(v) for v in out["token_grid"]]
    return out


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
    version: Any = state.get("version")
    if not is_int(version) or int(version) > FORMAT_VERSION or int(version) < 1:
        raise CaptumElfaError(
            f"{os.fspath(path)!s} has format version {version!r}; this captum_elfa reads versions "
            f"{list(READABLE_VERSIONS)}: upgrade captum_elfa (or refit) for other versions"
        )
    if int(version) < min(READABLE_VERSIONS):
        raise CaptumElfaError(
            f"{os.fspath(path)!s} has format version {version}, written before the factor model gained "
            "its multi-start fit, oblique rotations and diagnostics; its numbers cannot be upgraded "
            "faithfully: refit the model with this captum_elfa and save it again"
        )
    expected = _expected_keys(int(version))
    if set(state) != expected:
        raise _bad(path, f"keys {sorted(set(state) ^ expected)} are missing or unexpected")
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
    if not (isinstance(v, int) and is_int(v)) or v < lo:
        raise _bad(path, f"'{name}' must be an int >= {lo}, found {v!r}")
    return v


def _decode_result(path: PathLike, raw: Any) -> ELFAResult:
    """Validate the saved fields against each other and rebuild the :class:`ELFAResult`."""
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


def _decode_layer_name(path: PathLike, v: Any) -> str:
    if not isinstance(v, str):
        raise _bad(path, f"'layer_name' must be a str, found {type(v).__name__}")
    return v


def _decode_shape(path: PathLike, v: Any) -> Tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not v or not all(is_int(s) and int(s) > 0 for s in v):
        raise _bad(path, f"'activation_shape' must be a list of positive ints, found {v!r}")
    return tuple(int(s) for s in v)


def _decode_layout(path: PathLike, v: Any) -> LayerLayout:
    names = [f.name for f in fields(LayerLayout)]
    if not isinstance(v, dict) or set(v) != set(names):
        found = sorted(v) if isinstance(v, dict) else type(v).__name__
        raise _bad(path, f"'layout' must be a dict with keys {names}, found {found}")
    d = dict(v)
    if isinstance(d.get("token_grid"), list):
        d["token_grid"] = tuple(d["token_grid"])
    try:
        return LayerLayout(**d)
    except CaptumElfaError as e:
        raise _bad(path, f"'layout' is not valid ({e})") from None


@dataclass(frozen=True)
class FittedELFA:
    """Everything a fitted :class:`~captum_elfa.LayerFactorAnalysis` holds (its attributes derive from it).

    Attributes:
        result (ELFAResult): the fitted model and its diagnostics; each field ``f`` is the
                    estimator's attribute ``f_`` (``loadings_``, ``n_factors_``, ...).
        layer_name (str): the layer's name in the model (``layer_name_``).
        activation_shape (tuple of int): the layer output's shape without the batch dimension
                    (``activation_shape_``).
        layout (LayerLayout): how the layer's output was read (channel dimension, token grid,
                    dropped tokens, call index); restored by ``load`` from a version-3 file.
    """

    result: ELFAResult = field(metadata={"encode": _encode_result, "decode": _decode_result})
    layer_name: str = field(metadata={"encode": str, "decode": _decode_layer_name})
    activation_shape: Tuple[int, ...] = field(
        metadata={"encode": lambda s: [int(v) for v in s], "decode": _decode_shape}
    )
    layout: LayerLayout = field(metadata={"encode": _encode_layout, "decode": _decode_layout, "since": 3})


def fitted_attributes() -> Dict[str, Callable[[FittedELFA], Any]]:
    """The estimator's public fitted attributes: name -> getter on a :class:`FittedELFA`.

    Every field ``f`` of :class:`ELFAResult` gives ``f_``; ``result_``, ``layer_name_`` and
    ``activation_shape_`` are the other fields of :class:`FittedELFA` (its ``layout`` is the
    estimator's ``layout`` attribute, set at construction).
    """
    out = {f.name + "_": _getter("result", f.name) for f in fields(ELFAResult)}
    out.update({f.name + "_": _getter(f.name) for f in fields(FittedELFA) if f.name != "layout"})
    return out


def _getter(*names: str) -> Callable[[FittedELFA], Any]:
    def get(st: FittedELFA) -> Any:
        v: Any = st
        for n in names:
            v = getattr(v, n)
        return v

    return get


def to_state(st: FittedELFA) -> Dict[str, Any]:
    """The dict that :func:`save` writes: the format, its version and every field of ``st``, encoded."""
    out: Dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    for f in fields(st):
        out[f.name] = f.metadata["encode"](getattr(st, f.name))
    return out


def save(path: PathLike, st: FittedELFA) -> None:
    """Write ``st`` to ``path`` (``torch.save`` of plain values and tensors)."""
    torch.save(to_state(st), path)


def _expected_keys(version: int) -> set:
    return {"format", "version"} | {f.name for f in fields(FittedELFA) if f.metadata.get("since", 0) <= version}


def from_state(path: PathLike, state: Dict[str, Any], layout: LayerLayout) -> FittedELFA:
    """Rebuild a :class:`FittedELFA` from a state checked by :func:`load_state`.

    ``layout`` is used for a version-2 file (which has none); a version-3 file's own layout is
    checked and used.
    """
    values: Dict[str, Any] = {}
    for f in fields(FittedELFA):
        if f.name not in state:  # a field added after the file's version
            values[f.name] = layout
            continue
        values[f.name] = f.metadata["decode"](path, state[f.name])
    return FittedELFA(**values)


def load(path: PathLike, layout: LayerLayout) -> FittedELFA:
    """Read, check and rebuild the :class:`FittedELFA` saved at ``path`` (see :func:`from_state`)."""
    return from_state(path, load_state(path), layout)


def check_layout_arguments(path: PathLike, saved: LayerLayout, given: Dict[str, Any]) -> None:
    """Refuse a layout argument of ``load`` that differs from the layout saved in a version-3 file."""
    for k, v in given.items():
        was = getattr(saved, k)
        if v != was and not (isinstance(v, list) and tuple(v) == was):
            raise CaptumElfaError(
                f"{os.fspath(path)!s} was fitted with {k}={was!r} but load was given {k}={v!r}; "
                f"leave {k} out (the saved layout is used) or pass {k}={was!r}"
            )


def check_layer(path: PathLike, st: FittedELFA, forward_func: Callable, layer: nn.Module) -> str:
    """Refuse a layer other than the one ``st`` was fitted on (by name in the model, or by width).

    Returns:
        str: the layer's name in ``forward_func`` (empty if it is not found there).
    """
    saved_name = st.layer_name
    name = _lname(forward_func, layer)
    if isinstance(forward_func, nn.Module) and saved_name and name and name != saved_name:
        raise CaptumElfaError(
            f"{os.fspath(path)!s} was fitted on layer '{saved_name}' but is being loaded onto layer '{name}'; "
            f"pass the layer it was fitted on (forward_func.get_submodule('{saved_name}'))"
        )
    width = next(
        (getattr(layer, a) for a in ("out_channels", "out_features", "num_features") if hasattr(layer, a)), None
    )
    n_channels = st.result.n_channels
    if isinstance(width, int) and width != n_channels:
        raise CaptumElfaError(
            f"{os.fspath(path)!s} was fitted on a layer of {n_channels} channels but {type(layer).__name__} "
            f"'{name}' has {width}; pass the layer it was fitted on"
        )
    return name


def fitted_property(name: str, get: Callable[[FittedELFA], Any]) -> property:
    """A read-only attribute ``name`` of the estimator: ``get`` of its fitted state, or ``NotFittedError``."""

    def fget(self: Any) -> Any:
        st = getattr(self, "_fitted", None)
        if st is None:
            raise NotFittedError(
                f"LayerFactorAnalysis.{name} is set by fit; call fit(inputs) first "
                "(or LayerFactorAnalysis.load(path, model, layer))"
            )
        return get(st)

    return property(fget, doc=f"Fitted attribute ``{name}`` (read-only; see ``fitted_``).")
