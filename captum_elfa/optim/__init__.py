"""Image synthesis: ELFA's intrinsic features inversion and channel activation maximisation.

* :func:`invert_factor` — an image whose layer activation reproduces a factor's loadings.
* :func:`maximize_channel` / :func:`maximize_channels` — images maximising channels' mean
  activations (for example the top PCACE channels).
* :func:`fft_image` / :func:`pixel_image` and :mod:`~captum_elfa.optim.transforms` — the image
  parameterisations and seeded random transforms they use.
"""

from captum_elfa.optim.activation_max import ActivationMaxResult, maximize_channel, maximize_channels
from captum_elfa.optim.inversion import InversionResult, inversion_loss, invert_factor
from captum_elfa.optim.param import FFTImage, PixelImage, color_decorrelation_matrix, fft_image, pixel_image
from captum_elfa.optim.transforms import Compose, Jitter, RandomRotate, RandomScale, standard_transforms

__all__ = [
    "invert_factor",
    "InversionResult",
    "inversion_loss",
    "maximize_channel",
    "maximize_channels",
    "ActivationMaxResult",
    "fft_image",
    "pixel_image",
    "FFTImage",
    "PixelImage",
    "color_decorrelation_matrix",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "Compose",
    "standard_transforms",
]
