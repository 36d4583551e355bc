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
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
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
) -> Path:
    """Write the report of a fitted ELFA model (and optionally PCACE scores) into ``out_dir``.

    Args:
        out_dir (str or PathLike): folder to write into (created if needed; files of the same
                    names are overwritten).
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

    Returns:
        pathlib.Path: the path of ``index.html``.

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer3).fit(loader)
        >>> pc = NeuronPCACE(model, model.layer3); pc.attribute(loader, target=3)
        >>> write_report("report", lfa, pc, images=x[:4], model=model, gradcam_layer=model.layer3)
    """
    from captum_elfa.visualization import figures as F

    if not hasattr(lfa, "loadings_"):
        from captum_elfa._validation import NotFittedError

        raise NotFittedError("write_report needs a fitted LayerFactorAnalysis; call lfa.fit(inputs) first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = list(notes or [])
    meta = dict(meta or {})
    if images is not None:
        images = images[:max_images].detach()

    # -- figures ---------------------------------------------------------------------------
    k = int(lfa.n_factors_)
    builders: List[tuple[str, Callable[[], Any]]] = [
        ("scree", lambda: F.plot_scree(lfa)),
        ("loadings", lambda: F.plot_loadings(lfa)),
        (
            "channel_insights",
            lambda: F.plot_channel_insights(
                lfa,
                figsize=(
                    max(6.0, 1.5 + 0.22 * int(lfa.n_channels_ - len(lfa.dead_channels_))),
                    min(20.0, max(6.0, 0.46 * (k + 1))),
                ),
            ),
        ),
        ("fit_summary", lambda: F.plot_fit_summary(lfa)),
    ]
    if images is not None:
        builders.append(("efam", lambda: F.plot_efam(lfa, images, factors=list(range(min(k, max_factor_maps))))))
        if model is not None and gradcam_layer is not None:
            builders.append(
                ("cam_vs_efam", lambda: F.plot_cam_vs_efam(model, lfa, images, gradcam_layer, target=target))
            )
    ranking = None
    if pc is not None and hasattr(pc, "scores_"):
        ranking = pc.rank_channels()
        n_ch = int(ranking.channels.numel())
        builders.append(("pcace_ranking", lambda: F.plot_pcace_ranking(pc, top=min(20, n_ch))))
        if images is not None:
            builders.append(
                (
                    "top_channel_maps",
                    lambda: F.plot_top_channel_maps(pc, images, k=min(5, n_ch), n_images=images.shape[0]),
                )
            )
        constant = set(pc.constant_channels_.tolist())
        best = next((int(c) for c in ranking.channels.tolist() if int(c) not in constant), None)
        if best is not None:
            builders.append(("ace_transforms", lambda: F.plot_ace_transforms(pc, best)))

    figures: Dict[str, str] = {}  # name -> base64 PNG
    for name, build in builders:
        try:
            fig = build()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=dpi, facecolor="white")
            figures[name] = base64.b64encode(path.read_bytes()).decode("ascii")
        except Exception as e:  # one failing figure must not lose the whole report
            msg = f"figure '{name}' could not be drawn: {type(e).__name__}: {e}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(msg)

    # -- metrics.json ----------------------------------------------------------------------
    insights = F.channel_insights(lfa)
    elfa = lfa.report()
    pcace = None
    if ranking is not None:
        pcace = {
            "layer": getattr(pc, "layer_name_", None),
            "target": _finite(pcace_target if pcace_target is not None else target),
            "n_images": int(pc.n_images_),
            "n_components": int(pc.n_components_),
            "scores": pc.scores_.tolist(),
            "ranking": ranking.channels.tolist(),
            "ranked_scores": ranking.scores.tolist(),
            "constant_channels": pc.constant_channels_.tolist(),
        }
    doc = {
        "title": title,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "meta": meta,
        "elfa": elfa,
        "channel_insights": insights,
        "pcace": pcace,
        "figures": [f"{n}.png" for n in figures],
        "notes": notes,
    }
    (out / "metrics.json").write_text(json.dumps(_finite(doc), indent=1, allow_nan=False))

    # -- index.html ------------------------------------------------------------------------
    page = _html(
        title,
        lfa,
        elfa,
        insights,
        pc,
        ranking,
        figures,
        meta,
        notes,
        pcace_target if pcace_target is not None else target,
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


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
) -> str:
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
    for f in range(int(lfa.n_factors_)):
        ins_rows.append((f"Redundant group F{f + 1}", _channels_text(groups.get(f, []))))
    insights_html = "\n".join(f"<tr><th>{n}</th><td>{e(v)}</td></tr>" for n, v in ins_rows)

    pcace_html = ""
    if ranking is not None:
        n_show = min(10, int(ranking.channels.numel()))
        cells = "".join(
            f"<tr><td>{i + 1}</td><td>{int(c)}</td><td>{float(s):.3f}</td></tr>"
            for i, (c, s) in enumerate(zip(ranking.channels[:n_show].tolist(), ranking.scores[:n_show].tolist()))
        )
        pcace_html = (
            "<h2>PCACE: channels ranked for "
            + (f"class {e(str(tgt))}" if tgt is not None else "the target")
            + f"</h2><p>{int(pc.n_images_)} images, {int(pc.n_components_)} principal component(s); "
            f"{int(pc.constant_channels_.numel())} constant channel(s) score 0. A channel's score is the "
            "maximal correlation (ACE) between its activation maps and the class score, in [0, 1].</p>"
            f"<table class='rank'><tr><th>rank</th><th>channel</th><th>score</th></tr>{cells}</table>"
        )

    meta_html = ""
    if meta:
        meta_html = (
            "<table class='meta'>"
            + "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in meta.items())
            + "</table>"
        )
    notes_html = "".join(f"<p class='note'>{e(n)}</p>" for n in notes)
    figs_html = "\n".join(
        f"<figure id='fig-{n}'><h3>{e(_FIGURE_TITLES.get(n, n))}</h3>"
        f"<img src='data:image/png;base64,{b64}' alt='{e(_FIGURE_TITLES.get(n, n))}'>"
        f"<figcaption>{e(_FIGURE_CAPTIONS.get(n, ''))} (<a href='{n}.png'>{n}.png</a>)</figcaption></figure>"
        for n, b64 in figures.items()
    )
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
{notes_html}
<h2>Summary</h2>
<table class="summary"><tr><th>measure</th><th>value</th><th>what it means</th></tr>
{summary}
</table>
<h2>Channel insights</h2>
<p>A channel's communality is the share of it the common factors explain (its importance to the
layer's summary); channels with the same dominant factor and |loading| &ge; 0.4 are redundant with each other.</p>
<table class="insights">
{insights_html}
</table>
{pcace_html}
<h2>Figures</h2>
{figs_html}
<p style="color:#888;font-size:.85em">Written by captum-elfa. Full numbers in <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""
