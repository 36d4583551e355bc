"""Validity metrics of a factor model, computed from R, the loadings and the uniquenesses only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from captum_elfa.stats.factor_model import loglikelihood, score_weights

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

    def to_dict(self) -> dict:
        out = {}
        for k, v in asdict(self).items():
            out[k] = v.tolist() if isinstance(v, Tensor) else float(v)
        return out


def _corr_from_cov(v: Tensor) -> Tensor:
    d = torch.sqrt(torch.diagonal(v))
    return v / torch.outer(d, d)


def validity_metrics(r: Tensor, loadings: Tensor, psi: Tensor) -> Metrics:
    """Compute every metric over the live channels from ``R`` [c, c], ``W`` [c, k], ``Psi`` [c].

    The factor residuals ``u = x - W f`` with ``f = B x`` have covariance
    ``Cu = (I - W B) R (I - W B)^T``, so no data matrix is needed.
    """
    r = r.to(torch.float64)
    w = loadings.to(torch.float64)
    psi = psi.to(torch.float64)
    c = r.shape[0]
    h2 = (w**2).sum(1)
    var_x = torch.diagonal(r)
    gamma2 = h2 / var_x

    b = score_weights(w, psi)
    m = torch.eye(c, dtype=r.dtype, device=r.device) - w @ b
    cu = m @ r @ m.T
    diag_cu = torch.diag(torch.diagonal(cu))
    d1 = float(torch.linalg.norm(diag_cu) / torch.linalg.norm(cu))
    off = torch.linalg.norm(cu - diag_cu)
    d_greater = float(torch.linalg.norm(diag_cu) / off) if off > 0 else math.inf

    v = w @ w.T + torch.diag(psi)
    cv = _corr_from_cov(v)
    s = _corr_from_cov(r)
    resid = s - cv
    res = float(torch.linalg.norm(resid) / (torch.linalg.norm(s) + torch.linalg.norm(cv)))

    _, logdet_v = torch.linalg.slogdet(v)
    logdet_psi = torch.log(psi).sum()
    r2 = float(1.0 - torch.exp((logdet_psi - logdet_v) / c))

    fvar = (w**2).sum(0)
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
        loglike=loglikelihood(r, w, psi),
    )
