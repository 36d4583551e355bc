"""ELFA: Explainable Layer Factor Analysis of a convolutional layer, as a Captum LayerAttribution."""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from captum.attr import LayerAttribution
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from captum_elfa._capture import Inputs, LayerCapture, check_activation_shape, iter_batches
from captum_elfa._distributed import is_distributed
from captum_elfa._progress import n_batches as _n_batches
from captum_elfa._progress import progress_bar
from captum_elfa._validation import CaptumElfaError, NotFittedError, check_choice
from captum_elfa.stats.adequacy import Adequacy, adequacy
from captum_elfa.stats.factor_model import ROTATIONS, fit_factor_model, score_weights
from captum_elfa.stats.moments import RunningMoments
from captum_elfa.stats.nfactors import NFactorsSpec, choose_n_factors
from captum_elfa.stats.validity import Metrics, validity_metrics

try:  # captum's usage logger (a no-op outside Meta)
    from captum.log import log_usage
except ImportError:  # pragma: no cover

    def log_usage(*_a: Any, **_k: Any) -> Callable:
        return lambda f: f


__all__ = ["LayerFactorAnalysis"]

NORMALIZATIONS = ("max_min", "relu", "max", None)
FORMAT_NAME = "captum_elfa.LayerFactorAnalysis"
FORMAT_VERSION = 1


def _is_dead(mean: Tensor, var: Tensor) -> Tensor:
    """Channels whose variance is zero up to rounding of the streamed sums."""
    return var <= torch.clamp(1e-12 * mean**2, min=1e-30)


class LayerFactorAnalysis(LayerAttribution):
    r"""Explainable Layer Factor Analysis (ELFA) of one layer of a network.

    The layer's output ``(N, C, H, W)`` is read as ``N*H*W`` samples of ``C`` variables (the
    channels). :meth:`fit` streams the channels' mean and co-moment matrix in float64 over any
    number of batches (memory O(C^2)), tests the adequacy of the data for a factor model (KMO,
    Bartlett), chooses the number of factors, fits a maximum-likelihood factor model on the
    correlation matrix, rotates it and computes its validity metrics. :meth:`attribute` returns
    the Essential Feature Attribution Map (EFAM): the factor scores of every pixel, weighted by
    the factors' total absolute loadings.

    Reference: López-González, Gómez-Silva, Besada-Portas, Pajares, *Layer factor analysis in
    convolutional neural networks for explainability*, Applied Soft Computing 150 (2024) 111094.

    Sign convention: a factor's sign is arbitrary in factor analysis; here each factor's loadings
    sum to a positive number, and factors are ordered by the variance they explain.

    Args:
        forward_func (Callable or torch.nn.Module): the model, or any function running it.
        layer (torch.nn.Module): the layer to explain; its output must be ``(N, C, H, W)`` or
                    ``(N, C)`` (a linear layer: ``H = W = 1``).
        device_ids (list[int], optional): kept for Captum compatibility (``DataParallel``).

    Examples::

        >>> lfa = LayerFactorAnalysis(model, model.layer1)
        >>> lfa.fit(loader, n_factors="kaiser", rotation="varimax")
        >>> lfa.n_factors_, lfa.adequacy_.kmo, lfa.metrics_.r2
        >>> efam = lfa.attribute(images)                    # [N, 1, H, W] in [0, 1]
        >>> up = LayerAttribution.interpolate(efam, images.shape[2:])
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids: Optional[List[int]] = None) -> None:
        if not isinstance(layer, nn.Module):
            raise CaptumElfaError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)

    # ------------------------------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        inputs: Inputs,
        n_factors: NFactorsSpec = "kaiser",
        rotation: Optional[str] = "varimax",
        additional_forward_args: Any = None,
        progress: bool = True,
        batch_size: int = 64,
        random_state: Optional[int] = 0,
        distributed: bool = True,
    ) -> LayerFactorAnalysis:
        r"""Stream the layer's activations and fit the factor model.

        With an initialised ``torch.distributed`` process group of several ranks (and
        ``distributed=True``), each rank streams its own ``inputs`` and the ranks' statistics
        (count, mean, co-moments) are combined with the same merge, in rank order: every rank
        ends with the identical model, equal (to rounding) to that of one process fitting all
        ranks' inputs in rank order. ``fit`` is then a collective (every rank must call it); a
        rank may have no batch. Errors are raised on every rank: NaN/Inf activations on any rank
        (named with its rank and batch), ranks with different channel counts, and an error
        raised while a rank streams its batches (that rank raises its own error, the others a
        ``DistributedError``, which is a ``CaptumElfaError``). A rank that dies or hangs leaves
        the others waiting for the process group's timeout.

        Args:
            inputs (Tensor, iterable of Tensors or DataLoader): the images. A Tensor is processed
                        in chunks of ``batch_size``; a DataLoader may yield Tensors or
                        ``(x, y, ...)`` tuples (the first element is the input).
            n_factors (int, str or float): an int in ``[1, live channels - 1]``; ``"kaiser"``
                        (eigenvalues of R at least 1); ``"scree"`` (standard-error scree,
                        Zoski & Jurs); ``"parallel"`` (Horn's parallel analysis, seeded by
                        ``random_state``); or a float in (0, 1), the fraction of variance the
                        leading eigenvalues must reach. Default: ``"kaiser"``.
            rotation (str or None): ``"varimax"``, ``"quartimax"`` or None. Default: varimax.
            additional_forward_args (Any, optional): extra arguments passed to the model after
                        the input, as in Captum.
            progress (bool): show a tqdm progress bar over batches. Default: True.
            batch_size (int): chunk size when ``inputs`` is a single Tensor. Default: 64.
            random_state (int, optional): seed of parallel analysis. Default: 0.
            distributed (bool): combine the statistics of all ranks when a ``torch.distributed``
                        process group is initialised; False fits on this rank's inputs alone.
                        Default: True.

        Returns:
            LayerFactorAnalysis: ``self``, fitted.

        Examples::

            >>> lfa = LayerFactorAnalysis(model, model.layer2).fit(loader, n_factors="parallel")
        """
        check_choice("rotation", rotation, ROTATIONS)
        self._check_n_factors_type(n_factors)
        acc = RunningMoments()
        spatial: dict = {}

        def on_output(act: Tensor, index: int) -> None:
            a = check_activation_shape(act, cap.layer_name)
            if "shape" not in spatial:
                spatial["shape"] = tuple(a.shape[1:])
            elif a.shape[1] != spatial["shape"][0]:
                raise CaptumElfaError(
                    f"batch {index}: layer '{cap.layer_name}' has {a.shape[1]} channels, "
                    f"earlier batches had {spatial['shape'][0]}"
                )
            acc.update(a, index)

        sync = distributed and is_distributed()
        cap = LayerCapture(self.forward_func, self.layer, on_output)
        try:
            with cap:
                n_batches = 0
                for i, batch in enumerate(
                    progress_bar(iter_batches(inputs, batch_size), progress, "ELFA fit", _n_batches(inputs, batch_size))
                ):
                    cap.run(batch, i, additional_forward_args)
                    n_batches += 1
        except Exception:
            if sync:  # join the collective as failed: the other ranks raise instead of waiting
                try:
                    acc.all_reduce(failed=True)
                except Exception:  # pragma: no cover - the original error matters more
                    pass
            raise
        if sync:  # every rank now holds the statistics of all ranks' batches, merged in rank order
            acc.all_reduce()
            n_batches = acc.batches
            if acc.spatial is not None:
                spatial["shape"] = acc.spatial
        if n_batches == 0 or acc.moments is None:
            raise CaptumElfaError(
                "inputs yielded no batch (an empty DataLoader or iterable); pass at least one batch of images"
            )
        bad = acc.first_nonfinite()
        if bad >= 0:
            raise CaptumElfaError(
                f"layer '{cap.layer_name}' produced NaN or Inf activations in batch {bad}"
                f"{'' if acc.nonfinite_rank is None else f' of rank {acc.nonfinite_rank}'}; "
                "check the inputs and the model (every activation must be finite)"
            )
        # the C x C algebra is small: BLAS worker threads spinning against torch's would cost
        # far more than they save (2x idle, 10x+ on a busy 2-core machine)
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit_from_moments(
                acc.moments.n, acc.moments.mean, acc.moments.comoment, n_factors, rotation, random_state
            )
        self.activation_shape_ = spatial["shape"]
        self.layer_name_ = cap.layer_name
        return self

    @staticmethod
    def _check_n_factors_type(n_factors: Any) -> None:
        if isinstance(n_factors, bool) or not isinstance(n_factors, (int, float, str)):
            raise CaptumElfaError(
                f"n_factors={n_factors!r} is not valid; use an int, 'kaiser', 'scree', 'parallel' or a float in (0, 1)"
            )
        if isinstance(n_factors, str) and n_factors not in ("kaiser", "scree", "parallel"):
            raise CaptumElfaError(
                f"n_factors={n_factors!r} is not valid; use an int, 'kaiser', 'scree', 'parallel' or a float in (0, 1)"
            )
        if isinstance(n_factors, int) and n_factors < 1:
            raise CaptumElfaError(
                f"n_factors={n_factors} is not valid; it must be at least 1 (and below the number of live channels)"
            )

    def _fit_from_moments(
        self,
        n: int,
        mean: Tensor,
        comoment: Tensor,
        n_factors: NFactorsSpec,
        rotation: Optional[str],
        random_state: Optional[int],
    ) -> None:
        mean = mean.detach().to(torch.float64).cpu()
        cov = comoment.detach().to(torch.float64).cpu() / n
        var = torch.diagonal(cov).clone()
        c = mean.numel()
        dead = _is_dead(mean, var)
        live = torch.nonzero(~dead).flatten()
        c_live = live.numel()
        if n < 2:
            raise CaptumElfaError(
                f"{n} samples (images x pixels) for {c} channels: a factor model needs more "
                f"samples than channels; pass more images (at least {c + 1} samples)"
            )
        if c_live == 0:
            raise CaptumElfaError(
                f"all {c} channels of the layer are dead (constant over every pixel of every "
                "image); choose another layer or other images"
            )
        if c_live < 3:
            raise CaptumElfaError(
                f"only {c_live} of {c} channels vary over the images; a factor model needs at least 3 live channels"
            )
        if n <= c_live:
            raise CaptumElfaError(
                f"{n} samples (images x pixels) for {c_live} live channels: a factor model needs "
                f"more samples than channels; pass more images (at least {c_live + 1} samples)"
            )
        std = torch.sqrt(var)
        sub = cov[live][:, live]
        sd = std[live]
        r = sub / torch.outer(sd, sd)
        r = 0.5 * (r + r.T)
        r.fill_diagonal_(1.0)

        eig = torch.linalg.eigvalsh(r).flip(0)
        k, extras = choose_n_factors(n_factors, eig, n, random_state=random_state)
        model = fit_factor_model(r, k, rotation=rotation)
        if not model.converged:
            warnings.warn(
                f"the factor model with {k} factors did not fully converge; the loadings may be "
                "imprecise (try fewer factors)",
                RuntimeWarning,
                stacklevel=3,
            )
        heywood = live[model.uniquenesses <= 1e-6]
        if heywood.numel() > 0:
            warnings.warn(
                f"Heywood case: channels {heywood.tolist()} have uniqueness ~0 with {k} factors "
                "(the model explains them entirely); this often means too many factors",
                RuntimeWarning,
                stacklevel=3,
            )
        met = validity_metrics(r, model.loadings, model.uniquenesses)
        adq = adequacy(r, n)

        def expand(t: Tensor, fill: float = 0.0) -> Tensor:
            out = torch.full((c,) + tuple(t.shape[1:]), fill, dtype=torch.float64)
            out[live] = t
            return out

        self.n_samples_ = int(n)
        self.n_channels_ = int(c)
        self.mean_ = mean
        self.std_ = std
        self.live_channels_ = live
        self.dead_channels_ = torch.nonzero(dead).flatten()
        self.correlation_ = r
        self.eigenvalues_ = eig
        self.parallel_threshold_ = extras.get("parallel_threshold")
        self.n_factors_ = int(k)
        self.n_factors_method_ = (
            n_factors if isinstance(n_factors, str) else ("variance" if isinstance(n_factors, float) else "fixed")
        )
        self.rotation_ = rotation
        self.loadings_ = expand(model.loadings)
        self.uniquenesses_ = expand(model.uniquenesses)
        self.converged_ = model.converged
        self.heywood_channels_ = heywood
        self.n_iter_ = model.n_iter
        self.adequacy_ = Adequacy(
            adq.kmo, expand(adq.kmo_per_channel), adq.bartlett_chi2, adq.bartlett_dof, adq.bartlett_p, adq.log_det
        )
        self.metrics_ = Metrics(
            communalities=expand(met.communalities),
            uniquenesses=expand(met.uniquenesses),
            gamma2=expand(met.gamma2),
            gamma2_p20=met.gamma2_p20,
            d1=met.d1,
            d_greater=met.d_greater,
            res=met.res,
            res_max=met.res_max,
            res_min=met.res_min,
            r2=met.r2,
            factor_variance=met.factor_variance,
            proportional_variance=met.proportional_variance,
            cumulative_variance=met.cumulative_variance,
            total_variance_explained=met.total_variance_explained,
            loglike=met.loglike,
        )
        # factor-score weights on raw activations: f = B (a - mean) / std, dead channels weigh 0
        b = score_weights(model.loadings, model.uniquenesses)  # [k, c_live]
        wts = torch.zeros(k, c, dtype=torch.float64)
        wts[:, live] = b / sd[None, :]
        self.score_weights_ = wts
        self.score_bias_ = -(wts @ mean)

    # ------------------------------------------------------------------------------------------
    # attributions
    # ------------------------------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "loadings_"):
            raise NotFittedError(
                f"LayerFactorAnalysis.{what} needs a fitted model; call fit(inputs) first "
                "(or LayerFactorAnalysis.load(path, model, layer))"
            )

    def _contract(
        self,
        inputs: Union[Tensor, Inputs],
        weights: Tensor,
        bias: Tensor,
        dtype: torch.dtype,
        additional_forward_args: Any,
        batch_size: int,
    ) -> Tensor:
        """``weights @ activation + bias`` over channels at every pixel: ``[N, rows, H, W]``."""
        chunks: list[Tensor] = []

        def on_output(act: Tensor, index: int) -> None:
            a = check_activation_shape(act, cap.layer_name)
            if a.shape[1] != self.n_channels_:
                raise CaptumElfaError(
                    f"layer '{cap.layer_name}' has {a.shape[1]} channels but the model was fitted "
                    f"on {self.n_channels_}; use the layer it was fitted on"
                )
            if not torch.isfinite(a).all():
                raise CaptumElfaError(f"layer '{cap.layer_name}' produced NaN or Inf activations in batch {index}")
            n, c, h, w = a.shape
            wt = weights.to(device=a.device, dtype=dtype)
            out = (
                torch.matmul(wt, a.detach().reshape(n, c, h * w).to(dtype))
                + bias.to(device=a.device, dtype=dtype)[:, None]
            )
            chunks.append(out.reshape(n, -1, h, w))

        cap = LayerCapture(self.forward_func, self.layer, on_output)
        with cap:
            for i, batch in enumerate(iter_batches(inputs, batch_size)):
                cap.run(batch, i, additional_forward_args)
        if not chunks:
            raise CaptumElfaError("inputs yielded no batch; pass at least one image")
        sizes = sorted({tuple(c.shape[2:]) for c in chunks})
        if len(sizes) > 1:
            raise CaptumElfaError(
                f"the batches give maps of different sizes {sizes}; maps are returned as one "
                "Tensor, so pass images of one size (or call attribute once per size)"
            )
        return torch.cat(chunks, 0)

    def factor_scores(
        self, inputs: Union[Tensor, Inputs], additional_forward_args: Any = None, batch_size: int = 64
    ) -> Tensor:
        r"""Factor scores of every pixel: ``f = (I + W^T Psi^-1 W)^-1 W^T Psi^-1 x``.

        Args:
            inputs (Tensor, iterable or DataLoader): the images.
            additional_forward_args (Any, optional): extra model arguments.
            batch_size (int): chunk size for a Tensor input. Default: 64.

        Returns:
            Tensor: ``[N, k, H, W]`` float64 factor scores (the latent factors of the model,
            as scikit-learn's ``FactorAnalysis.transform`` of the standardised activations).
        """
        self._check_fitted("factor_scores")
        return self._contract(
            inputs, self.score_weights_, self.score_bias_, torch.float64, additional_forward_args, batch_size
        )

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Inputs],
        factors: Union[None, str, int, Sequence[int]] = None,
        normalize: Optional[str] = "max_min",
        additional_forward_args: Any = None,
        batch_size: int = 64,
    ) -> Tensor:
        r"""Essential Feature Attribution Maps (EFAM) of the fitted layer.

        ``EFAM = sum_k a_k f_k`` with ``a_k = sum_j |W_jk|``, normalised per image.

        Args:
            inputs (Tensor, iterable or DataLoader): the images to explain.
            factors (None, "all", int or list of int): None gives the combined EFAM
                        ``[N, 1, H, W]``; "all" or a list of factor indices gives per-factor
                        maps ``[N, k', H, W]`` (each factor's scores, normalised per image).
            normalize (str or None): per-image normalisation: ``"max_min"`` (to [0, 1],
                        default), ``"relu"`` (``max(m, 0) / max``), ``"max"``
                        (``m / max|m|``) or None (raw). A constant map becomes zeros.
            additional_forward_args (Any, optional): extra model arguments.
            batch_size (int): chunk size for a Tensor input. Default: 64.

        Returns:
            Tensor: the maps at the layer's resolution, float32 on the model's device. Use
            ``LayerAttribution.interpolate(maps, inputs.shape[2:])`` to upsample them.

        Examples::

            >>> efam = lfa.attribute(images)                       # [N, 1, H, W]
            >>> per_factor = lfa.attribute(images, factors="all")  # [N, k, H, W]
        """
        check_choice("normalize", normalize, NORMALIZATIONS)
        self._check_fitted("attribute")
        idx = self._factor_indices(factors)
        if idx is None:
            # EFAM = sum_k a_k f_k is itself one linear map of the channels: a single contraction
            a = self.loadings_.abs().sum(0)
            weights, bias = (a @ self.score_weights_)[None], (a @ self.score_bias_)[None]
        else:
            weights, bias = self.score_weights_[idx], self.score_bias_[idx]
        maps = self._contract(inputs, weights, bias, torch.float32, additional_forward_args, batch_size)
        return _normalize(maps, normalize)

    def _factor_indices(self, factors: Union[None, str, int, Sequence[int]]) -> Optional[list]:
        k = self.n_factors_
        if factors is None:
            return None
        if isinstance(factors, str):
            if factors != "all":
                raise CaptumElfaError(
                    f"factors={factors!r} is not valid; use None, 'all', an int or a list of ints in [0, {k - 1}]"
                )
            return list(range(k))
        items = [factors] if isinstance(factors, int) else list(factors)
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < k:
                raise CaptumElfaError(f"factor index {i!r} is not valid; the model has {k} factors (0 to {k - 1})")
        if not items:
            raise CaptumElfaError("factors is an empty list; use None, 'all' or factor indices")
        return items

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """All fitted results as a JSON-serialisable dict."""
        self._check_fitted("report")
        return {
            "layer": getattr(self, "layer_name_", type(self.layer).__name__),
            "n_samples": self.n_samples_,
            "n_channels": self.n_channels_,
            "activation_shape": list(getattr(self, "activation_shape_", ())),
            "dead_channels": self.dead_channels_.tolist(),
            "n_factors": self.n_factors_,
            "n_factors_method": self.n_factors_method_,
            "rotation": self.rotation_,
            "converged": self.converged_,
            "eigenvalues": self.eigenvalues_.tolist(),
            "adequacy": self.adequacy_.to_dict(),
            "metrics": self.metrics_.to_dict(),
            "loadings": self.loadings_.tolist(),
            "uniquenesses": self.uniquenesses_.tolist(),
        }

    def summary(self) -> str:
        """A readable multi-line summary of the fitted model."""
        self._check_fitted("summary")
        a, m = self.adequacy_, self.metrics_
        lines = [
            f"LayerFactorAnalysis of '{getattr(self, 'layer_name_', type(self.layer).__name__)}': "
            f"{self.n_channels_} channels ({len(self.dead_channels_)} dead), {self.n_samples_} samples",
            f"  adequacy: KMO = {a.kmo:.3f}, Bartlett chi2 = {a.bartlett_chi2:.4g} (dof {a.bartlett_dof}, p = {a.bartlett_p:.3g})",
            f"  factors: {self.n_factors_} ({self.n_factors_method_}), rotation = {self.rotation_}",
            f"  fit: D1 = {m.d1:.3f}, D> = {m.d_greater:.3f}, Res = {m.res:.4f} "
            f"[{m.res_min:.3f}, {m.res_max:.3f}], gamma2 p20 = {m.gamma2_p20:.3f}, R2 = {m.r2:.4f}",
            f"  variance explained: {m.total_variance_explained:.1%}; log-likelihood {m.loglike:.4f} per sample",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = type(self.layer).__name__
        if not hasattr(self, "loadings_"):
            return f"LayerFactorAnalysis(layer={name}, not fitted)"
        return (
            f"LayerFactorAnalysis(layer={getattr(self, 'layer_name_', name)}, n_factors={self.n_factors_}, "
            f"channels={self.n_channels_}, dead={len(self.dead_channels_)}, kmo={self.adequacy_.kmo:.3f}, "
            f"r2={self.metrics_.r2:.3f})"
        )

    # ------------------------------------------------------------------------------------------
    # persistence (no pickle: torch.load(weights_only=True))
    # ------------------------------------------------------------------------------------------
    _STATE_TENSORS = (
        "mean_",
        "std_",
        "live_channels_",
        "dead_channels_",
        "correlation_",
        "eigenvalues_",
        "loadings_",
        "uniquenesses_",
        "score_weights_",
        "score_bias_",
        "heywood_channels_",
    )

    def save(self, path: str) -> None:
        """Save the fitted model to ``path`` (a dict of tensors and plain values; no pickled code).

        Args:
            path (str or os.PathLike): file to write.
        """
        self._check_fitted("save")
        state: dict = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_samples": self.n_samples_,
            "n_channels": self.n_channels_,
            "n_factors": self.n_factors_,
            "n_factors_method": str(self.n_factors_method_),
            "rotation": self.rotation_,
            "converged": self.converged_,
            "n_iter": self.n_iter_,
            "layer_name": getattr(self, "layer_name_", ""),
            "activation_shape": list(getattr(self, "activation_shape_", ())),
            "parallel_threshold": self.parallel_threshold_,
            "adequacy": {k: (v if not isinstance(v, Tensor) else v) for k, v in vars(self.adequacy_).items()},
            "metrics": dict(vars(self.metrics_)),
        }
        for name in self._STATE_TENSORS:
            state[name] = getattr(self, name)
        torch.save(state, path)

    @classmethod
    def load(cls, path: str, forward_func: Callable, layer: nn.Module) -> LayerFactorAnalysis:
        """Load a model saved by :meth:`save` and attach it to ``forward_func`` and ``layer``.

        The file is read with ``torch.load(weights_only=True)``: it never executes pickled code.

        Args:
            path (str or os.PathLike): file written by :meth:`save`.
            forward_func (Callable or nn.Module): the model.
            layer (nn.Module): the layer the model was fitted on.

        Returns:
            LayerFactorAnalysis: the fitted instance.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated, not a torch file, or containing pickled objects
            raise CaptumElfaError(
                f"{path!s} is not a readable captum_elfa LayerFactorAnalysis file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
            raise CaptumElfaError(
                f"{path!s} is not a captum_elfa LayerFactorAnalysis file (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
            )
        version = state.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CaptumElfaError(
                f"{path!s} has format version {version!r}; this captum_elfa reads versions up to {FORMAT_VERSION}: upgrade captum_elfa"
            )
        obj = cls(forward_func, layer)
        for name in cls._STATE_TENSORS:
            setattr(obj, name, state[name])
        obj.n_samples_ = state["n_samples"]
        obj.n_channels_ = state["n_channels"]
        obj.n_factors_ = state["n_factors"]
        obj.n_factors_method_ = state["n_factors_method"]
        obj.rotation_ = state["rotation"]
        obj.converged_ = state["converged"]
        obj.n_iter_ = state["n_iter"]
        obj.layer_name_ = state["layer_name"]
        obj.activation_shape_ = tuple(state["activation_shape"])
        obj.parallel_threshold_ = state["parallel_threshold"]
        obj.adequacy_ = Adequacy(**state["adequacy"])
        obj.metrics_ = Metrics(**state["metrics"])
        return obj


def _normalize(maps: Tensor, method: Optional[str]) -> Tensor:
    """Per-image, per-map normalisation; constant maps become zeros, never NaN."""
    if method is None:
        return maps
    flat = maps.flatten(2)
    mx = flat.max(2).values[..., None, None]
    mn = flat.min(2).values[..., None, None]
    if method == "max_min":
        rng = mx - mn
        return torch.where(
            rng > 0, (maps - mn) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(maps)
        )
    if method == "relu":
        return torch.where(
            mx > 0, torch.clamp(maps, min=0) / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(maps)
        )
    amax = flat.abs().max(2).values[..., None, None]
    return torch.where(amax > 0, maps / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(maps))
