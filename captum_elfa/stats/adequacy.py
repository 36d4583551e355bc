"""Adequacy of a correlation matrix for a factor model: Bartlett's sphericity test and KMO."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from scipy.special import chdtrc as _chi2_sf
from torch import Tensor

__all__ = ["Adequacy", "bartlett_sphericity", "kmo", "adequacy", "safe_inverse"]


@dataclass(frozen=True)
class Adequacy:
    """Result of the adequacy tests.

    Attributes:
        kmo (float): overall Kaiser-Meyer-Olkin measure (at least 0.6, close to 1 is good).
        kmo_per_channel (Tensor): measure of sampling adequacy of each channel [C]
                    (0 for dead channels).
        bartlett_chi2 (float): Bartlett's chi-square statistic.
        bartlett_dof (int): its degrees of freedom ``C(C-1)/2``.
        bartlett_p (float): its p-value (a factor model needs p < 0.05).
        log_det (float): ``ln det R`` of the live channels' correlation matrix.
    """

    kmo: float
    kmo_per_channel: Tensor
    bartlett_chi2: float
    bartlett_dof: int
    bartlett_p: float
    log_det: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kmo_per_channel"] = self.kmo_per_channel.tolist()
        return d


def safe_inverse(r: Tensor) -> Tensor:
    """Inverse of a symmetric matrix, falling back to the pseudo-inverse when it is singular."""
    try:
        inv = torch.linalg.inv(r)
        if torch.isfinite(inv).all():
            return inv
    except RuntimeError:
        pass
    return torch.linalg.pinv(r, hermitian=True)


def bartlett_sphericity(r: Tensor, n: int) -> tuple[float, int, float, float]:
    """Bartlett's test that the correlation matrix ``r`` of ``n`` samples is the identity.

    ``chi2 = -(n - 1 - (2C + 5)/6) ln det R``, computed through the log-determinant.

    Returns:
        (chi2, dof, p_value, log_det)
    """
    c = r.shape[0]
    sign, logdet = torch.linalg.slogdet(r)
    log_det = float(logdet) if float(sign) > 0 else -math.inf
    stat = -log_det * (n - 1 - (2 * c + 5) / 6)
    dof = c * (c - 1) // 2
    p = float(_chi2_sf(dof, stat)) if math.isfinite(stat) else 0.0
    return float(stat), dof, p, log_det


def kmo(r: Tensor) -> tuple[float, Tensor]:
    """Kaiser-Meyer-Olkin measure, overall and per variable, from a correlation matrix.

    With partial correlations ``P_ij = -Rinv_ij / sqrt(Rinv_ii Rinv_jj)``,
    ``KMO = sum_{i!=j} R_ij^2 / (sum_{i!=j} R_ij^2 + sum_{i!=j} P_ij^2)``.
    """
    inv = safe_inverse(r)
    d = torch.sqrt(torch.clamp(torch.diagonal(inv), min=torch.finfo(r.dtype).tiny))
    p = -inv / torch.outer(d, d)
    r2 = r.clone()
    r2.fill_diagonal_(0)
    p.fill_diagonal_(0)
    r2 = r2**2
    p2 = p**2
    rs = r2.sum(0)
    ps = p2.sum(0)
    denom = rs + ps
    per = torch.where(denom > 0, rs / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    tot_den = float(r2.sum() + p2.sum())
    overall = float(r2.sum()) / tot_den if tot_den > 0 else 0.0
    return overall, per


def adequacy(r: Tensor, n: int) -> Adequacy:
    """Both tests on the correlation matrix ``r`` (float64) of ``n`` samples."""
    overall, per = kmo(r)
    stat, dof, p, log_det = bartlett_sphericity(r, n)
    return Adequacy(overall, per, stat, dof, p, log_det)
