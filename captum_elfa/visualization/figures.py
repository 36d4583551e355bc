"""Matplotlib figures of ELFA and PCACE results.

Every function returns a :class:`matplotlib.figure.Figure` built with ``Figure()`` directly:
nothing is registered with ``pyplot``, nothing is shown, and no global state changes. Save a
figure with ``fig.savefig("name.png")`` or display it in a notebook by evaluating it.

ELFA (:class:`~captum_elfa.LayerFactorAnalysis`, fitted): :func:`plot_scree`,
:func:`plot_loadings`, :func:`channel_insights` / :func:`plot_channel_insights`,
:func:`plot_fit_summary`, :func:`plot_efam`, :func:`plot_cam_vs_efam`.

PCACE (:class:`~captum_elfa.NeuronPCACE`, after ``attribute``): :func:`plot_pcace_ranking`,
:func:`plot_top_channel_maps`, :func:`plot_ace_transforms`.
"""

from captum_elfa.visualization._elfa_figures import (
    channel_insights,
    plot_cam_vs_efam,
    plot_channel_insights,
    plot_efam,
    plot_fit_summary,
    plot_loadings,
    plot_scree,
    redundancy_groups,
)
from captum_elfa.visualization._pcace_figures import plot_ace_transforms, plot_pcace_ranking, plot_top_channel_maps

__all__ = [
    "plot_scree",
    "plot_loadings",
    "channel_insights",
    "redundancy_groups",
    "plot_channel_insights",
    "plot_fit_summary",
    "plot_efam",
    "plot_cam_vs_efam",
    "plot_pcace_ranking",
    "plot_top_channel_maps",
    "plot_ace_transforms",
]
