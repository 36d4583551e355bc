"""Per-channel insights of a fitted ELFA model: the analysis behind ``metrics.json``'s
``"channel_insights"`` and the redundancy groups (METHODS.md, "Channel insights").

These functions read a fitted :class:`~captum_elfa.LayerFactorAnalysis` (its loadings,
uniquenesses, communalities and dead channels); they draw nothing and run no model. The
figures of :mod:`captum_elfa.visualization` and :func:`captum_elfa.report.write_report` use them,
and :mod:`captum_elfa.visualization` re-exports :func:`channel_insights` and
:func:`redundancy_groups` under their old names.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, NotFittedError, check_float

__all__ = ["channel_insights", "redundancy_groups", "live_channels", "dominant_factors", "channel_order"]


def _check_lfa(lfa: Any, what: str) -> None:
    if not hasattr(lfa, "loadings_") or not hasattr(lfa, "metrics_"):
        raise NotFittedError(
            f"{what} needs a fitted LayerFactorAnalysis, got {type(lfa).__name__} without fitted "
            "results; call lfa.fit(inputs) first (or LayerFactorAnalysis.load(path, model, layer))"
        )


def _np(t: Any) -> np.ndarray:
    if isinstance(t, Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def _check_threshold(threshold: Any) -> float:
    try:
        return check_float("threshold", threshold, minimum=0.0)
    except CaptumElfaError:
        raise CaptumElfaError(
            f"threshold={threshold!r} is not valid; use a non-negative number (0.4 is usual)"
        ) from None


def live_channels(lfa: Any) -> np.ndarray:
    r"""The indices of the live (not constant) channels of a fitted ELFA model, in order.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.

    Returns:
        *ndarray* of int: the channels that are not in ``lfa.dead_channels_``.

    Examples::

        >>> live_channels(lfa)[:5]
        array([0, 1, 2, 4, 5])
    """
    c = int(lfa.loadings_.shape[0])
    dead = (
        set(int(i) for i in _np(lfa.dead_channels_).astype(int).tolist()) if hasattr(lfa, "dead_channels_") else set()
    )
    return np.array([j for j in range(c) if j not in dead], dtype=int)


def dominant_factors(lfa: Any) -> Tuple[np.ndarray, np.ndarray]:
    r"""The dominant factor of every channel (largest absolute loading) and its signed loading.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.

    Returns:
        2-element tuple of *ndarray*: the factor index per channel (-1 for a dead channel) and
        the signed dominant loading (0 for a dead channel).

    Examples::

        >>> dom, load = dominant_factors(lfa)
    """
    w = _np(lfa.loadings_)
    dom = np.abs(w).argmax(1)
    load = w[np.arange(w.shape[0]), dom]
    is_live = np.zeros(w.shape[0], dtype=bool)
    is_live[live_channels(lfa)] = True
    return np.where(is_live, dom, -1), np.where(is_live, load, 0.0)


def channel_order(lfa: Any) -> np.ndarray:
    r"""The live channels ordered by dominant factor, then by decreasing ``|dominant loading|``
    (the order of the loadings heatmap and of the channel-insights bars).

    Args:
        lfa (LayerFactorAnalysis): the fitted model.

    Returns:
        *ndarray* of int: a permutation of :func:`live_channels`.

    Examples::

        >>> order = channel_order(lfa)
    """
    dom, load = dominant_factors(lfa)
    live = live_channels(lfa)
    return live[np.lexsort((live, -np.abs(load[live]), dom[live]))]


def redundancy_groups(lfa: Any, threshold: float = 0.4) -> Dict[int, List[int]]:
    r"""Groups of redundant channels: for every factor, the live channels whose dominant factor
    it is with an absolute loading of at least ``threshold``.

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        threshold (float): smallest absolute loading for a channel to belong to its dominant
                    factor's group. Default: 0.4.

    Returns:
        dict: factor index -> sorted list of channel indices (every factor is a key; a group
        may be empty or hold one channel).

    Examples::

        >>> redundancy_groups(lfa, 0.5)
        {0: [1, 4, 9], 1: [2, 7], 2: []}
    """
    _check_lfa(lfa, "redundancy_groups")
    threshold = _check_threshold(threshold)
    dom, load = dominant_factors(lfa)
    groups: Dict[int, List[int]] = {f: [] for f in range(int(lfa.loadings_.shape[1]))}
    for j in live_channels(lfa):
        if abs(load[j]) >= threshold:
            groups[int(dom[j])].append(int(j))
    return groups


def channel_insights(lfa: Any, threshold: float = 0.4) -> List[Dict[str, Any]]:
    r"""Per-channel insights of a fitted ELFA model (METHODS.md, "Channel insights").

    For every channel: its communality ``h2`` (how much of it the shared factors explain, its
    importance to the layer's summary), its uniqueness (what is specific to it), the factor it
    belongs to (largest absolute loading) and the channels it is redundant with (same dominant
    factor, both with an absolute loading of at least ``threshold``).

    Args:
        lfa (LayerFactorAnalysis): the fitted model.
        threshold (float): smallest absolute loading for a channel to join its dominant factor's
                    redundancy group. Default: 0.4.

    Returns:
        list of dict, one per channel in channel order, with keys ``"channel"`` (int),
        ``"dead"`` (bool), ``"communality"`` (float), ``"uniqueness"`` (float),
        ``"dominant_factor"`` (int, None for a dead channel), ``"loading"`` (float, the
        signed dominant loading; 0 for a dead channel), ``"group"`` (int factor index if the
        channel belongs to a redundancy group, else None) and ``"redundant_with"`` (sorted list
        of the other channels of its group).

    Examples::

        >>> rows = channel_insights(lfa, threshold=0.5)
        >>> [r["channel"] for r in rows if r["group"] == 0]       # the channels of factor 1
        >>> import pandas as pd; pd.DataFrame(rows)                # a table
    """
    _check_lfa(lfa, "channel_insights")
    groups = redundancy_groups(lfa, threshold)
    member = {j: f for f, chans in groups.items() for j in chans}
    dom, load = dominant_factors(lfa)
    h2 = _np(lfa.metrics_.communalities)
    psi = _np(lfa.uniquenesses_)
    out: List[Dict[str, Any]] = []
    for j in range(int(lfa.loadings_.shape[0])):
        is_dead = bool(dom[j] < 0)
        g = member.get(j)
        out.append(
            {
                "channel": j,
                "dead": is_dead,
                "communality": float(h2[j]),
                "uniqueness": float(psi[j]),
                "dominant_factor": None if is_dead else int(dom[j]),
                "loading": float(load[j]),
                "group": g,
                "redundant_with": [] if g is None else [c for c in groups[g] if c != j],
            }
        )
    return out
