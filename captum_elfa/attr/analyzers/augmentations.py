"""Augmentations: NoiseAugmentation (and SmoothGrad), InterpolationAugmentation."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution, NoiseTunnel
from captum.log import log_usage
from torch import Tensor

from captum_elfa._captum_compat import (
    SUPPORTED_METHODS,
    DistributionNoiseTunnel,
    approximation_parameters,
    expand_additional_forward_args,
    expand_target,
)
from captum_elfa._validation import CaptumElfaError, check_choice
from captum_elfa.attr.analyzers._checks import (
    Baseline,
    Distribution,
    _baseline_rows,
    _check_baseline,
    _check_batch_size,
    _check_model,
    _check_n,
    _check_std,
    _validate_baseline_shape,
)
from captum_elfa.attr.analyzers.base import Analyzer
from captum_elfa.attr.analyzers.captum_adapter import as_analyzer
from captum_elfa.attr.analyzers.gradient import Gradient

__all__ = ["NoiseAugmentation", "SmoothGrad", "InterpolationAugmentation", "INTERPOLATION_METHODS"]

#: Integral approximations of :class:`InterpolationAugmentation`: Captum's, plus ExplainableAI.jl's.
INTERPOLATION_METHODS: Tuple[str, ...] = tuple(SUPPORTED_METHODS) + ("linspace",)


class _AnalyzerAttribution(GradientAttribution):
    """An analyzer seen by Captum's ``NoiseTunnel`` as a gradient attribution.

    ``NoiseTunnel`` repeats each sample ``k`` times (``repeat_interleave``) and expands the
    target and additional forward arguments itself; the rows are expanded the same way here.
    """

    def __init__(self, analyzer: Analyzer, rows: Tensor) -> None:
        GradientAttribution.__init__(self, analyzer.model)
        self.analyzer = analyzer
        self.rows = rows

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor] = None,
        additional_forward_args: Optional[Tuple[Any, ...]] = None,
    ) -> Tensor:
        k = inputs.shape[0] // self.rows.shape[0]
        rows = self.rows.repeat_interleave(k)
        return self.analyzer._attribute(inputs, target, additional_forward_args, rows, None)


def _sample_noise(distribution: Distribution, shape: torch.Size, like: Tensor) -> Tensor:
    if isinstance(distribution, torch.distributions.Distribution):
        dshape = tuple(distribution.batch_shape + distribution.event_shape)
        if dshape == ():
            noise = distribution.sample(shape)
        elif dshape == tuple(shape[1:]):
            noise = distribution.sample(shape[:1])
        else:
            raise CaptumElfaError(
                f"NoiseAugmentation: the distribution has shape {dshape}; use a scalar "
                f"distribution or one of the sample shape {tuple(shape[1:])}"
            )
    else:
        noise = distribution(shape)
        if not isinstance(noise, Tensor):
            raise CaptumElfaError(
                f"NoiseAugmentation: the noise callable returned a {type(noise).__name__}; it "
                f"must return a Tensor of the shape it is given, here {tuple(shape)}"
            )
    if tuple(noise.shape) != tuple(shape):
        raise CaptumElfaError(f"NoiseAugmentation: the noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise.to(device=like.device, dtype=like.dtype)


class NoiseAugmentation(Analyzer):
    r"""Average an analyzer over ``n`` noisy copies of each input (Captum ``NoiseTunnel``,
    ``nt_type="smoothgrad"``), as ExplainableAI.jl's ``NoiseAugmentation``. The heatmap preset
    is the wrapped analyzer's.

    Args:
        analyzer (Analyzer or captum.attr.Attribution): the analyzer to smooth.
        n (int): noise samples per input (Captum's ``nt_samples``). Default: 50.
        std_or_distribution (float, Distribution or Callable): the additive noise. A number is
                    the standard deviation of zero-mean Gaussian noise (Captum's ``stdevs``,
                    identical numbers to ``NoiseTunnel``). A ``torch.distributions.Distribution``
                    is sampled elementwise: it must be scalar (``batch_shape`` and
                    ``event_shape`` empty, e.g. ``Uniform(-0.1, 0.1)``) or have the shape of one
                    sample. A callable receives the ``torch.Size`` of the repeated batch
                    ``(N * n, ...)`` and returns noise of that shape, e.g.
                    ``lambda s: 0.1 * torch.randn(s)``. Default: 1.0.
        batch_size (int, optional): noise samples processed together (Captum's
                    ``nt_samples_batch_size``). Default: None (all ``n`` at once).

    Examples::

        >>> expl = analyze(x, NoiseAugmentation(InputTimesGradient(model), 20, 0.1))
        >>> from torch.distributions import Laplace
        >>> expl = analyze(x, NoiseAugmentation(Gradient(model), 20, Laplace(0.0, 0.1)))
    """

    def __init__(
        self,
        analyzer: Any,
        n: int = 50,
        std_or_distribution: Union[float, Distribution] = 1.0,
        batch_size: Optional[int] = None,
    ) -> None:
        owner = type(self).__name__
        self.analyzer = as_analyzer(analyzer)
        self.n = _check_n(n, owner)
        self.std: Optional[float] = None
        self.distribution: Optional[Distribution] = None
        if isinstance(std_or_distribution, torch.distributions.Distribution) or (
            callable(std_or_distribution) and not isinstance(std_or_distribution, numbers.Real)
        ):
            self.distribution = std_or_distribution
        else:
            if isinstance(std_or_distribution, Tensor) and std_or_distribution.numel() == 1:
                std_or_distribution = std_or_distribution.item()
            self.std = _check_std(std_or_distribution, owner)
        self.batch_size = _check_batch_size(batch_size, owner)
        self.model = self.analyzer.model
        self.name = f"NoiseAugmentation({self.analyzer.name})"
        self.preset = self.analyzer.preset

    def _validate(self, inputs: Tensor) -> None:
        self.analyzer._validate(inputs)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        adapter = _AnalyzerAttribution(self.analyzer, rows)
        if self.distribution is None:
            tunnel: NoiseTunnel = NoiseTunnel(adapter)
            stdevs = self.std
        else:
            dist = self.distribution
            tunnel = DistributionNoiseTunnel(adapter, lambda shape, like: _sample_noise(dist, shape, like))
            stdevs = 0.0
        return tunnel.attribute(
            inputs.detach(),
            nt_type="smoothgrad",
            nt_samples=self.n,
            nt_samples_batch_size=self.batch_size,
            stdevs=stdevs,
            target=target,
            additional_forward_args=additional_forward_args,
        )

    def __repr__(self) -> str:
        noise = f"std={self.std}" if self.distribution is None else f"distribution={self.distribution!r}"
        return f"{type(self).__name__}({self.analyzer!r}, n={self.n}, {noise})"


class SmoothGrad(NoiseAugmentation):
    r"""SmoothGrad: the signed gradient averaged over noisy inputs,
    ``NoiseAugmentation(Gradient(model), n, std)`` = Captum ``NoiseTunnel(Saliency)`` with
    ``nt_type="smoothgrad"`` and ``abs=False``. Heatmap preset ``"sensitivity"``.

    Args:
        model (nn.Module or Callable): the model (its forward function).
        n (int): noise samples per input. Default: 50.
        std (float, Distribution or Callable): the noise, as ``std_or_distribution`` of
                    :class:`NoiseAugmentation`. Default: 1.0.
        batch_size (int, optional): Captum's ``nt_samples_batch_size``. Default: None.

    Examples::

        >>> expl = analyze(x, SmoothGrad(model, n=50, std=0.1))
    """

    def __init__(
        self,
        model: Callable,
        n: int = 50,
        std: Union[float, Distribution] = 1.0,
        batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(Gradient(_check_model(model, "SmoothGrad")), n, std, batch_size)
        self.name = "SmoothGrad"

    def __repr__(self) -> str:
        noise = f"std={self.std}" if self.distribution is None else f"distribution={self.distribution!r}"
        return f"SmoothGrad(n={self.n}, {noise})"


def _interpolation_weights(method: str, n: int) -> Tuple[List[float], List[float]]:
    if method == "linspace":
        return [1.0 / n] * n, [i / (n - 1) for i in range(n)]
    step_sizes_func, alphas_func = approximation_parameters(method)
    return list(step_sizes_func(n)), list(alphas_func(n))


class InterpolationAugmentation(Analyzer):
    r"""Average an analyzer along the straight path from a baseline to the input and multiply
    by ``(input - baseline)``, ExplainableAI.jl's ``InterpolationAugmentation``:

    .. math::
        (x - x_0) \odot \sum_i w_i \, A(x_0 + \alpha_i (x - x_0))

    With ``Gradient`` it is integrated gradients: for any ``method`` of Captum's it gives the
    numbers of Captum ``IntegratedGradients(n_steps=n, method=method)``. The weights
    ``w_i`` and points ``alpha_i`` are Captum's approximation of the integral (Riemann rules
    average equally weighted points). ``method="linspace"`` is ExplainableAI.jl's exact
    definition: the plain mean over ``alpha_i = (i - 1) / (n - 1)``, ``i = 1..n`` (``n >= 2``).
    Heatmap preset ``"attribution"``.

    Args:
        analyzer (Analyzer or captum.attr.Attribution): the analyzer to integrate; its ``val``
                    must broadcast against the inputs (input-shaped, or ``[N, 1, H, W]``).
        n (int): points on the path. Default: 50.
        baseline (None, float or Tensor): the reference ``x_0``; None is zeros. A Tensor may
                    have the shape of one sample, ``(1, ...)`` or ``(N, ...)``. Default: None.
        method (str): ``"riemann_middle"`` (default), ``"riemann_left"``, ``"riemann_right"``,
                    ``"riemann_trapezoid"``, ``"gausslegendre"`` or ``"linspace"``.
        batch_size (int, optional): at most this many interpolated samples per call of the
                    analyzer (whole path steps; at least one step). Default: None (all).

    Examples::

        >>> ig = InterpolationAugmentation(Gradient(model), 50, method="riemann_right")
        >>> expl = analyze(x, ig)      # == Captum IntegratedGradients(method="riemann_right")
    """

    preset = "attribution"

    def __init__(
        self,
        analyzer: Any,
        n: int = 50,
        baseline: Baseline = None,
        method: str = "riemann_middle",
        batch_size: Optional[int] = None,
    ) -> None:
        self.analyzer = as_analyzer(analyzer)
        self.method = check_choice("method", method, INTERPOLATION_METHODS)
        self.n = _check_n(n, "InterpolationAugmentation", minimum=2 if method == "linspace" else 1)
        self.baseline = _check_baseline(baseline, "InterpolationAugmentation")
        self.batch_size = _check_batch_size(batch_size, "InterpolationAugmentation")
        self.model = self.analyzer.model
        self.name = f"InterpolationAugmentation({self.analyzer.name})"

    def _validate(self, inputs: Tensor) -> None:
        _validate_baseline_shape(self.baseline, inputs, "InterpolationAugmentation")
        self.analyzer._validate(inputs)

    def _attribute(
        self,
        inputs: Tensor,
        target: Optional[Tensor],
        additional_forward_args: Optional[Tuple[Any, ...]],
        rows: Tensor,
        extras: Optional[Dict[str, Any]],
    ) -> Tensor:
        x = inputs.detach()
        n_samples = x.shape[0]
        x0 = _baseline_rows(self.baseline, x, rows)
        step_sizes, alphas = _interpolation_weights(self.method, self.n)
        chunk = self.n if self.batch_size is None else max(1, self.batch_size // n_samples)
        vals = []
        for start in range(0, self.n, chunk):
            part = alphas[start : start + chunk]
            k = len(part)
            scaled = torch.cat([x0 + alpha * (x - x0) for alpha in part], dim=0)
            val = self.analyzer._attribute(
                scaled,
                expand_target(target, k),
                expand_additional_forward_args(additional_forward_args, k),
                rows.repeat(k),
                None,
            )
            if val.shape[0] != k * n_samples:
                raise CaptumElfaError(
                    f"InterpolationAugmentation: {self.analyzer.name} returned {val.shape[0]} "
                    f"rows for {k * n_samples} interpolated samples"
                )
            vals.append(val.detach())
        val = torch.cat(vals, dim=0)
        weights = torch.tensor(step_sizes).float().view(self.n, 1).to(val.device)
        weighted = val.contiguous().view(self.n, -1) * weights
        total = torch.sum(weighted.reshape((self.n, n_samples) + tuple(val.shape[1:])), dim=0)
        return total * (x - x0)

    def __repr__(self) -> str:
        return f"InterpolationAugmentation({self.analyzer!r}, n={self.n}, method={self.method!r})"
