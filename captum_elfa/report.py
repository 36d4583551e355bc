"""A self-contained report of an ELFA (and PCACE) analysis: ``index.html``, ``metrics.json`` and PNGs.

:func:`write_report` writes into ``out_dir``:

* ``index.html`` — one page with every figure embedded as a base64 PNG (it opens offline and can
  be mailed as a single file), a summary table of adequacy, number of factors and fit metrics
  (each with a one-line explanation), channel insights and the PCACE top channels;
* ``metrics.json`` — ``lfa.report()`` under ``"elfa"``, the channel insights, and the PCACE scores
  and ranking under ``"pcace"`` (``null`` without PCACE); non-finite numbers are written as
  ``null`` so that the file is strict JSON;
* the figures as PNG files beside it: ``scree.png``, ``loadings.png``, ``channel_insights.png``,
  ``fit_summary.png``, ``efam.png`` (with ``images``), ``pcace_ranking.png``,
  ``top_channel_maps.png`` and ``ace_transforms.png`` (with ``pc``; the maps also need
  ``images``), ``cam_vs_efam.png`` (with ``images``, ``model`` and ``gradcam_layer``).

Figures are built as :class:`matplotlib.figure.Figure` objects and saved with ``savefig``: no
``pyplot``, no display, no global matplotlib state, so this works on a headless machine.

The page opens with what the numbers cannot say (a caution banner: too few images for ELFA,
Heywood cases, a PCACE ranking without a permutation null or indistinguishable from chance),
a table of contents, and ends with the date and the versions of captum-elfa and its libraries.
Every file is written into a staging folder and moved into place at the end, so a failed run
leaves the previous report as it was; symlinks in ``out_dir`` are replaced, never followed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from torch import Tensor, nn

__all__ = ["write_report", "METRIC_EXPLANATIONS"]

#: one-line explanations of the summary table's rows
METRIC_EXPLANATIONS: Dict[str, str] = {
    "kmo": "Kaiser-Meyer-Olkin measure of sampling adequacy: how much of the channels' correlation "
    "is shared rather than pairwise. At least 0.6 is acceptable, 0.8 good, 0.9 excellent.",
    "bartlett": "Bartlett's test of sphericity: a small p (< 0.05) rejects 'the channels are "
    "uncorrelated', so a factor model is meaningful.",
    "n_factors": "Number of common factors, chosen by the criterion in brackets; each factor is a "
    "group of channels that vary together.",
    "d1": "Share of the residual covariance on its diagonal: close to 1 means the factors account "
    "for the correlations between channels.",
    "d_greater": "Diagonal over off-diagonal residual covariance: larger is better (little "
    "correlation left unexplained).",
    "res": "Relative difference between the observed correlation matrix and the one the model "
    "reproduces: small is good.",
    "gamma2_p20": "20th percentile of the channels' squared correlation with the factors: 80% of "
    "the channels are explained at least this well; close to 1 is good.",
    "r2": "Determination coefficient of the factor model: close to 1 means the factors explain the channels well.",
    "total_variance_explained": "Share of the channels' total variance carried by the common factors.",
    "loglike": "Mean log-likelihood per sample; compare it between models fitted on the same data.",
}

_FIGURE_CAPTIONS: Dict[str, str] = {
    "scree": "Eigenvalues of the channels' correlation matrix; filled points are the retained "
    "factors (Kaiser line at 1, parallel analysis when computed).",
    "loadings": "Rotated loadings: how strongly each channel belongs to each factor.",
    "channel_insights": "Importance (communality, coloured by factor) and uniqueness of every "
    "channel, with the groups of redundant channels.",
    "fit_summary": "Sampling adequacy per channel, the distribution of gamma2, the variance "
    "explained per factor and the validity metrics.",
    "efam": "Essential Feature Attribution Maps: the combined EFAM and each factor's map, over the input images.",
    "cam_vs_efam": "Grad-CAM (class-specific) next to EFAM (class-agnostic: what the layer's "
    "essential features respond to).",
    "pcace_ranking": "Channels ranked by PCACE score: the maximal correlation between a "
    "channel's activation maps and the class score.",
    "top_channel_maps": "Activation maps of the top PCACE channels (one colour scale per channel).",
    "ace_transforms": "ACE transforms of the top PCACE channel: the optimal transforms of its "
    "principal component and of the class score.",
}

_FIGURE_TITLES: Dict[str, str] = {
    "scree": "Scree plot",
    "loadings": "Loadings",
    "channel_insights": "Channel insights",
    "fit_summary": "Fit summary",
    "efam": "EFAM gallery",
    "cam_vs_efam": "Grad-CAM vs EFAM",
    "pcace_ranking": "PCACE ranking",
    "top_channel_maps": "Top PCACE channel maps",
    "ace_transforms": "ACE transforms of the top channel",
}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
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


def _write_atomic(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder / name`` through a temporary file in ``folder`` and
    ``os.replace``: a reader never sees half a file, and an existing symlink of that name is
    replaced by the file, never followed."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return folder / name


def _check_out_dir(out_dir: Union[str, os.PathLike]) -> Path:
    from captum_elfa._validation import CaptumElfaError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CaptumElfaError(f"out_dir {str(out)!r} exists and is not a folder; choose a folder (new or existing)")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise CaptumElfaError(f"out_dir {str(out)!r}: {str(parent)!r} is a file, not a folder")
    return out


def _distinct_images(images: Tensor) -> Tensor:
    """The images of a batch without exact duplicates (first occurrence kept, order kept)."""
    seen: set = set()
    keep: List[int] = []
    for i in range(images.shape[0]):
        h = hashlib.sha1(images[i].detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return images if len(keep) == images.shape[0] else images[keep]


def _fmt(v: Any, spec: str = ".3f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    if not math.isfinite(f):
        return "n/a"
    return format(f, spec)


def _kmo_verdict(kmo: float) -> tuple[str, str]:
    if not math.isfinite(kmo):
        return "n/a", "warn"
    for bound, word, cls in (
        (0.9, "excellent", "good"),
        (0.8, "good", "good"),
        (0.7, "middling", "ok"),
        (0.6, "mediocre", "ok"),
        (0.5, "poor", "bad"),
    ):
        if kmo >= bound:
            return word, cls
    return "unacceptable", "bad"


def _tolist(v: Any) -> List[Any]:
    if v is None:
        return []
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    return list(v.tolist()) if hasattr(v, "tolist") else list(v)


def _channels_text(chans: Sequence[int], limit: int = 24) -> str:
    chans = list(chans)
    shown = ", ".join(str(int(c)) for c in chans[:limit])
    return shown + (f", ... ({len(chans)} in all)" if len(chans) > limit else "") if chans else "(none)"


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def write_report(
    out_dir: Union[str, os.PathLike],
    lfa: Any,
    pc: Any = None,
    images: Optional[Tensor] = None,
    model: Optional[nn.Module] = None,
    gradcam_layer: Optional[nn.Module] = None,
    title: str = "captum-elfa report",
    target: Any = None,
    pcace_target: Any = None,
    meta: Optional[Dict[str, Any]] = None,
    notes: Optional[Sequence[str]] = None,
    max_images: int = 4,
    max_factor_maps: int = 4,
    dpi: int = 100,
    pcace_images: Optional[Tensor] = None,
) -> Path:
    """Write the report of a fitted ELFA model (and optionally PCACE scores) into ``out_dir``.

    Args:
        out_dir (str or PathLike): folder to write into (created if needed; files of the same
                    names are replaced).
        lfa (LayerFactorAnalysis): the fitted model, attached to its model and layer.
        pc (NeuronPCACE, optional): after ``pc.attribute(inputs, target)``; adds the PCACE
                    ranking, top channel maps and ACE transforms, and ``"pcace"`` in the JSON.
        images (Tensor, optional): ``[N, C, H, W]`` (C = 1 or 3) images for the EFAM gallery, the
                    top channel maps and Grad-CAM; the first ``max_images`` are drawn.
        model (nn.Module, optional): with ``gradcam_layer``, adds Grad-CAM vs EFAM.
        gradcam_layer (nn.Module, optional): the layer of Grad-CAM.
        title (str): the page's title.
        target (int, optional): the class of Grad-CAM (None: each image's top class).
        pcace_target (int, optional): the class ``pc`` was computed for, shown and stored in the
                    JSON (default: ``target``).
        meta (dict, optional): extra facts shown in the header and stored in the JSON under
                    ``"meta"`` (model, layer, number of images, ...).
        notes (list of str, optional): remarks shown on the page and stored under ``"notes"``
                    (for example why PCACE was skipped).
        max_images (int): images drawn in the image figures. Default: 4.
        max_factor_maps (int): per-factor EFAM maps drawn (the first factors). Default: 4.
        dpi (int): resolution of the PNGs. Default: 100.
        pcace_images (Tensor, optional): images of the class ``pc`` ranks for, for the top
                    channel maps (default: ``images``, whose classes the report does not know).

    Everything is written into a staging folder inside ``out_dir`` and moved into place at the
    end (``os.replace``: a symlink named like an output file is replaced, never followed); PNGs
    of an earlier report that this one does not draw are removed (only the names this function
    writes). Exact duplicate images are drawn once. ``meta`` and the targets may hold paths,
    tensors or callables (stored by name).

    Returns:
        pathlib.Path: the path of ``index.html``.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer3).fit(loader)
        >>> pc = NeuronPCACE(model, model.layer3); pc.attribute(loader, target=3)
        >>> write_report("report", lfa, pc, images=x[:4], model=model, gradcam_layer=model.layer3)
    """
    from captum_elfa._validation import NotFittedError
    from captum_elfa.visualization import figures as F

    if not hasattr(lfa, "loadings_"):
        raise NotFittedError("write_report needs a fitted LayerFactorAnalysis; call lfa.fit(inputs) first")
    out = _check_out_dir(out_dir)
    notes = [str(n) for n in (notes or [])]
    meta = dict(meta or {})
    tgt = pcace_target if pcace_target is not None else target
    if images is not None:
        given = min(int(images.shape[0]), max_images)
        images = _distinct_images(images.detach())[:max_images]
        if int(images.shape[0]) < given:
            notes.append(
                f"{given - int(images.shape[0])} duplicate image(s) (identical pixels) left out of the image figures."
            )
    if pcace_images is not None:
        pcace_images = _distinct_images(pcace_images.detach())[:max_images]
    maps_images = pcace_images if pcace_images is not None else images

    # -- figures ---------------------------------------------------------------------------
    k = int(lfa.n_factors_)
    n_maps = min(k, max_factor_maps)
    captions = dict(_FIGURE_CAPTIONS)
    builders: List[tuple[str, Callable[[], Any]]] = [
        ("scree", lambda: F.plot_scree(lfa)),
        ("loadings", lambda: F.plot_loadings(lfa)),
        ("channel_insights", lambda: F.plot_channel_insights(lfa)),
        ("fit_summary", lambda: F.plot_fit_summary(lfa)),
    ]
    if images is not None:
        n_img = int(images.shape[0])
        captions["efam"] = (
            f"Essential Feature Attribution Maps over {n_img} image(s): the combined EFAM (0-1 per image) and "
            f"the maps of the first {n_maps} of {k} factors (signed factor scores: red above, blue below "
            "the mean)" + (f"; the other {k - n_maps} factors are not drawn." if k > n_maps else ".")
        )
        builders.append(("efam", lambda: F.plot_efam(lfa, images, factors=list(range(n_maps)))))
        if model is not None and gradcam_layer is not None:
            builders.append(
                ("cam_vs_efam", lambda: F.plot_cam_vs_efam(model, lfa, images, gradcam_layer, target=target))
            )
    ranking = None
    if pc is not None and hasattr(pc, "scores_"):
        ranking = pc.rank_channels()
        n_ch = int(ranking.channels.numel())
        top_n = min(20, n_ch)
        captions["pcace_ranking"] = (
            f"The {top_n} highest of {n_ch} PCACE scores (the maximal correlation between a channel's activation "
            "maps and the class score)"
            + ("; error bars: bootstrap intervals" if getattr(pc, "intervals_", None) is not None else "")
            + (
                "; red marks: the permutation null's 95% quantile per channel, dashed line: the family-wise 5% "
                "threshold; light bars are not significant"
                if getattr(pc, "threshold_", None) is not None
                else "; no permutation null was computed (n_permutations=0): the scores are descriptive only"
            )
            + "."
        )
        builders.append(("pcace_ranking", lambda: F.plot_pcace_ranking(pc, top=top_n)))
        if maps_images is not None:
            n_top = min(5, n_ch)
            which = (
                f"images of the ranked class {_describe(tgt)}"
                if pcace_images is not None
                else "the gallery's images (their classes are unknown to the report)"
            )
            captions["top_channel_maps"] = (
                f"Activation maps of the top {n_top} of {n_ch} PCACE channels on {int(maps_images.shape[0])} {which} "
                "(one colour scale per channel)."
            )
            builders.append(
                (
                    "top_channel_maps",
                    lambda: F.plot_top_channel_maps(pc, maps_images, k=n_top, n_images=maps_images.shape[0]),
                )
            )
        constant = set(pc.constant_channels_.tolist())
        best = next((int(c) for c in ranking.channels.tolist() if int(c) not in constant), None)
        if best is not None:
            builders.append(("ace_transforms", lambda: F.plot_ace_transforms(pc, best)))

    out.mkdir(parents=True, exist_ok=True)
    # everything is written into a fresh staging folder first and moved into place at the end:
    # a failed or interrupted run leaves the previous report as it was, never half a report
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".captum_elfa-staging-"))
    try:
        figures: Dict[str, str] = {}  # name -> base64 PNG
        for name, build in builders:
            try:
                fig = build()
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=dpi, facecolor="white", pil_kwargs={"compress_level": 3})
                data = buf.getvalue()
                (staging / f"{name}.png").write_bytes(data)
                figures[name] = base64.b64encode(data).decode("ascii")
            except Exception as e:  # one failing figure must not lose the whole report
                msg = f"figure '{name}' could not be drawn: {type(e).__name__}: {e}"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                notes.append(msg)

        # -- metrics.json ------------------------------------------------------------------
        insights = F.channel_insights(lfa)
        elfa = lfa.report()
        pcace = None if ranking is None else _pcace_json(pc, ranking, tgt)
        doc = {
            "title": title,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "meta": _jsonable(meta),
            "elfa": elfa,
            "channel_insights": insights,
            "pcace": pcace,
            "figures": [f"{n}.png" for n in figures],
            "notes": notes,
        }
        text = json.dumps(_finite(_jsonable(doc)), indent=1, allow_nan=False)
        (staging / "metrics.json").write_text(text, encoding="utf-8")

        # -- index.html --------------------------------------------------------------------
        page = _html(title, lfa, elfa, insights, pc, ranking, figures, meta, notes, tgt, captions, doc)
        (staging / "index.html").write_text(page, encoding="utf-8")

        # -- into place: the PNGs, then metrics.json, then index.html; os.replace never follows
        # a symlink of the same name in out_dir (it replaces the link itself)
        names = [f"{n}.png" for n in figures] + ["metrics.json", "index.html"]
        for fname in names:
            os.replace(staging / fname, out / fname)
        for n in _FIGURE_TITLES:  # stale figures of an earlier run that this run did not draw
            stale = out / f"{n}.png"
            if n not in figures and (stale.is_symlink() or stale.is_file()):
                stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "index.html"


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
        "confidence": _jsonable(getattr(pc, "confidence_", None)),
        "null_quantiles": None if not quantiles else {str(q): _finite(v) for q, v in quantiles.items()},
        "ill_defined_channels": None if ill is None else [int(i) for i in ill.nonzero().flatten().tolist()],
    }


def _html(
    title: str,
    lfa: Any,
    elfa: dict,
    insights: List[dict],
    pc: Any,
    ranking: Any,
    figures: Dict[str, str],
    meta: Dict[str, Any],
    notes: List[str],
    tgt: Any,
    captions: Optional[Dict[str, str]] = None,
    doc: Optional[Dict[str, Any]] = None,
) -> str:
    captions = captions if captions is not None else _FIGURE_CAPTIONS
    doc = doc or {}
    e = html.escape
    a, m = lfa.adequacy_, lfa.metrics_
    kmo = float(a.kmo)
    verdict, vcls = _kmo_verdict(kmo)
    p = float(a.bartlett_p)
    bart_cls = "good" if math.isfinite(p) and p < 0.05 else "bad"
    rows = [
        ("KMO", f"{_fmt(kmo)} <span class='{vcls}'>({verdict})</span>", METRIC_EXPLANATIONS["kmo"]),
        (
            "Bartlett's test",
            f"&chi;&sup2; = {_fmt(a.bartlett_chi2, '.4g')}, dof {e(str(a.bartlett_dof))}, "
            f"<span class='{bart_cls}'>p = {_fmt(p, '.3g')}</span>",
            METRIC_EXPLANATIONS["bartlett"],
        ),
        (
            "Factors",
            f"{int(lfa.n_factors_)} ({e(str(lfa.n_factors_method_))}, rotation {e(str(lfa.rotation_))})",
            METRIC_EXPLANATIONS["n_factors"],
        ),
        ("D1", _fmt(m.d1), METRIC_EXPLANATIONS["d1"]),
        ("D&gt;", _fmt(m.d_greater), METRIC_EXPLANATIONS["d_greater"]),
        (
            "Res",
            f"{_fmt(m.res, '.4f')} (entries in [{_fmt(m.res_min)}, {_fmt(m.res_max)}])",
            METRIC_EXPLANATIONS["res"],
        ),
        ("&gamma;&sup2; (20th percentile)", _fmt(m.gamma2_p20), METRIC_EXPLANATIONS["gamma2_p20"]),
        ("R&sup2;", _fmt(m.r2, ".4f"), METRIC_EXPLANATIONS["r2"]),
        (
            "Variance explained",
            f"{_fmt(100 * float(m.total_variance_explained), '.1f')}%",
            METRIC_EXPLANATIONS["total_variance_explained"],
        ),
        ("Log-likelihood", f"{_fmt(m.loglike, '.4f')} per sample", METRIC_EXPLANATIONS["loglike"]),
    ]
    summary = "\n".join(f"<tr><th>{n}</th><td class='v'>{v}</td><td class='x'>{x}</td></tr>" for n, v, x in rows)

    # -- what the numbers cannot say ------------------------------------------------------
    cautions: List[str] = []
    n_img = getattr(lfa, "n_images_", None)
    min_img = getattr(lfa, "min_images_", None)
    for c in getattr(lfa, "cautions_", []) or []:
        cautions.append(f"ELFA ({getattr(c, 'kind', 'caution')}): {getattr(c, 'message', c)}")
    if n_img is not None and min_img is not None and int(n_img) < int(min_img):
        if not any("too_few_images" in x for x in cautions):
            cautions.append(
                f"ELFA was fitted on {int(n_img)} images; below {int(min_img)} images the loadings, KMO and "
                "factor count are not reproducible."
            )
    heywood = [int(i) for i in _tolist(getattr(lfa, "heywood_channels_", []))]
    collinear = [int(i) for i in _tolist(getattr(lfa, "collinear_channels_", []))]
    st = getattr(lfa, "stability_", None)
    pc_sig = None
    if ranking is not None:
        n_pc = int(pc.n_images_)
        thr = getattr(pc, "threshold_", None)
        sig = getattr(pc, "significant_", None)
        if thr is None or sig is None:
            cautions.append(
                f"PCACE on {n_pc} images without a permutation null (n_permutations=0): the scores cannot be "
                "told from chance; read them as descriptive only."
            )
        else:
            pc_sig = int(_tolist(sig).count(True))
            if pc_sig == 0:
                cautions.append(
                    f"PCACE on {n_pc} images: no channel exceeds the permutation threshold {float(thr):.3f} "
                    "(family-wise 5%): the ranking is indistinguishable from chance."
                )
        if n_pc < 100:
            cautions.append(
                f"PCACE on {n_pc} images: below 100 images a channel unrelated to the class scores about "
                "0.5-0.7 by chance."
            )
    caution_html = ""
    if cautions:
        caution_html = (
            "<div class='caution' id='cautions' role='alert'><strong>Read with caution</strong><ul>"
            + "".join(f"<li>{e(str(x))}</li>" for x in cautions)
            + "</ul></div>"
        )
    rows_extra = [
        (
            "Images",
            f"{int(n_img) if n_img is not None else 'n/a'}"
            + (f" (at least {int(min_img)} for reproducible loadings)" if min_img is not None else ""),
            "Pixels of one image are strongly dependent: the effective sample size is closer to the number "
            "of images than to the number of samples.",
        ),
        (
            "Heywood channels",
            e(_channels_text(heywood, 16)),
            "Channels whose uniqueness sits at its lower bound: the factors reproduce them entirely; the usual "
            "standard errors and tests do not hold there.",
        ),
        (
            "Collinear channels",
            e(_channels_text(collinear, 16)),
            "Channels that are exact linear combinations of others, left out of the fit.",
        ),
    ]
    if st is not None:
        cong = _tolist(getattr(st, "congruence", []))
        rep = _tolist(getattr(st, "replicable", []))
        bad = [f"F{j + 1}" for j, ok in enumerate(rep) if not ok]
        rows_extra.append(
            (
                "Factor stability",
                f"{len(rep) - len(bad)} of {len(rep)} replicable; min congruence "
                f"{_fmt(min(cong) if cong else float('nan'))}"
                + (f"; not replicable: {e(', '.join(bad))}" if bad else ""),
                "Tucker's congruence of each factor between two disjoint halves of the images (at least 0.85: "
                "fair similarity, 0.95: equal).",
            )
        )
    summary += "\n" + "\n".join(
        f"<tr><th>{n}</th><td class='v'>{v}</td><td class='x'>{x}</td></tr>" for n, v, x in rows_extra
    )
    live = [r for r in insights if not r["dead"]]
    dead = [r["channel"] for r in insights if r["dead"]]
    by_h2 = sorted(live, key=lambda r: -r["communality"])
    top = by_h2[:8]
    low = by_h2[-5:][::-1] if len(by_h2) > 8 else []
    groups: Dict[int, List[int]] = {}
    for r in insights:
        if r["group"] is not None:
            groups.setdefault(r["group"], []).append(r["channel"])
    ins_rows = [
        (
            "Channels",
            f"{int(lfa.n_channels_)} ({len(dead)} dead: {_channels_text(dead, 12)})"
            if dead
            else f"{int(lfa.n_channels_)} (none dead)",
        ),
        (
            "Most important (communality)",
            ", ".join(f"{r['channel']} ({r['communality']:.2f}, F{r['dominant_factor'] + 1})" for r in top),
        ),
    ]
    if low:
        ins_rows.append(("Least important", ", ".join(f"{r['channel']} ({r['communality']:.2f})" for r in low)))
    filled = sorted(((f, c) for f, c in groups.items() if c), key=lambda fc: (-len(fc[1]), fc[0]))
    for f, chans in filled[:12]:
        ins_rows.append((f"Redundant group F{f + 1} ({len(chans)})", _channels_text(chans)))
    n_empty = int(lfa.n_factors_) - len(filled)
    if len(filled) > 12 or n_empty:
        ins_rows.append(
            (
                "Other factors",
                (f"{len(filled) - 12} more groups (largest first above); " if len(filled) > 12 else "")
                + (f"{n_empty} factor(s) with no channel at |loading| >= 0.4; " if n_empty else "")
                + "every group is in metrics.json",
            )
        )
    insights_html = "\n".join(f"<tr><th>{n}</th><td>{e(v)}</td></tr>" for n, v in ins_rows)

    pcace_html = ""
    if ranking is not None:
        n_show = min(10, int(ranking.channels.numel()))
        chans = ranking.channels[:n_show].tolist()
        pv = getattr(pc, "p_values_", None)
        iv = getattr(pc, "intervals_", None)
        sg = getattr(pc, "significant_", None)
        head = "<tr><th>rank</th><th>channel</th><th>score</th>"
        head += "<th>p-value</th>" if pv is not None else ""
        head += "<th>interval</th>" if iv is not None else ""
        head += "<th>significant</th>" if sg is not None else ""
        cells = ""
        for i, (c, sc) in enumerate(zip(chans, ranking.scores[:n_show].tolist())):
            cells += f"<tr><td>{i + 1}</td><td>{int(c)}</td><td>{float(sc):.3f}</td>"
            if pv is not None:
                cells += f"<td>{_fmt(pv[int(c)], '.3g')}</td>"
            if iv is not None:
                cells += f"<td>[{_fmt(iv[int(c)][0])}, {_fmt(iv[int(c)][1])}]</td>"
            if sg is not None:
                cells += f"<td>{'yes' if bool(sg[int(c)]) else 'no'}</td>"
            cells += "</tr>"
        thr = getattr(pc, "threshold_", None)
        null_txt = (
            f" Permutation null ({e(str(getattr(pc, 'n_permutations_', '?')))} permutations): family-wise 5% "
            f"threshold {_fmt(thr)}; {pc_sig} of {int(ranking.channels.numel())} channels exceed it."
            if thr is not None and pc_sig is not None
            else " No permutation null was computed: the scores are descriptive only."
        )
        pcace_html = (
            "<h2 id='pcace'>PCACE: channels ranked for "
            + (f"class {e(_describe(tgt))}" if tgt is not None else "the target")
            + f"</h2><p>{int(pc.n_images_)} images, {int(pc.n_components_)} principal component(s); "
            f"{int(pc.constant_channels_.numel())} constant channel(s) score 0. A channel's score is the "
            f"maximal correlation (ACE) between its activation maps and the class score, in [0, 1].{null_txt}</p>"
            f"<table class='rank'>{head}</tr>{cells}</table>"
        )

    meta_html = ""
    if meta:
        meta_html = (
            "<table class='meta'>"
            + "".join(f"<tr><th>{e(str(k))}</th><td>{e(_describe(v))}</td></tr>" for k, v in meta.items())
            + "</table>"
        )
    # a warning caught at fit (a note) that repeats a caution above is not shown twice
    said = [str(getattr(c, "message", "")) for c in getattr(lfa, "cautions_", []) or []]
    notes_html = "".join(f"<p class='note'>{e(n)}</p>" for n in notes if not any(m and m in n for m in said))
    figs_html = "\n".join(
        f"<figure id='fig-{n}'><h3>{e(_FIGURE_TITLES.get(n, n))}</h3>"
        f"<img src='data:image/png;base64,{b64}' alt='{e(_FIGURE_TITLES.get(n, n) + ': ' + captions.get(n, ''))}'>"
        f"<figcaption>{e(captions.get(n, ''))} (<a href='{n}.png'>{n}.png</a>)</figcaption></figure>"
        for n, b64 in figures.items()
    )
    toc = [("summary", "Summary"), ("insights", "Channel insights")]
    if cautions:
        toc.insert(0, ("cautions", "Cautions"))
    if ranking is not None:
        toc.append(("pcace", "PCACE"))
    toc += [(f"fig-{n}", _FIGURE_TITLES.get(n, n)) for n in figures]
    toc_html = (
        "<nav id='toc'><strong>Contents</strong><ul>"
        + "".join(f"<li><a href='#{i}'>{e(t)}</a></li>" for i, t in toc)
        + "</ul></nav>"
    )
    versions = doc.get("versions") or {}
    version_txt = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    created = doc.get("created", "")
    layer = e(str(elfa.get("layer", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; background: #fff; line-height: 1.4; }}
h1 {{ border-bottom: 3px solid #2b6cb0; padding-bottom: .3em; }}
h2 {{ color: #2b6cb0; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
th, td {{ border: 1px solid #ccd; padding: .35em .6em; text-align: left; vertical-align: top; }}
th {{ background: #eef2f8; white-space: nowrap; }}
td.v {{ white-space: nowrap; font-family: ui-monospace, monospace; }}
td.x {{ color: #555; font-size: .92em; }}
.good {{ color: #1f7a1f; font-weight: 600; }} .ok {{ color: #a66a00; font-weight: 600; }}
.bad {{ color: #b22222; font-weight: 600; }} .warn {{ color: #a66a00; }}
.note {{ background: #fff7e0; border-left: 4px solid #e0a800; padding: .4em .8em; }}
.caution {{ background: #fdecea; border-left: 5px solid #b22222; padding: .4em .9em; margin: 1em 0; }}
.caution ul {{ margin: .3em 0; padding-left: 1.2em; }}
nav#toc {{ background: #f5f7fb; border: 1px solid #dde; padding: .4em .9em; margin: 1em 0; }}
nav#toc ul {{ columns: 3; margin: .3em 0; padding-left: 1.2em; }}
figure {{ margin: 1.5em 0; padding: .5em; border: 1px solid #dde; border-radius: 6px; }}
figure img {{ max-width: 100%; height: auto; display: block; margin: 0 auto; }}
figcaption {{ color: #555; font-size: .9em; margin-top: .4em; }}
table.rank td {{ font-family: ui-monospace, monospace; text-align: right; }}
</style></head>
<body>
<h1>{e(title)}</h1>
<p>Explainable Layer Factor Analysis (ELFA) of layer <code>{layer}</code>: {int(lfa.n_channels_)} channels,
{int(lfa.n_samples_)} samples (every pixel of every image is one sample of the channels).</p>
{meta_html}
{caution_html}
{notes_html}
{toc_html}
<h2 id="summary">Summary</h2>
<table class="summary"><tr><th>measure</th><th>value</th><th>what it means</th></tr>
{summary}
</table>
<h2 id="insights">Channel insights</h2>
<p>A channel's communality is the share of it the common factors explain (its importance to the
layer's summary); channels with the same dominant factor and |loading| &ge; 0.4 are redundant with each other.</p>
<table class="insights">
{insights_html}
</table>
{pcace_html}
<h2>Figures</h2>
{figs_html}
<p style="color:#888;font-size:.85em">Written by captum-elfa on {e(str(created))} ({e(version_txt)}).
Full numbers in <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""
