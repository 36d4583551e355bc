"""Figures and heatmaps for captum_elfa explanations."""

from captum_elfa.visualization.heatmap import heatmap, visualize_explanation

__all__ = ["heatmap", "visualize_explanation"]
from captum_elfa.visualization.figures import (  # noqa: E402
    channel_insights,
    plot_ace_transforms,
    plot_cam_vs_efam,
    plot_channel_images,
    plot_channel_insights,
    plot_efam,
    plot_fit_summary,
    plot_inversion,
    plot_layer_comparison,
    plot_loadings,
    plot_pcace_ranking,
    plot_scree,
    plot_top_channel_maps,
    redundancy_groups,
)

__all__ += [
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
