# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ELFA from start to finish on a digits CNN
#
# **Explainable Layer Factor Analysis** (ELFA, López-González et al. 2024) asks *what has a
# convolutional layer learned?* It reads a layer's output `[N, C, H, W]` as `N·H·W` samples of `C`
# variables (the channels) and describes the channels with a few latent **factors**: channels that
# load on the same factor are redundant (they respond to the same thing), a channel's
# **communality** says how much of it the shared factors explain (its importance to the layer), and
# the factor scores at every pixel give the **Essential Feature Attribution Map** (EFAM).
#
# This notebook trains a small CNN on scikit-learn's 8x8 digits (a few seconds, no download), then:
#
# 1. tests whether the layer suits a factor model (KMO, Bartlett),
# 2. chooses the number of factors (scree plot with parallel analysis),
# 3. fits the model and reads its quality metrics (D1, D>, Res, γ², R²),
# 4. reads the loadings: channel importance and redundancy groups,
# 5. draws EFAMs,
# 6. synthesises an image for each factor (intrinsic-feature inversion).

# %%
# %matplotlib inline
# %config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "dpi": 72}
import os
import tempfile
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars
warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"  # no paths
import captum_elfa

torch.manual_seed(0)
t_start = time.perf_counter()
workdir = tempfile.mkdtemp(prefix="captum_elfa_tutorial_")  # everything this notebook writes goes here
print("captum_elfa", captum_elfa.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## A CNN trained here on scikit-learn's digits

# %%
from captum_elfa.demo import load_digits_tensors, train_digits_cnn

# the digits models are tiny: one thread is as fast, and far faster when other work shares the CPU
torch.set_num_threads(1)
x_all, y_all = load_digits_tensors()  # [1797, 1, 8, 8] in [0, 1], labels [1797]
perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
train_idx, test_idx = perm[:1400], perm[1400:]
x_train, y_train, x_test, y_test = x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx]

# captum_elfa.demo.DigitsCNN (conv1 relu1 conv2 relu2 pool flatten fc), seeded, 15 epochs of Adam
model = train_digits_cnn(15, seed=0, x=x_train, y=y_train).model
with torch.no_grad():
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
print(f"digits CNN: test accuracy {acc:.1%} on {len(x_test)} held-out images")

# %% [markdown]
# We explain `relu2`, the ReLU after the second convolution: 32 channels of 8x8 maps. Every pixel of
# every image is one sample of the 32 channels, so the 1,797 images give 115,008 samples.

# %%
from captum_elfa import LayerFactorAnalysis

layer = model.relu2
lfa = LayerFactorAnalysis(model, layer)
lfa.fit(x_all, n_factors="parallel", rotation="varimax", progress=False)
print(lfa)
print(
    f"{lfa.n_images_} images ({lfa.n_samples_} pixel samples); at least {lfa.min_images_} are needed for reproducible loadings"
)
print("converged (KKT test on the projected gradient):", lfa.converged_)
print("Heywood channels:", lfa.heywood_channels_.tolist(), " collinear channels:", lfa.collinear_channels_.tolist())
print("cautions:", [c["kind"] for c in lfa.report()["cautions"]])

# %% [markdown]
# Every fit says what its numbers cannot say. The maximum-likelihood fit starts from several points
# and is *converged* only when the gradient vanishes (the KKT conditions). The pixels of one image
# are strongly dependent, so the sample size that matters is the number of images: with fewer than
# `min_images_` (2 per channel) the loadings of two disjoint image sets do not agree, and `fit`
# warns. A *Heywood case* (a channel whose uniqueness sits on its lower bound at the optimum: the
# factors reproduce it entirely) and *collinear* channels (exact linear combinations of others, left
# out like dead ones) are listed, and warned about when they occur. Each caution is also a flag in
# `lfa.report()["cautions"]`.

# %% [markdown]
# ## 1. Adequacy: is a factor model meaningful here?
#
# * **KMO** (Kaiser–Meyer–Olkin measure of sampling adequacy) compares the channels' correlations
#   with their partial correlations. In [0, 1]: below 0.5 is unacceptable, 0.6 is the usual
#   minimum, 0.7–0.8 middling to meritorious, above 0.9 marvellous. A per-channel KMO flags channels
#   that share little with the others.
# * **Bartlett's test of sphericity** tests whether the correlation matrix is the identity (no
#   shared structure at all). A small p-value (< 0.05) rejects it. With tens of thousands of samples
#   it is almost always significant, so KMO is the more informative of the two.

# %%
a = lfa.adequacy_
print(f"KMO = {a.kmo:.3f}")
print(f"Bartlett chi2 = {a.bartlett_chi2:.4g}, dof = {a.bartlett_dof}, p = {a.bartlett_p:.3g}")
kmo_ch = a.kmo_per_channel.numpy()
live = lfa.live_channels_.numpy()
print("dead (constant) channels, left out of the model:", lfa.dead_channels_.tolist())
print("channels with KMO < 0.6:", [int(c) for c in live if kmo_ch[c] < 0.6])

# %% [markdown]
# ## 2. How many factors?
#
# The eigenvalues of the channels' correlation matrix, largest first, form the **scree**. Four
# criteria are available through `n_factors`:
#
# * `"kaiser"`: keep the eigenvalues ≥ 1 (a factor must explain more than one channel's worth);
# * `"scree"`: the standard-error scree (Zoski & Jurs), where the scree flattens;
# * `"parallel"`: Horn's parallel analysis: keep the eigenvalues above the 95th percentile of those
#   of random data of the same size (usually the most reliable);
# * a float such as `0.8`: the fewest factors whose eigenvalues reach that fraction of the variance;
#
# or an int. The plot marks the Kaiser line, the parallel-analysis curve and the chosen number.

# %%
from captum_elfa.visualization import plot_scree

# every criterion is computed at fit time, side by side, with the identification (Ledermann) bound
for name, k in lfa.n_factors_criteria_.items():
    print(f"{name:>16}: {k}")
display(plot_scree(lfa))  # lfa was fitted with n_factors="parallel"

# %% [markdown]
# ## 3. The fitted model and its quality
#
# `summary()` prints everything; the numbers live in `lfa.metrics_`. How to read them:
#
# | metric | what it measures | good values |
# |---|---|---|
# | **D1** | `‖diag(Cu)‖ / ‖Cu‖` for the covariance `Cu` of the factor residuals: how close to diagonal (independent) the residuals are | close to 1 |
# | **D>** | `‖diag(Cu)‖ / ‖Cu − diag(Cu)‖`: diagonal versus off-diagonal residual mass | larger is better (> 1: the diagonal dominates) |
# | **Res** | relative difference between the observed correlations and those the model reproduces, with its largest and smallest entry | close to 0 (a few hundredths is good) |
# | **γ²** | per channel, the squared correlation between the channel and its part explained by the factors (= its communality for standardised channels); we report its 20th percentile | close to 1; a low value means many channels are mostly unique |
# | **R²** | determination coefficient `1 − (det Ψ / det V)^(1/C)` | close to 1 |
# | variance explained | share of the channels' total variance the factors carry | higher means a more complete summary |
#
# A model with few factors is a coarse summary: expect a moderate γ² and variance explained and
# look at D1 and Res for whether what it does explain is explained well.

# %%
print(lfa.summary())
m = lfa.metrics_
print()
print(f"D1 = {m.d1:.3f}   D> = {m.d_greater:.3f}   Res = {m.res:.4f} (entries in [{m.res_min:.3f}, {m.res_max:.3f}])")
print(
    f"gamma2 20th percentile = {m.gamma2_p20:.3f}   R2 = {m.r2:.4f}   variance explained = {m.total_variance_explained:.1%}"
)
print(
    "variance per factor:",
    np.round(m.proportional_variance.numpy(), 3),
    "cumulative:",
    np.round(m.cumulative_variance.numpy(), 3),
)

# %%
from captum_elfa.visualization import plot_fit_summary

display(plot_fit_summary(lfa))

# %% [markdown]
# ### Oblique factors and their replicability
#
# Varimax keeps the factors uncorrelated. An oblique rotation (`"promax"`, `"oblimin"`) lets them
# correlate: `loadings_` is then the *pattern* Λ, `phi_` the factor correlations Φ, `structure_` =
# ΛΦ, and the communalities and factor scores account for Φ. `stability=True` also fits the model on
# two halves of the images and reports Tucker's congruence of every factor across them (≥ 0.95
# equal, 0.85–0.95 fair, below 0.85 not replicable).

# %%
obl = LayerFactorAnalysis(model, layer).fit(
    x_all, n_factors=lfa.n_factors_, rotation="promax", stability=True, progress=False
)
print("factor correlations phi:")
print(np.round(obl.phi_.numpy(), 2))
print(obl.stability_.summary())

# %% [markdown]
# ## 4. Loadings and channel insights
#
# `lfa.loadings_` is `[C, k]`: the correlation of each (standardised) channel with each factor.
# Sorting channels by their dominant factor shows blocks of **redundant channels**: channels in one
# block respond to the same latent feature, so the layer could drop some of them with little loss.
# A channel's **communality** `h² = Σ_k W_jk²` is its importance to the layer's summary; its
# **uniqueness** `1 − h²` is what only it carries (or noise).

# %%
from captum_elfa.visualization import channel_insights, plot_channel_insights, plot_loadings, redundancy_groups

display(plot_loadings(lfa))
groups = redundancy_groups(lfa, threshold=0.5)
for f, chans in groups.items():
    print(f"factor {f}: {len(chans)} redundant channels {chans}")

# %%
rows = channel_insights(lfa, threshold=0.5)
rows = [r for r in rows if not r["dead"]]
rows.sort(key=lambda r: -r["communality"])
print("most important channels (highest communality):")
for r in rows[:5]:
    print(
        f"  channel {r['channel']:2d}: h2 = {r['communality']:.2f}, factor {r['dominant_factor']}, "
        f"loading {r['loading']:+.2f}, redundant with {r['redundant_with']}"
    )
print("least explained channels (mostly unique):")
for r in rows[-3:]:
    print(f"  channel {r['channel']:2d}: h2 = {r['communality']:.2f}, uniqueness {r['uniqueness']:.2f}")
display(plot_channel_insights(lfa, threshold=0.5))

# %% [markdown]
# ## 5. EFAM: where in the image the layer's essential features are
#
# `lfa.attribute(x)` returns the combined EFAM `[N, 1, H, W]` (factor scores weighted by the
# factors' total absolute loadings, scaled to [0, 1]); `factors="all"` gives one map per factor.
# EFAM is class-agnostic: it shows what the layer's main features respond to, not why a class was
# chosen. `plot_efam` overlays both on the images (bilinearly upsampled).

# %%
from captum.attr import LayerAttribution

from captum_elfa.visualization import plot_efam

x_show = x_test[:6]
efam = lfa.attribute(x_show)
print("EFAM", tuple(efam.shape), "per-factor maps", tuple(lfa.attribute(x_show, factors="all").shape))
print("upsampled to the input:", tuple(LayerAttribution.interpolate(efam, x_show.shape[2:]).shape))
display(plot_efam(lfa, x_show[:4], factors="all"))

# %% [markdown]
# The fitted model can be saved without pickle and loaded back onto the same model and layer:

# %%
path = os.path.join(workdir, "relu2_lfa.pt")
lfa.save(path)
lfa2 = LayerFactorAnalysis.load(path, model, model.relu2)
print("reloaded:", lfa2, "| same EFAM:", torch.allclose(lfa2.attribute(x_show), efam))

# %% [markdown]
# ## 6. Intrinsic-feature inversion
#
# `invert_factor(lfa, k, shape)` looks for an image whose activation at the layer reproduces factor
# `k`'s loading vector at every pixel: a picture of the feature the factor stands for. We use the
# reference's plain pixel descent (`method="pixel"`) and only a few steps to keep the notebook fast;
# the loss is relative, so it should fall below its initial value.

# %%
from captum_elfa import invert_factor

fig, axes = plt.subplots(1, lfa.n_factors_, figsize=(2.0 * lfa.n_factors_, 2.3), squeeze=False)
for k in range(lfa.n_factors_):
    res = invert_factor(lfa, k, (1, 8, 8), method="pixel", steps=60, lr=0.05, seed=0, progress=False)
    axes[0, k].imshow(res.image[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, k].set_title(f"factor {k}\nloss {res.initial_loss:.2f}->{res.final_loss:.2f}", fontsize=8)
    axes[0, k].axis("off")
plt.tight_layout()
plt.show()
display(res.figure())  # image and loss curve of the last factor

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s; its files are in a temporary folder (workdir)")
