"""Matplotlib figures of ELFA, PCACE, layer comparison and feature-synthesis results.

Every function returns a :class:`matplotlib.figure.Figure` built with ``Figure()`` directly:
nothing is registered with ``pyplot``, nothing is shown, and no global state changes. Save a
figure with ``fig.savefig("name.png")`` or display it in a notebook by evaluating it. Figures
draw data: the model runs in :mod:`captum_elfa.attr.figure_data` (the image figures take its
results as ``maps``), and the channel insights are computed by :mod:`captum_elfa.stats.insights`.

ELFA (:class:`~captum_elfa.LayerFactorAnalysis`, fitted): :func:`plot_scree`,
:func:`plot_loadings`, :func:`plot_channel_insights`, :func:`plot_fit_summary`,
:func:`plot_efam`, :func:`plot_cam_vs_efam` (and, re-exported from :mod:`captum_elfa.stats.insights`,
:func:`channel_insights` and :func:`redundancy_groups`).

PCACE (:class:`~captum_elfa.NeuronPCACE`, after ``attribute``): :func:`plot_pcace_ranking`,
:func:`plot_top_channel_maps`, :func:`plot_ace_transforms`.

Comparison (:func:`~captum_elfa.compare_layers`): :func:`plot_layer_comparison`.

Synthesis (:mod:`captum_elfa.optim`): :func:`plot_channel_images`, :func:`plot_inversion`.
"""

from captum_elfa.stats.insights import channel_insights, redundancy_groups
from captum_elfa.visualization._comparison_figures import plot_layer_comparison
from captum_elfa.visualization._efam_figures import plot_cam_vs_efam, plot_efam
from captum_elfa.visualization._elfa_figures import plot_channel_insights, plot_fit_summary, plot_loadings, plot_scree
from captum_elfa.visualization._pcace_figures import plot_ace_transforms, plot_pcace_ranking, plot_top_channel_maps
from captum_elfa.visualization._synthesis_figures import plot_channel_images, plot_inversion

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
    "plot_layer_comparison",
    "plot_channel_images",
    "plot_inversion",
]
