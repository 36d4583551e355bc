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

The package is split by subject: ``_figures`` (what to draw, PNG encoding), ``_html`` and
``_sections`` (the page), ``_json`` (strict JSON, versions), ``_files`` (the folder) and ``_text``
(explanations and captions).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from torch import Tensor, nn

from captum_elfa.report._figures import _Timer, plan_figures, render_png
from captum_elfa.report._files import _check_out_dir, _distinct_images
from captum_elfa.report._html import _html
from captum_elfa.report._json import _describe, _finite, _jsonable, _pcace_json, _versions  # noqa: F401
from captum_elfa.report._text import _FIGURE_CAPTIONS, _FIGURE_TITLES, METRIC_EXPLANATIONS  # noqa: F401

__all__ = ["write_report", "METRIC_EXPLANATIONS"]


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
    timings: Optional[Dict[str, float]] = None,
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
        timings (dict, optional): filled with the seconds each stage took: ``"data"`` (the
                    model runs of the image figures), ``"figure:<name>"`` (building a figure),
                    ``"draw:<name>"`` (rendering it), ``"png"`` (PNG encoding, all figures),
                    ``"json"`` (insights and ``metrics.json``), ``"html"`` and ``"files"``.

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
    from captum_elfa.stats import insights as _insights

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

    # -- figures (the image figures' data is computed in their builders, once) ----------
    timer = _Timer()
    builders, captions, ranking = plan_figures(
        lfa, pc, images, maps_images, pcace_images, model, gradcam_layer, target, tgt, max_factor_maps, timer
    )

    out.mkdir(parents=True, exist_ok=True)
    # everything is written into a fresh staging folder first and moved into place at the end:
    # a failed or interrupted run leaves the previous report as it was, never half a report
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".captum_elfa-staging-"))
    try:
        figures: Dict[str, str] = {}  # name -> base64 PNG
        for name, build in builders:
            try:
                t0, data0 = time.perf_counter(), timer.get("data")
                fig = build()
                timer.add(f"figure:{name}", time.perf_counter() - t0 - (timer.get("data") - data0))
                data = render_png(fig, dpi, timer, name)
                t0 = time.perf_counter()
                (staging / f"{name}.png").write_bytes(data)
                timer.add("files", time.perf_counter() - t0)
                figures[name] = base64.b64encode(data).decode("ascii")
            except Exception as e:  # one failing figure must not lose the whole report
                msg = f"figure '{name}' could not be drawn: {type(e).__name__}: {e}"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                notes.append(msg)

        # -- metrics.json ------------------------------------------------------------------
        t0 = time.perf_counter()
        insights = _insights.channel_insights(lfa)
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
        timer.add("json", time.perf_counter() - t0)

        # -- index.html --------------------------------------------------------------------
        t0 = time.perf_counter()
        page = _html(title, lfa, elfa, insights, pc, ranking, figures, meta, notes, tgt, captions, doc)
        (staging / "index.html").write_text(page, encoding="utf-8")
        timer.add("html", time.perf_counter() - t0)
        t0 = time.perf_counter()

        # -- into place: the PNGs, then metrics.json, then index.html; os.replace never follows
        # a symlink of the same name in out_dir (it replaces the link itself)
        names = [f"{n}.png" for n in figures] + ["metrics.json", "index.html"]
        for fname in names:
            os.replace(staging / fname, out / fname)
        for n in _FIGURE_TITLES:  # stale figures of an earlier run that this run did not draw
            stale = out / f"{n}.png"
            if n not in figures and (stale.is_symlink() or stale.is_file()):
                stale.unlink()
        timer.add("files", time.perf_counter() - t0)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if timings is not None:
            timings.update(timer.timings)
    return out / "index.html"
