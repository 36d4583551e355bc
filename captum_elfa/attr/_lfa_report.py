"""The report (a JSON-serialisable dict) and the readable summary of a fitted LayerFactorAnalysis."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from torch import Tensor

from captum_elfa._validation import is_int
from captum_elfa.attr._lfa_io import FittedELFA
from captum_elfa.stats.rotations import OBLIQUE

__all__ = ["report", "summary"]


def report(st: FittedELFA) -> Dict[str, Any]:
    """All fitted results of ``st`` as a JSON-serialisable dict (see ``LayerFactorAnalysis.report``)."""
    r = st.result
    stab = r.stability
    return {
        "layer": st.layer_name,
        "n_samples": r.n_samples,
        "n_images": r.n_images,
        "min_images": r.min_images,
        "n_channels": r.n_channels,
        "activation_shape": list(st.activation_shape),
        "dead_channels": r.dead_channels.tolist(),
        "collinear_channels": r.collinear_channels.tolist(),
        "heywood_channels": r.heywood_channels.tolist(),
        "n_factors": r.n_factors,
        "n_factors_method": r.n_factors_method,
        "n_factors_criteria": _jsonable(r.n_factors_criteria),
        "rotation": r.rotation,
        "rotation_kwargs": _jsonable(r.rotation_kwargs),
        "converged": r.converged,
        "rotation_converged": r.rotation_converged,
        "projected_gradient": _finite_or_none(r.projected_gradient),
        "eigenvalues": r.eigenvalues.tolist(),
        "adequacy": r.adequacy.to_dict(),
        "metrics": r.metrics.to_dict(),
        "loadings": r.loadings.tolist(),
        "structure": r.structure.tolist(),
        "phi": r.phi.tolist(),
        "uniquenesses": r.uniquenesses.tolist(),
        "stability": None if stab is None else stab.to_dict(),
        "cautions": [{"kind": c.kind, "message": c.message} for c in r.cautions],
    }


def summary(st: FittedELFA) -> str:
    """A readable multi-line summary of ``st`` (see ``LayerFactorAnalysis.summary``)."""
    r = st.result
    a, m = r.adequacy, r.metrics
    left = []
    if len(r.dead_channels):
        left.append(f"{len(r.dead_channels)} dead")
    if len(r.collinear_channels):
        left.append(f"{len(r.collinear_channels)} collinear: {r.collinear_channels.tolist()}")
    crit = ", ".join(f"{k} {v}" for k, v in _criteria_counts(r.n_factors_criteria).items())
    lines = [
        f"LayerFactorAnalysis of '{st.layer_name}': {r.n_channels} channels "
        f"({', '.join(left) if left else 'none left out'}), {r.n_images} images "
        f"({r.n_samples} samples)",
        f"  adequacy: KMO = {a.kmo:.3f}, Bartlett chi2 = {a.bartlett_chi2:.4g} (dof {a.bartlett_dof}, "
        f"p = {a.bartlett_p:.3g})",
        f"  factors: {r.n_factors} ({r.n_factors_method}), rotation = {r.rotation}"
        f"{' (oblique: see phi_)' if r.rotation in OBLIQUE else ''}",
        f"  factor-count criteria: {crit}",
        f"  fit: converged = {r.converged}, D1 = {m.d1:.3f}, D> = {m.d_greater:.3f}, Res = {m.res:.4f} "
        f"[{m.res_min:.3f}, {m.res_max:.3f}], gamma2 p20 = {m.gamma2_p20:.3f}, R2 = {m.r2:.4f}",
        f"  variance explained: {m.total_variance_explained:.1%}; log-likelihood {m.loglike:.4f} per sample",
    ]
    if len(r.heywood_channels):
        lines.append(f"  Heywood channels (uniqueness at its bound): {r.heywood_channels.tolist()}")
    stab = r.stability
    if stab is not None:
        bad = [j for j, ok in enumerate(stab.replicable.tolist()) if not ok]
        lines.append(
            f"  stability (split halves of {stab.n_images_a} and {stab.n_images_b} images): "
            f"{len(stab.replicable) - len(bad)} of {len(stab.replicable)} factors replicable "
            f"(Tucker congruence >= {stab.threshold}); min {float(stab.congruence.min()):.3f}"
            + (f"; not replicable: {bad}" if bad else "")
        )
    for c in r.cautions:
        lines.append(f"  caution ({c.kind}): {c.message}")
    return "\n".join(lines)


def _criteria_counts(criteria: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in criteria.items() if isinstance(v, int) and is_int(v)}


def _finite_or_none(v: float) -> Optional[float]:
    return float(v) if math.isfinite(v) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
