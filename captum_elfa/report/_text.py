"""The words of the report: the summary table's explanations, the figures' titles and captions."""

from __future__ import annotations

from typing import Dict

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
