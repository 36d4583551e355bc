"""Figures and heatmaps for captum_elfa explanations."""
from captum_elfa.visualization.heatmap import heatmap, visualize_explanation

__all__ = ["heatmap", "visualize_explanation"]
