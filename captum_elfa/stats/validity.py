"""Validity metrics of a factor model, computed from R, the loadings and the uniquenesses only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from captum_elfa.stats.factor_model import score_weights

__all__ = ["Metrics", "validity_metrics"]


@dataclass(frozen=True)
class Metrics:
    """Quality of a fitted layer factor model (López-González et al. 2024).

    Per-channel tensors have one entry per channel of the layer, 0 for dead channels; the scalar
    metrics are computed over the live channels.

    Attributes:
        communalities (Tensor): ``h2_j = sum_k W_jk^2`` [C], each channel's importance.
        uniquenesses (Tensor): ``Psi_j`` [C], what is specific to each channel.
        gamma2 (Tensor): squared correlation coefficient ``h2_j / var(x_j)`` [C].
        gamma2_p20 (float): its 20th percentile over live channels (close to 1 is good).
        d1 (float): ``||diag(Cu)|| / ||Cu||`` of the factor residuals (close to 1 is good).
        d_greater (float): ``||diag(Cu)|| / ||Cu - diag(Cu)||`` (larger is better).
        res (float): ``||S - corr(V)|| / (||S|| + ||corr(V)||)`` (small is good).
        res_max (float): largest entry of ``S - corr(V)``.
        res_min (float): smallest entry of ``S - corr(V)``.
        r2 (float): determination coefficient ``1 - (det Psi / det V)^(1/C)`` via log-determinants.
        factor_variance (Tensor): ``sum_j W_jk^2`` per factor [k].
        proportional_variance (Tensor): factor variance divided by the number of live channels.
        cumulative_variance (Tensor): cumulative sum of the proportional variance.
        total_variance_explained (float): ``sum_j h2_j / sum_j var(x_j)``.
        loglike (float): mean log-likelihood per sample (scikit-learn's ``FactorAnalysis.score``).
    """

    communalities: Tensor
    uniquenesses: Tensor
    gamma2: Tensor
    gamma2_p20: float
    d1: float
    d_greater: float
    res: float
    res_max: float
    res_min: float
    r2: float
    factor_variance: Tensor
    proportional_variance: Tensor
    cumulative_variance: Tensor
    total_variance_explained: float
    loglike: float

    def expand(self, live: Tensor, n_channels: int) -> Metrics:
        """The same metrics with per-channel tensors over all ``n_channels`` (0 where not live)."""

        def full(t: Tensor) -> Tensor:
            out = torch.zeros(n_channels, dtype=torch.float64)
            out[live] = t.to(torch.float64)
            return out

        return replace(
            self, communalities=full(self.communalities), uniquenesses=full(self.uniquenesses), gamma2=full(self.gamma2)
        )

    def to_dict(self) -> dict:
        out = {}
        for k, v in asdict(self).items():
            out[k] = v.tolist() if isinstance(v, Tensor) else float(v)
        return out


def _loglike(r: Tensor, v: Tensor) -> float:
    """Mean Gaussian log-likelihood per sample of data with correlation ``r`` under covariance ``v``."""
    c = r.shape[0]
    sign, logdet = torch.linalg.slogdet(v)
    if float(sign) <= 0:
        return -math.inf
    return float(-0.5 * (c * math.log(2 * math.pi) + logdet + torch.trace(torch.linalg.solve(v, r))))


def _corr_from_cov(v: Tensor) -> Tensor:
    d = torch.sqrt(torch.diagonal(v))
    return v / torch.outer(d, d)


def validity_metrics(r: Tensor, loadings: Tensor, psi: Tensor, phi: Optional[Tensor] = None) -> Metrics:
    """Compute every metric over the live channels from ``R`` [c, c], ``W`` [c, k], ``Psi`` [c].

    For an oblique rotation, ``loadings`` is the pattern ``Λ`` and ``phi`` the factor correlations
    ``Φ`` [k, k]: communalities are ``diag(Λ Φ Λᵀ)``, the model covariance ``Λ Φ Λᵀ + Ψ``, the
    variance of factor ``j`` is ``(Φ Λᵀ Λ)_jj`` (psych's "SS loadings" of an oblique solution) and
    the factor scores are the regression scores ``Φ Λᵀ Σ⁻¹ x``. With ``phi=None`` (orthogonal
    factors) these reduce to ``sum_k W_jk^2``, ``W Wᵀ + Ψ``, ``sum_j W_jk^2`` and scikit-learn's
    ``transform``. The factor residuals ``u = x - Λ f`` with ``f = B x`` have covariance
    ``Cu = (I - Λ B) R (I - Λ B)^T``, so no data matrix is needed; ``Λ B`` does not depend on
    the rotation, so D1, D>, Res, R² and the log-likelihood do not either.
    """
    r = r.to(torch.float64)
    w = loadings.to(torch.float64)
    psi = psi.to(torch.float64)
    c = r.shape[0]
    if phi is None:
        common = w @ w.T
        fvar = (w**2).sum(0)
        b = score_weights(w, psi)
    else:
        phi = phi.to(torch.float64)
        common = w @ phi @ w.T
        fvar = torch.diagonal(phi @ w.T @ w)
        sigma = common + torch.diag(psi)
        b = torch.linalg.solve(sigma, w @ phi).T
    h2 = torch.diagonal(common).clone()
    var_x = torch.diagonal(r)
    gamma2 = h2 / var_x

    m = torch.eye(c, dtype=r.dtype, device=r.device) - w @ b
    cu = m @ r @ m.T
    diag_cu = torch.diag(torch.diagonal(cu))
    d1 = float(torch.linalg.norm(diag_cu) / torch.linalg.norm(cu))
    off = torch.linalg.norm(cu - diag_cu)
    d_greater = float(torch.linalg.norm(diag_cu) / off) if off > 0 else math.inf

    v = common + torch.diag(psi)
    cv = _corr_from_cov(v)
    s = _corr_from_cov(r)
    resid = s - cv
    res = float(torch.linalg.norm(resid) / (torch.linalg.norm(s) + torch.linalg.norm(cv)))

    _, logdet_v = torch.linalg.slogdet(v)
    logdet_psi = torch.log(psi).sum()
    r2 = float(1.0 - torch.exp((logdet_psi - logdet_v) / c))

    prop = fvar / c
    return Metrics(
        communalities=h2,
        uniquenesses=psi,
        gamma2=gamma2,
        gamma2_p20=float(torch.quantile(gamma2, 0.2)),
        d1=d1,
        d_greater=d_greater,
        res=res,
        res_max=float(resid.max()),
        res_min=float(resid.min()),
        r2=r2,
        factor_variance=fvar,
        proportional_variance=prop,
        cumulative_variance=torch.cumsum(prop, 0),
        total_variance_explained=float(h2.sum() / var_x.sum()),
        loglike=_loglike(r, v),
    )
