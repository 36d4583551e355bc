"""The ELFA pipeline from streamed moments to a fitted layer factor model, as pure statistics.

:func:`fit_elfa` takes the count, mean and co-moment matrix of a layer's channels (and, for the
stability check, those of two halves of the images) and returns an :class:`ELFAResult`: the
screening of the channels (dead, collinear), the adequacy tests, every factor-count criterion,
the multi-start maximum-likelihood fit, its rotation, the validity metrics, the factor-score
weights and the cautions a user must see. :class:`~captum_elfa.LayerFactorAnalysis` is a thin
shell around it that streams the activations and issues the cautions as warnings.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from captum_elfa._validation import CaptumElfaError, TooFewSamplesError, is_int
from captum_elfa.stats.adequacy import Adequacy, adequacy
from captum_elfa.stats.factor_model import KKT_TOL, ml_factor_analysis, score_weights
from captum_elfa.stats.moments import Moments
from captum_elfa.stats.nfactors import NFactorsSpec, choose_n_factors, factor_count_criteria, ledermann_bound
from captum_elfa.stats.rotations import Rotation, check_rotation_kwargs, orient, rotate, rotate_score_weights
from captum_elfa.stats.screening import min_images, screen_channels
from captum_elfa.stats.stability import Stability, split_half_stability
from captum_elfa.stats.validity import Metrics, validity_metrics

__all__ = ["ELFAResult", "Caution", "FactorSolution", "fit_elfa", "factor_solution"]

#: up to this many channels the statistics (C x C matrices) run on one thread: threads only add
#: synchronisation there, and on a busy machine much of it (fit_elfa at ResNet-18 layer1, 64
#: channels, on a loaded 2-core machine: 5.1 s with two threads, 0.3-0.5 s with one)
_SINGLE_THREAD_MAX_C = 512


@contextmanager
def _statistics_threads(n_channels: int) -> Iterator[None]:
    """One torch and one BLAS thread for the small-matrix statistics of up to
    ``_SINGLE_THREAD_MAX_C`` channels; the caller's settings are restored afterwards."""
    if n_channels > _SINGLE_THREAD_MAX_C:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


#: KKT tolerance of the split-half fits and the rotation gradient they are rotated to: the halves
#: only feed Tucker congruences, which these move by ~1e-5 at most
_HALF_KKT_TOL = 1e-5
_HALF_ROTATION_TOL = 1e-6


@dataclass(frozen=True)
class Caution:
    """Something a user must be told about a fit: ``kind`` (a short key, also a flag in
    ``report()["cautions"]``), ``message`` and the warning ``category`` to issue it with."""

    kind: str
    message: str
    category: type = UserWarning


@dataclass
class FactorSolution:
    """A fitted and rotated factor model of standardised variables (the live channels).

    Attributes:
        loadings (Tensor): pattern loadings ``Λ`` [c, k] (sign and order convention applied).
        uniquenesses (Tensor): ``Ψ`` [c].
        phi (Tensor): factor correlations ``Φ`` [k, k] (the identity for orthogonal rotations).
        structure (Tensor): structure loadings ``Λ Φ`` [c, k].
        weights (Tensor): regression factor-score weights ``Φ Λᵀ Σ⁻¹`` [k, c] on standardised
                    variables (scikit-learn's ``transform`` when ``Φ = I``).
        loglike (float): mean log-likelihood per sample.
        converged (bool): the ML fit met its KKT test and the rotation its gradient criterion.
        ml_converged (bool), rotation_converged (bool), projected_gradient (float): details.
        n_iter (int): optimiser iterations; heywood (Tensor): bool [c], uniqueness at the bound.
    """

    loadings: Tensor
    uniquenesses: Tensor
    phi: Tensor
    structure: Tensor
    weights: Tensor
    loglike: float
    ml_converged: bool
    rotation_converged: bool
    projected_gradient: float
    n_iter: int
    heywood: Tensor

    @property
    def converged(self) -> bool:
        return self.ml_converged and self.rotation_converged


def factor_solution(
    r: Tensor,
    k: int,
    rotation: Optional[str],
    rotation_kwargs: Dict[str, Any],
    random_state: Optional[int] = 0,
    init: Optional[Tensor] = None,
    tol: float = KKT_TOL,
) -> FactorSolution:
    """Multi-start ML fit of ``k`` factors to the correlation matrix ``r``, then the rotation.

    With ``init`` (the uniquenesses of the same model fitted on all the data, for a half of the
    images) that warm start joins the four deterministic starts (no random ones) and only the best
    screened start is refined.
    ``tol`` is the KKT tolerance of the ML fit (:func:`ml_factor_analysis`).
    """
    fm = ml_factor_analysis(
        r,
        k,
        random_state=0 if random_state is None else random_state,
        init=init,
        n_refine=None if init is None else 1,
        # a half starts from the full model's optimum: the deterministic starts stay as a check
        n_random_starts=2 if init is None else 0,
        tol=tol,
    )
    w0, psi = fm.loadings, fm.uniquenesses
    b0 = score_weights(w0, psi)  # W0ᵀ Σ⁻¹ in the stable (I + Wᵀ Ψ⁻¹ W)⁻¹ Wᵀ Ψ⁻¹ form
    rot: Rotation = orient(rotate(w0, rotation, **rotation_kwargs) if k > 1 else rotate(w0, None))
    weights = rotate_score_weights(b0, rot)
    return FactorSolution(
        loadings=rot.loadings,
        uniquenesses=psi,
        phi=rot.phi,
        structure=rot.structure,
        weights=weights,
        loglike=fm.loglike,
        ml_converged=bool(fm.converged),
        rotation_converged=bool(rot.converged),
        projected_gradient=float(fm.projected_gradient),
        n_iter=int(fm.n_iter),
        heywood=fm.heywood,
    )


@dataclass
class ELFAResult:
    """Everything :func:`fit_elfa` computes; ``LayerFactorAnalysis`` exposes each field ``f`` as
    the attribute ``f_`` and :meth:`~captum_elfa.LayerFactorAnalysis.save` stores exactly these.

    Per-channel tensors have one entry per channel of the layer (``n_channels``): zero loadings,
    uniquenesses and weights for channels left out of the model (dead or collinear).
    """

    n_samples: int
    n_images: int
    n_channels: int
    mean: Tensor
    std: Tensor
    live_channels: Tensor
    dead_channels: Tensor
    collinear_channels: Tensor
    correlation: Tensor
    eigenvalues: Tensor
    parallel_threshold: Optional[Tensor]
    n_factors: int
    n_factors_method: str
    n_factors_criteria: Dict[str, Any]
    rotation: Optional[str]
    rotation_kwargs: Dict[str, Any]
    loadings: Tensor
    uniquenesses: Tensor
    phi: Tensor
    structure: Tensor
    heywood_channels: Tensor
    converged: bool
    rotation_converged: bool
    projected_gradient: float
    n_iter: int
    adequacy: Adequacy
    metrics: Metrics
    score_weights: Tensor
    score_bias: Tensor
    min_images: int
    stability: Optional[Stability] = None
    cautions: List[Caution] = field(default_factory=list)


def _correlation(n: int, mean: Tensor, comoment: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor]:
    cov = comoment.detach().to(torch.float64).cpu() / n
    sub = cov[keep][:, keep]
    sd = torch.sqrt(torch.diagonal(sub))
    r = sub / torch.outer(sd, sd)
    r = 0.5 * (r + r.T)
    r.fill_diagonal_(1.0)
    return r, sd


def _expand(t: Tensor, live: Tensor, c: int) -> Tensor:
    out = torch.zeros((c,) + tuple(t.shape[1:]), dtype=torch.float64)
    out[live] = t.to(torch.float64)
    return out


def _method_name(spec: NFactorsSpec) -> str:
    if isinstance(spec, str):
        return spec
    return "variance" if isinstance(spec, float) else "fixed"


def fit_elfa(
    moments: Moments,
    n_factors: NFactorsSpec = "kaiser",
    rotation: Optional[str] = "varimax",
    rotation_kwargs: Optional[Dict[str, Any]] = None,
    n_images: Optional[int] = None,
    halves: Optional[Tuple[Moments, Moments, int, int]] = None,
    random_state: Optional[int] = 0,
) -> ELFAResult:
    """Fit ELFA from streamed moments.

    Args:
        moments (Moments): count ``n`` (images x pixels), mean [C] and co-moment matrix [C, C].
        n_factors (int, str or float): see :meth:`captum_elfa.LayerFactorAnalysis.fit`.
        rotation (str or None): one of :data:`captum_elfa.stats.rotations.ROTATIONS`.
        rotation_kwargs (dict, optional): options of the rotation
                    (:func:`captum_elfa.stats.rotations.check_rotation_kwargs`).
        n_images (int, optional): number of images behind the moments (default: unknown, taken
                    as ``n``, e.g. for a linear layer whose samples are the images).
        halves (tuple, optional): ``(moments_a, moments_b, n_images_a, n_images_b)`` of two
                    disjoint halves of the images, for the split-half stability check.
        random_state (int, optional): seed of parallel analysis and of the random ML starts.

    Returns:
        ELFAResult: the fitted model and its diagnostics; ``cautions`` lists what the caller
        must tell the user.

    Raises:
        CaptumElfaError: too few samples or live channels, or ``n_factors`` above the
                    identification (Ledermann) bound.
    """
    with _statistics_threads(int(moments.mean.numel())):
        return _fit_elfa(moments, n_factors, rotation, rotation_kwargs, n_images, halves, random_state)


def _fit_elfa(
    moments: Moments,
    n_factors: NFactorsSpec,
    rotation: Optional[str],
    rotation_kwargs: Optional[Dict[str, Any]],
    n_images: Optional[int],
    halves: Optional[Tuple[Moments, Moments, int, int]],
    random_state: Optional[int],
) -> ELFAResult:
    rkw = check_rotation_kwargs(rotation, rotation_kwargs or {})
    n = int(moments.n)
    mean = moments.mean.detach().to(torch.float64).cpu()
    comoment = moments.comoment.detach().to(torch.float64).cpu()
    c = mean.numel()
    n_img = int(n_images) if n_images is not None else n
    if n < 2:
        raise TooFewSamplesError(
            f"{n} samples (images x pixels) for {c} channels: a factor model needs more "
            f"samples than channels; pass more images (at least {c + 1} samples)"
        )
    screen = screen_channels(mean, comoment / n, n)
    live, dead, collinear = screen.live, screen.dead, screen.collinear
    c_live = int(live.numel())
    if c_live + int(collinear.numel()) == 0:
        raise CaptumElfaError(
            f"all {c} channels of the layer are dead (constant over every pixel of every "
            "image); choose another layer or other images"
        )
    if c_live < 3:
        raise CaptumElfaError(
            f"only {c_live} of {c} channels vary independently over the images "
            f"({len(dead)} dead, {len(collinear)} collinear); a factor model needs at least 3"
        )
    varying = c_live + int(collinear.numel())  # with n <= varying channels, every set is collinear
    if n <= varying:
        raise TooFewSamplesError(
            f"{n} samples (images x pixels) for {varying} live channels: a factor model needs "
            f"more samples than channels; pass more images (at least {varying + 1} samples)"
        )
    cautions: List[Caution] = []
    if collinear.numel() > 0:
        cautions.append(
            Caution(
                "collinear_channels",
                f"channels {collinear.tolist()} are exact linear combinations of other channels "
                f"({_describe_collinear(screen.collinear_with, collinear)}); they carry no information "
                "of their own and are "
                "left out of the factor model like dead channels (see collinear_channels_)",
            )
        )
    r, sd = _correlation(n, mean, comoment, live)
    eig = torch.linalg.eigvalsh(r).flip(0)
    bound = ledermann_bound(c_live)
    if is_int(n_factors) and int(n_factors) > bound:
        raise CaptumElfaError(
            f"n_factors={n_factors} is above the identification (Ledermann) bound {bound} for "
            f"{c_live} live channels: the model would have negative degrees of freedom "
            f"((C - k)^2 - (C + k)) / 2 < 0; use at most {bound} factors"
        )
    k, extras = choose_n_factors(n_factors, eig, n, random_state=random_state)
    criteria = factor_count_criteria(eig, n, random_state=random_state)
    if k > bound:
        cautions.append(
            Caution(
                "ledermann_bound",
                f"n_factors={n_factors!r} chose {k} factors, above the identification (Ledermann) "
                f"bound {bound} for {c_live} channels; {bound} factors are fitted instead",
            )
        )
        k = bound
    sol = factor_solution(r, k, rotation, rkw, random_state)
    if not sol.ml_converged:
        cautions.append(
            Caution(
                "not_converged",
                f"the maximum-likelihood fit of {k} factors did not reach a point where the projected "
                f"gradient vanishes (largest component {sol.projected_gradient:.2e}); the loadings may "
                "not be the optimum",
                _convergence_warning(),
            )
        )
    if not sol.rotation_converged:
        cautions.append(
            Caution(
                "rotation_not_converged",
                f"the {rotation} rotation did not converge within max_iter={rkw.get('max_iter')}; "
                "raise rotation_kwargs['max_iter']",
                _convergence_warning(),
            )
        )
    heywood = live[sol.heywood]
    if heywood.numel() > 0:
        cautions.append(
            Caution(
                "heywood",
                f"Heywood case: at the likelihood optimum with {k} factors, channels {heywood.tolist()} "
                "have uniqueness at its lower bound: the common factors reproduce them entirely "
                "(communality 1). The optimum lies on the boundary of the parameter space, where the "
                "usual asymptotic theory of maximum-likelihood estimates (standard errors, tests) does "
                "not hold; it is a property of the data, not of the optimiser (see heywood_channels_)",
            )
        )
    need = min_images(c_live, k)
    if n_img < need:
        cautions.append(
            Caution(
                "too_few_images",
                f"the model was fitted on {n_img} images ({n} pixels) for {c_live} channels: the pixels "
                "of one image are strongly dependent, so the effective sample size is closer to the "
                f"number of images; below {need} images the loadings, KMO and factor count are not "
                "reproducible (see captum_elfa.stats.screening.min_images)",
            )
        )
    phi = sol.phi
    met = validity_metrics(r, sol.loadings, sol.uniquenesses, phi=phi)
    adq = adequacy(r, n)
    stability = None
    if halves is not None:
        stability = _stability(halves, live, k, rotation, rkw, sol, random_state, cautions)
    wts = torch.zeros(k, c, dtype=torch.float64)
    wts[:, live] = sol.weights / sd[None, :]
    std = torch.sqrt(torch.clamp(torch.diagonal(comoment) / n, min=0))
    return ELFAResult(
        n_samples=n,
        n_images=n_img,
        n_channels=c,
        mean=mean,
        std=std,
        live_channels=live,
        dead_channels=dead,
        collinear_channels=collinear,
        correlation=r,
        eigenvalues=eig,
        parallel_threshold=extras.get("parallel_threshold"),
        n_factors=int(k),
        n_factors_method=_method_name(n_factors),
        n_factors_criteria=criteria,
        rotation=rotation,
        rotation_kwargs=rkw,
        loadings=_expand(sol.loadings, live, c),
        uniquenesses=_expand(sol.uniquenesses, live, c),
        phi=phi,
        structure=_expand(sol.structure, live, c),
        heywood_channels=heywood,
        converged=sol.converged,
        rotation_converged=sol.rotation_converged,
        projected_gradient=sol.projected_gradient,
        n_iter=sol.n_iter,
        adequacy=Adequacy(
            adq.kmo,
            _expand(adq.kmo_per_channel, live, c),
            adq.bartlett_chi2,
            adq.bartlett_dof,
            adq.bartlett_p,
            adq.log_det,
        ),
        metrics=met.expand(live, c),
        score_weights=wts,
        score_bias=-(wts @ mean),
        min_images=need,
        stability=stability,
        cautions=cautions,
    )


def _stability(
    halves: Tuple[Moments, Moments, int, int],
    live: Tensor,
    k: int,
    rotation: Optional[str],
    rkw: Dict[str, Any],
    full: FactorSolution,
    random_state: Optional[int],
    cautions: List[Caution],
) -> Optional[Stability]:
    ma, mb, na, nb = halves
    full_loadings, full_uniquenesses = full.loadings, full.uniquenesses
    fits = []
    for m in (ma, mb):
        if m.n <= live.numel():
            cautions.append(
                Caution(
                    "stability_skipped",
                    f"split-half stability needs more samples than channels in each half ({m.n} for "
                    f"{live.numel()} channels); pass more images",
                )
            )
            return None
        r_half, _ = _correlation(m.n, m.mean.detach().to(torch.float64).cpu(), m.comoment, live)
        if not torch.isfinite(r_half).all():
            cautions.append(
                Caution(
                    "stability_skipped",
                    "split-half stability skipped: a channel is constant within one half of the images",
                )
            )
            return None
        # the halves only feed Tucker congruences (reported to 3 decimals, judged against 0.85): a
        # KKT tolerance of 1e-5 and a rotation gradient of 1e-6 move a congruence by ~1e-5 at most
        half_rkw = dict(rkw, tol=max(float(rkw.get("tol", 1e-8)), _HALF_ROTATION_TOL)) if "tol" in rkw else rkw
        fits.append(
            factor_solution(
                r_half, k, rotation, half_rkw, random_state, init=full_uniquenesses, tol=_HALF_KKT_TOL
            ).loadings
        )
    st = split_half_stability(full_loadings, fits[0], fits[1], na, nb)
    bad = [j for j, ok in enumerate(st.replicable.tolist()) if not ok]
    if bad:
        cautions.append(
            Caution(
                "unstable_factors",
                f"factors {bad} are not replicable: fitted on two halves of the images their loadings "
                f"have Tucker congruence {[round(float(st.congruence[j]), 3) for j in bad]} < 0.85",
            )
        )
    return st


def _describe_collinear(explained_by: Dict[int, List[int]], collinear: Tensor, limit: int = 8) -> str:
    parts = []
    for j in collinear.tolist()[:limit]:
        by = list(explained_by.get(j, []))
        more = f" and {len(by) - 4} more" if len(by) > 4 else ""
        parts.append(f"{j} ~ {by[:4]}{more}")
    if collinear.numel() > limit:
        parts.append(f"{collinear.numel() - limit} more")
    return "; ".join(parts)


def _convergence_warning() -> type:
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning
