"""The report page: ``index.html``, one self-contained file with the figures embedded."""

from __future__ import annotations

import html
from typing import Any, Dict, List, Optional

from captum_elfa.report._json import _describe
from captum_elfa.report._sections import (
    _caution_block,
    _cautions,
    _diagnostic_rows,
    _insights_table,
    _pcace_section,
    _summary_rows,
)
from captum_elfa.report._text import _FIGURE_CAPTIONS, _FIGURE_TITLES


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
    summary = _summary_rows(lfa) + "\n" + _diagnostic_rows(lfa)
    cautions, pc_sig = _cautions(lfa, pc, ranking)
    caution_html = _caution_block(cautions)
    insights_html = _insights_table(lfa, insights)
    pcace_html = _pcace_section(pc, ranking, tgt, pc_sig) if ranking is not None else ""
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
