"""Metrics of attribution maps: faithfulness (deletion and insertion curves)."""

from captum_elfa.metrics.faithfulness import auc, deletion_curve, insertion_curve

__all__ = ["deletion_curve", "insertion_curve", "auc"]
