"""The tables and notices of the report page (HTML fragments; every value is escaped)."""

from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from captum_elfa.report._json import _describe
from captum_elfa.report._text import METRIC_EXPLANATIONS


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


def _summary_rows(lfa: Any) -> str:
    """The rows of the summary table: adequacy, factors and the fit metrics."""
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
    return summary


def _cautions(lfa: Any, pc: Any, ranking: Any) -> Tuple[List[str], Optional[int]]:
    """What the numbers cannot say, and the number of significant PCACE channels (None without a null)."""
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
    return cautions, pc_sig


def _caution_block(cautions: List[str]) -> str:
    e = html.escape
    caution_html = ""
    if cautions:
        caution_html = (
            "<div class='caution' id='cautions' role='alert'><strong>Read with caution</strong><ul>"
            + "".join(f"<li>{e(str(x))}</li>" for x in cautions)
            + "</ul></div>"
        )
    return caution_html


def _diagnostic_rows(lfa: Any) -> str:
    """The rows of the summary table on images, Heywood and collinear channels and stability."""
    e = html.escape
    n_img = getattr(lfa, "n_images_", None)
    min_img = getattr(lfa, "min_images_", None)
    heywood = [int(i) for i in _tolist(getattr(lfa, "heywood_channels_", []))]
    collinear = [int(i) for i in _tolist(getattr(lfa, "collinear_channels_", []))]
    st = getattr(lfa, "stability_", None)
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
    return "\n".join(f"<tr><th>{n}</th><td class='v'>{v}</td><td class='x'>{x}</td></tr>" for n, v, x in rows_extra)


def _insights_table(lfa: Any, insights: List[dict]) -> str:
    """The rows of the channel-insights table."""
    e = html.escape
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
    return insights_html


def _pcace_section(pc: Any, ranking: Any, tgt: Any, pc_sig: Optional[int]) -> str:
    """The PCACE heading, its explanation and the table of the top channels."""
    e = html.escape
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
    return pcace_html
