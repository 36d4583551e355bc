"""PCACE preprocessing: standardise every pixel position of a channel over the images and project
on the leading principal axes (scikit-learn's ``StandardScaler`` + ``PCA``, with its sign
convention), batched over channels, in float64."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from captum_elfa.stats import _numba

#: loadings whose magnitudes agree to this relative tolerance count as tied for PC1's sign
SIGN_TIE = 1.0e-9
#: a component whose eigenvalue is at most this fraction of the trace is set to exactly 0
DEGENERATE = 1.0e-12


# ---------------------------------------------------------------------------------------------
# PCACE preprocessing
# ---------------------------------------------------------------------------------------------
def check_n_components(n_components: int, n: int, p: int) -> None:
    """Raise a ValueError unless ``1 <= n_components <= min(n, p)``."""
    if not 1 <= n_components <= min(n, p):
        raise ValueError(f"n_components={n_components} must be between 1 and min(N, P)={min(n, p)}")


def standardized_components(acts: Tensor, n_components: int) -> tuple[Tensor, Tensor]:
    """Standardise each pixel position over the images, then project on the leading principal axes.

    See :func:`standardized_spectrum`, which also returns the leading eigenvalues.

    Returns:
        (components, constant): ``[C, n_components, N]`` float64 scores and the ``[C]`` bool mask
        of constant channels.
    """
    scores, constant, _, _ = standardized_spectrum(acts, n_components)
    return scores, constant


def standardized_spectrum(
    acts: Tensor, n_components: int, n_eigenvalues: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardise each pixel position over the images, then project on the leading principal axes.

    Per channel, as scikit-learn's ``StandardScaler().fit_transform`` followed by
    ``PCA(n_components).fit_transform``: a column whose variance is zero up to rounding
    (scikit-learn's rule) is centred but not scaled, and each principal axis is signed so that its
    largest-magnitude loading is positive (``svd_flip`` with ``u_based_decision=False``; loadings
    whose magnitudes agree to 1e-9 count as tied and the first one decides, where scikit-learn lets
    rounding decide). A component whose variance is zero up to rounding is set to exactly 0.

    Args:
        acts (Tensor): ``[C, N, P]`` activations of ``C`` channels for ``N`` images and ``P``
                    pixel positions (any float dtype; computed in float64).
        n_components (int): number of components, at most ``min(N, P)``.
        n_eigenvalues (int): leading eigenvalues to return, at least ``n_components`` (smaller
                    values count as ``n_components``); those beyond ``min(N, P)`` are 0.

    Returns:
        (components, constant, eigenvalues, total): ``[C, n_components, N]`` float64
        principal-component scores, a ``[C]`` bool mask of channels whose every pixel position is
        constant over the images (their components are 0), ``[C, e]`` the leading eigenvalues of
        the standardised maps' Gram matrix, largest first, and ``[C]`` its trace (eigenvalues
        are ``N`` times those of the covariance; ratios are what matter).
    """
    c, n, p = acts.shape
    check_n_components(n_components, n, p)
    return _spectrum(acts.to(torch.float64, copy=True), n_components, n_eigenvalues)


def _spectrum(
    z: Tensor, n_components: int, n_eigenvalues: int, work: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`standardized_spectrum` of the float64 maps ``z`` ``[C, N, P]``, which it centres
    (and may scale) in place; ``work``, a float64 tensor of ``z``'s shape, holds the products of
    the projection (so that blocks of channels reuse their memory)."""
    c, n, p = z.shape
    mean = z.mean(1, keepdim=True)
    # a NaN or Inf activation makes its column's mean non-finite (float64 sums of float32 values
    # cannot overflow), so the means are the finiteness check
    finite = torch.isfinite(mean).all(-1).squeeze(-1)
    if not bool(finite.all()):
        raise NonFiniteError((~finite).nonzero().squeeze(-1))
    z.sub_(mean)
    centred_gram = z.transpose(1, 2) @ z if p <= n else None  # [C, P, P]
    if centred_gram is not None:  # the variances are its diagonal over N
        var = torch.diagonal(centred_gram, dim1=-2, dim2=-1).div(n).unsqueeze(1)  # [C, 1, P]
    else:
        var = (z * z).mean(1, keepdim=True)
    eps = torch.finfo(torch.float64).eps
    constant_col = var <= n * eps * var + (n * mean * eps) ** 2
    # 1 / scale, with constant columns (scikit-learn: centred, scale 1) set to exactly 0
    inv_scale = (1.0 / var.sqrt().masked_fill_(constant_col, 1.0)).masked_fill_(constant_col, 0.0)
    constant = constant_col.all(-1).squeeze(-1)
    n_eig = min(max(n_components, n_eigenvalues), min(n, p))
    if centred_gram is not None:
        # covariance of the standardised columns, scaled after the product of the centred ones
        gram = centred_gram.mul_(inv_scale.transpose(1, 2)).mul_(inv_scale)  # [C, P, P]
        evals, axes = _leading_eigenpairs(gram, n_eig, n_components)  # axes [C, P, k]
    else:
        z.mul_(inv_scale)
        gram = z @ z.transpose(1, 2)  # [C, N, N]
        evals, u = _leading_eigenpairs(gram, n_eig, n_components)
        axes = z.transpose(1, 2) @ u  # [C, P, k]
        axes = axes / axes.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        inv_scale = torch.ones_like(inv_scale)
    total = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1, keepdim=True)
    # sign: largest |loading| positive, the first of those equal up to rounding on ties (with two
    # live pixels, the loadings are always +-1/sqrt(2): rounding noise must not pick the sign)
    mag = axes.abs()
    near_max = mag >= mag.amax(1, keepdim=True) * (1.0 - SIGN_TIE)
    big = near_max.to(torch.uint8).argmax(1, keepdim=True)
    signs = torch.sign(axes.gather(1, big))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    # scores of the standardised data: elementwise product and sum over pixels, so that identical
    # maps (all-zero ReLU maps) give exactly identical scores, i.e. ties
    weights = axes * inv_scale.transpose(1, 2)  # [C, P, k]
    scores = torch.stack(
        [torch.mul(z, weights[..., j].unsqueeze(1).contiguous(), out=work).sum(-1) for j in range(n_components)], 1
    )
    degenerate = evals[:, :n_components] <= DEGENERATE * total.clamp_min(0)
    scores = scores.masked_fill(degenerate.unsqueeze(-1) | constant.view(c, 1, 1), 0.0)
    want = max(n_components, n_eigenvalues)
    if want > n_eig:
        evals = torch.cat([evals, evals.new_zeros(c, want - n_eig)], 1)
    return scores, constant, evals.clamp_min(0.0), total.squeeze(-1)


class NonFiniteError(ValueError):
    """Activations with NaN or Inf values; ``channels`` holds the (block-relative) channels."""

    def __init__(self, channels: Tensor) -> None:
        super().__init__(f"NaN or Inf activations in channels {channels[:10].tolist()}")
        self.channels = channels


def _leading_eigenpairs(mats: Tensor, k: int, vectors: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest eigenvalues ``[B, k]`` and the ``vectors`` (default ``k``, at most ``k``)
    leading eigenvectors ``[B, d, vectors]`` (largest first) of a batch of symmetric matrices
    ``[B, d, d]``.

    On CPU, LAPACK's ``dsyevr`` computes just the ``k`` wanted pairs of each matrix; a loop over
    the batch avoids ``torch.linalg.eigh``'s batched CPU path, which nests OpenMP regions and can
    be orders of magnitude slower on a busy machine. With numba the loop is compiled and runs in
    blocks side by side on threads (:mod:`captum_elfa.stats._eigen_kernel`, the same LAPACK call).
    Elsewhere, ``torch.linalg.eigh``.
    """
    b, d, _ = mats.shape
    vectors = k if vectors is None else vectors
    if mats.device.type != "cpu":
        evals, evecs = torch.linalg.eigh(mats)
        return evals[..., -k:].flip(-1), evecs[..., -k:].flip(-1)[..., :vectors]
    if _numba.load():
        from captum_elfa.stats import _eigen_kernel

        w, v, info = _eigen_kernel.leading_eigenpairs(mats.detach().numpy(), k, torch.get_num_threads(), vectors)
        if bool((info != 0).any()):  # pragma: no cover - LAPACK failure
            bad = int(np.flatnonzero(info)[0])
            raise RuntimeError(f"LAPACK dsyevr failed with info={int(info[bad])} on matrix {bad}")
        return torch.from_numpy(w), torch.from_numpy(v)
    from scipy.linalg import lapack

    arr = mats.detach().to(torch.float64).numpy()
    evals = torch.empty(b, k, dtype=torch.float64)
    evecs = torch.empty(b, d, k, dtype=torch.float64)
    for i in range(b):
        w, v, _, _, info = lapack.dsyevr(arr[i], compute_v=1, range="I", il=d - k + 1, iu=d)
        if info != 0:  # pragma: no cover - LAPACK failure
            raise RuntimeError(f"LAPACK dsyevr failed with info={info} on matrix {i}")
        evals[i] = torch.from_numpy(w[:k][::-1].copy())
        evecs[i] = torch.from_numpy(v[:, :k][:, ::-1].copy())
    return evals, evecs[..., :vectors]
