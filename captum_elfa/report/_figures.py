"""The report's figures: what to draw (with the data the image figures need, computed here, once)
and how a figure becomes PNG bytes (one Agg draw, then PNG encoding)."""

from __future__ import annotations

import io
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from torch import Tensor, nn

from captum_elfa.report._json import _describe
from captum_elfa.report._text import _FIGURE_CAPTIONS

Builder = Tuple[str, Callable[[], Any]]


class _Timer:
    """Seconds per stage of one report (``write_report(..., timings=dict)`` receives them)."""

    def __init__(self) -> None:
        self.timings: Dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def get(self, stage: str) -> float:
        return self.timings.get(stage, 0.0)


def _lazy(compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute`` run at most once, at its first call (the data shared by two figures)."""
    box: List[Any] = []

    def get() -> Any:
        if not box:
            box.append(compute())
        return box[0]

    return get


def plan_figures(
    lfa: Any,
    pc: Any,
    images: Optional[Tensor],
    maps_images: Optional[Tensor],
    pcace_images: Optional[Tensor],
    model: Optional[nn.Module],
    gradcam_layer: Optional[nn.Module],
    target: Any,
    tgt: Any,
    max_factor_maps: int,
    timer: _Timer,
) -> Tuple[List[Builder], Dict[str, str], Any]:
    """The figures of the report, in page order, as ``(name, build)`` pairs, their captions and the
    PCACE ranking (None without PCACE). The model runs inside the builders of the image figures
    (through :mod:`captum_elfa.attr.figure_data`, timed as ``"data"``); the EFAM of the gallery is
    computed once and reused by Grad-CAM vs EFAM."""
    from captum_elfa.attr import figure_data as D
    from captum_elfa.visualization import figures as F

    def timed(stage: str, compute: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            t0 = time.perf_counter()
            try:
                return compute()
            finally:
                timer.add(stage, time.perf_counter() - t0)

        return _lazy(run)

    k = int(lfa.n_factors_)
    n_maps = min(k, max_factor_maps)
    captions = dict(_FIGURE_CAPTIONS)
    builders: List[Builder] = [
        ("scree", lambda: F.plot_scree(lfa)),
        ("loadings", lambda: F.plot_loadings(lfa)),
        ("channel_insights", lambda: F.plot_channel_insights(lfa)),
        ("fit_summary", lambda: F.plot_fit_summary(lfa)),
    ]
    if images is not None:
        gallery = images
        n_img = int(gallery.shape[0])
        captions["efam"] = (
            f"Essential Feature Attribution Maps over {n_img} image(s): the combined EFAM (0-1 per image) and "
            f"the maps of the first {n_maps} of {k} factors (signed factor scores: red above, blue below "
            "the mean)" + (f"; the other {k - n_maps} factors are not drawn." if k > n_maps else ".")
        )
        efam = timed("data", lambda: D.efam_maps(lfa, gallery, factors=list(range(n_maps))))
        builders.append(("efam", lambda: F.plot_efam(lfa, gallery, maps=efam())))
        if model is not None and gradcam_layer is not None:
            m, layer = model, gradcam_layer
            cam = timed("data", lambda: D.cam_and_efam_maps(m, lfa, gallery, layer, target, efam=efam().efam))
            builders.append(("cam_vs_efam", lambda: F.plot_cam_vs_efam(m, lfa, gallery, layer, maps=cam())))
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
            mi = maps_images
            n_top = min(5, n_ch)
            which = (
                f"images of the ranked class {_describe(tgt)}"
                if pcace_images is not None
                else "the gallery's images (their classes are unknown to the report)"
            )
            captions["top_channel_maps"] = (
                f"Activation maps of the top {n_top} of {n_ch} PCACE channels on {int(mi.shape[0])} {which} "
                "(one colour scale per channel)."
            )
            acts = timed("data", lambda: D.top_channel_activations(pc, mi, k=n_top, n_images=int(mi.shape[0])))
            builders.append(
                (
                    "top_channel_maps",
                    lambda: F.plot_top_channel_maps(pc, mi, k=n_top, n_images=int(mi.shape[0]), maps=acts()),
                )
            )
        constant = set(pc.constant_channels_.tolist())
        best = next((int(c) for c in ranking.channels.tolist() if int(c) not in constant), None)
        if best is not None:
            builders.append(("ace_transforms", lambda: F.plot_ace_transforms(pc, best)))
    return builders, captions, ranking


def render_png(fig: Any, dpi: int, timer: _Timer, name: str) -> bytes:
    """``fig`` as PNG bytes: one Agg draw at ``dpi`` (timed as ``"draw:<name>"``), then PNG
    encoding by Pillow at compression level 1 (``"png"``): a report's figures are mostly flat
    colour, where level 1 is several times faster than the default 6 for files ~20% larger."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    t0 = time.perf_counter()
    fig.set_dpi(dpi)
    fig.set_facecolor("white")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    t1 = time.perf_counter()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(buf, format="PNG", compress_level=1)
    timer.add(f"draw:{name}", t1 - t0)
    timer.add("png", time.perf_counter() - t1)
    return buf.getvalue()
