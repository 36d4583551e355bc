"""Regenerate the tutorial notebooks (without outputs).

    python tutorials/_build.py

Every notebook is built from the cells below with ``nbformat.v4``; edit this file, not the
``.ipynb`` files, and re-run it. ``tests/test_tutorials.py`` executes the notebooks.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

Cell = Tuple[str, str]  # ("md" | "code", source)


def md(src: str) -> Cell:
    return ("md", src.strip("\n"))


def code(src: str) -> Cell:
    return ("code", src.strip("\n"))


# ------------------------------------------------------------------------------------------------
# shared snippets
# ------------------------------------------------------------------------------------------------
SETUP = """
%matplotlib inline
import os
import tempfile
import time
import warnings
from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from sklearn.datasets import load_digits
from torch import nn

warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets: plain bars
import captum_elfa

torch.manual_seed(0)
t_start = time.perf_counter()
workdir = tempfile.mkdtemp(prefix="captum_elfa_tutorial_")   # everything this notebook writes goes here
print("captum_elfa", captum_elfa.__version__, "| torch", torch.__version__, "| output folder", workdir)
"""

TRAIN_DIGITS = """
# the digits models are tiny: one thread is as fast, and far faster when other work shares the CPU
torch.set_num_threads(1)
digits = load_digits()
x_all = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0   # [1797, 1, 8, 8] in [0, 1]
y_all = torch.tensor(digits.target)
perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
train_idx, test_idx = perm[:1400], perm[1400:]
x_train, y_train, x_test, y_test = x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx]


def make_cnn() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(128, 10)),
    ]))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15, loss_fn=nn.functional.cross_entropy) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            loss_fn(model(x[i]), y[i]).backward()
            opt.step()
    return model.eval()


model = train(make_cnn(), x_train, y_train)
with torch.no_grad():
    acc = (model(x_test).argmax(1) == y_test).float().mean().item()
print(f"digits CNN: test accuracy {acc:.1%} on {len(x_test)} held-out images")
"""

FOOTER = """
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s; files written under {workdir}")
"""

# ------------------------------------------------------------------------------------------------
# 01: ELFA on digits
# ------------------------------------------------------------------------------------------------
NB01: List[Cell] = [
    md("""
# ELFA from start to finish on a digits CNN

**Explainable Layer Factor Analysis** (ELFA, López-González et al. 2024) asks *what has a
convolutional layer learned?* It reads a layer's output `[N, C, H, W]` as `N·H·W` samples of `C`
variables (the channels) and describes the channels with a few latent **factors**: channels that
load on the same factor are redundant (they respond to the same thing), a channel's
**communality** says how much of it the shared factors explain (its importance to the layer), and
the factor scores at every pixel give the **Essential Feature Attribution Map** (EFAM).

This notebook trains a small CNN on scikit-learn's 8x8 digits (a few seconds, no download), then:

1. tests whether the layer suits a factor model (KMO, Bartlett),
2. chooses the number of factors (scree plot with parallel analysis),
3. fits the model and reads its quality metrics (D1, D>, Res, γ², R²),
4. reads the loadings: channel importance and redundancy groups,
5. draws EFAMs,
6. synthesises an image for each factor (intrinsic-feature inversion).
"""),
    code(SETUP),
    md("## A CNN trained here on scikit-learn's digits"),
    code(TRAIN_DIGITS),
    md("""
We explain `relu2`, the ReLU after the second convolution: 32 channels of 8x8 maps. Every pixel of
every image is one sample of the 32 channels, so the 1,797 images give 115,008 samples.
"""),
    code("""
from captum_elfa import LayerFactorAnalysis

layer = model.relu2
lfa = LayerFactorAnalysis(model, layer)
lfa.fit(x_all, n_factors="parallel", rotation="varimax", progress=False)
print(lfa)
print(f"{lfa.n_images_} images ({lfa.n_samples_} pixel samples); at least {lfa.min_images_} are needed for reproducible loadings")
print("converged (KKT test on the projected gradient):", lfa.converged_)
print("Heywood channels:", lfa.heywood_channels_.tolist(), " collinear channels:", lfa.collinear_channels_.tolist())
print("cautions:", [c["kind"] for c in lfa.report()["cautions"]])
"""),
    md("""
Every fit says what its numbers cannot say. The maximum-likelihood fit starts from several points
and is *converged* only when the gradient vanishes (the KKT conditions). The pixels of one image
are strongly dependent, so the sample size that matters is the number of images: with fewer than
`min_images_` (2 per channel) the loadings of two disjoint image sets do not agree, and `fit`
warns. A *Heywood case* (a channel whose uniqueness sits on its lower bound at the optimum: the
factors reproduce it entirely) and *collinear* channels (exact linear combinations of others, left
out like dead ones) are listed, and warned about when they occur. Each caution is also a flag in
`lfa.report()["cautions"]`.
"""),
    md("""
## 1. Adequacy: is a factor model meaningful here?

* **KMO** (Kaiser–Meyer–Olkin measure of sampling adequacy) compares the channels' correlations
  with their partial correlations. In [0, 1]: below 0.5 is unacceptable, 0.6 is the usual
  minimum, 0.7–0.8 middling to meritorious, above 0.9 marvellous. A per-channel KMO flags channels
  that share little with the others.
* **Bartlett's test of sphericity** tests whether the correlation matrix is the identity (no
  shared structure at all). A small p-value (< 0.05) rejects it. With tens of thousands of samples
  it is almost always significant, so KMO is the more informative of the two.
"""),
    code("""
a = lfa.adequacy_
print(f"KMO = {a.kmo:.3f}")
print(f"Bartlett chi2 = {a.bartlett_chi2:.4g}, dof = {a.bartlett_dof}, p = {a.bartlett_p:.3g}")
kmo_ch = a.kmo_per_channel.numpy()
live = lfa.live_channels_.numpy()
print("dead (constant) channels, left out of the model:", lfa.dead_channels_.tolist())
print("channels with KMO < 0.6:", [int(c) for c in live if kmo_ch[c] < 0.6])
"""),
    md("""
## 2. How many factors?

The eigenvalues of the channels' correlation matrix, largest first, form the **scree**. Four
criteria are available through `n_factors`:

* `"kaiser"`: keep the eigenvalues ≥ 1 (a factor must explain more than one channel's worth);
* `"scree"`: the standard-error scree (Zoski & Jurs), where the scree flattens;
* `"parallel"`: Horn's parallel analysis: keep the eigenvalues above the 95th percentile of those
  of random data of the same size (usually the most reliable);
* a float such as `0.8`: the fewest factors whose eigenvalues reach that fraction of the variance;

or an int. The plot marks the Kaiser line, the parallel-analysis curve and the chosen number.
"""),
    code("""
from captum_elfa.visualization import plot_scree

# every criterion is computed at fit time, side by side, with the identification (Ledermann) bound
for name, k in lfa.n_factors_criteria_.items():
    print(f"{name:>16}: {k}")
display(plot_scree(lfa))   # lfa was fitted with n_factors="parallel"
"""),
    md("""
## 3. The fitted model and its quality

`summary()` prints everything; the numbers live in `lfa.metrics_`. How to read them:

| metric | what it measures | good values |
|---|---|---|
| **D1** | `‖diag(Cu)‖ / ‖Cu‖` for the covariance `Cu` of the factor residuals: how close to diagonal (independent) the residuals are | close to 1 |
| **D>** | `‖diag(Cu)‖ / ‖Cu − diag(Cu)‖`: diagonal versus off-diagonal residual mass | larger is better (> 1: the diagonal dominates) |
| **Res** | relative difference between the observed correlations and those the model reproduces, with its largest and smallest entry | close to 0 (a few hundredths is good) |
| **γ²** | per channel, the squared correlation between the channel and its part explained by the factors (= its communality for standardised channels); we report its 20th percentile | close to 1; a low value means many channels are mostly unique |
| **R²** | determination coefficient `1 − (det Ψ / det V)^(1/C)` | close to 1 |
| variance explained | share of the channels' total variance the factors carry | higher means a more complete summary |

A model with few factors is a coarse summary: expect a moderate γ² and variance explained and
look at D1 and Res for whether what it does explain is explained well.
"""),
    code("""
print(lfa.summary())
m = lfa.metrics_
print()
print(f"D1 = {m.d1:.3f}   D> = {m.d_greater:.3f}   Res = {m.res:.4f} (entries in [{m.res_min:.3f}, {m.res_max:.3f}])")
print(f"gamma2 20th percentile = {m.gamma2_p20:.3f}   R2 = {m.r2:.4f}   variance explained = {m.total_variance_explained:.1%}")
print("variance per factor:", np.round(m.proportional_variance.numpy(), 3), "cumulative:", np.round(m.cumulative_variance.numpy(), 3))
"""),
    code("""
from captum_elfa.visualization import plot_fit_summary

display(plot_fit_summary(lfa))
"""),
    md("""
### Oblique factors and their replicability

Varimax keeps the factors uncorrelated. An oblique rotation (`"promax"`, `"oblimin"`) lets them
correlate: `loadings_` is then the *pattern* Λ, `phi_` the factor correlations Φ, `structure_` =
ΛΦ, and the communalities and factor scores account for Φ. `stability=True` also fits the model on
two halves of the images and reports Tucker's congruence of every factor across them (≥ 0.95
equal, 0.85–0.95 fair, below 0.85 not replicable).
"""),
    code("""
obl = LayerFactorAnalysis(model, layer).fit(x_all, n_factors=lfa.n_factors_, rotation="promax", stability=True, progress=False)
print("factor correlations phi:")
print(np.round(obl.phi_.numpy(), 2))
print(obl.stability_.summary())
"""),
    md("""
## 4. Loadings and channel insights

`lfa.loadings_` is `[C, k]`: the correlation of each (standardised) channel with each factor.
Sorting channels by their dominant factor shows blocks of **redundant channels**: channels in one
block respond to the same latent feature, so the layer could drop some of them with little loss.
A channel's **communality** `h² = Σ_k W_jk²` is its importance to the layer's summary; its
**uniqueness** `1 − h²` is what only it carries (or noise).
"""),
    code("""
from captum_elfa.visualization import channel_insights, plot_channel_insights, plot_loadings, redundancy_groups

display(plot_loadings(lfa))
groups = redundancy_groups(lfa, threshold=0.5)
for f, chans in groups.items():
    print(f"factor {f}: {len(chans)} redundant channels {chans}")
"""),
    code("""
rows = channel_insights(lfa, threshold=0.5)
rows = [r for r in rows if not r["dead"]]
rows.sort(key=lambda r: -r["communality"])
print("most important channels (highest communality):")
for r in rows[:5]:
    print(f"  channel {r['channel']:2d}: h2 = {r['communality']:.2f}, factor {r['dominant_factor']}, "
          f"loading {r['loading']:+.2f}, redundant with {r['redundant_with']}")
print("least explained channels (mostly unique):")
for r in rows[-3:]:
    print(f"  channel {r['channel']:2d}: h2 = {r['communality']:.2f}, uniqueness {r['uniqueness']:.2f}")
display(plot_channel_insights(lfa, threshold=0.5))
"""),
    md("""
## 5. EFAM: where in the image the layer's essential features are

`lfa.attribute(x)` returns the combined EFAM `[N, 1, H, W]` (factor scores weighted by the
factors' total absolute loadings, scaled to [0, 1]); `factors="all"` gives one map per factor.
EFAM is class-agnostic: it shows what the layer's main features respond to, not why a class was
chosen. `plot_efam` overlays both on the images (bilinearly upsampled).
"""),
    code("""
from captum.attr import LayerAttribution
from captum_elfa.visualization import plot_efam

x_show = x_test[:6]
efam = lfa.attribute(x_show)
print("EFAM", tuple(efam.shape), "per-factor maps", tuple(lfa.attribute(x_show, factors="all").shape))
print("upsampled to the input:", tuple(LayerAttribution.interpolate(efam, x_show.shape[2:]).shape))
display(plot_efam(lfa, x_show[:4], factors="all"))
"""),
    md("""
The fitted model can be saved without pickle and loaded back onto the same model and layer:
"""),
    code("""
path = os.path.join(workdir, "relu2_lfa.pt")
lfa.save(path)
lfa2 = LayerFactorAnalysis.load(path, model, model.relu2)
print("reloaded:", lfa2, "| same EFAM:", torch.allclose(lfa2.attribute(x_show), efam))
"""),
    md("""
## 6. Intrinsic-feature inversion

`invert_factor(lfa, k, shape)` looks for an image whose activation at the layer reproduces factor
`k`'s loading vector at every pixel: a picture of the feature the factor stands for. We use the
reference's plain pixel descent (`method="pixel"`) and only a few steps to keep the notebook fast;
the loss is relative, so it should fall below its initial value.
"""),
    code("""
from captum_elfa import invert_factor

fig, axes = plt.subplots(1, lfa.n_factors_, figsize=(2.0 * lfa.n_factors_, 2.3), squeeze=False)
for k in range(lfa.n_factors_):
    res = invert_factor(lfa, k, (1, 8, 8), method="pixel", steps=60, lr=0.05, seed=0, progress=False)
    axes[0, k].imshow(res.image[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, k].set_title(f"factor {k}\\nloss {res.initial_loss:.2f}->{res.final_loss:.2f}", fontsize=8)
    axes[0, k].axis("off")
plt.tight_layout()
plt.show()
display(res.figure())   # image and loss curve of the last factor
"""),
    code(FOOTER),
]

# ------------------------------------------------------------------------------------------------
# 02: PCACE
# ------------------------------------------------------------------------------------------------
NB02: List[Cell] = [
    md("""
# PCACE: which channels matter for a class?

**PCACE** (Casacuberta, Suel & Flaxman 2021) ranks every channel of a layer by the **maximal
correlation** between its activation maps and the network's output. For each channel, the maps of
all images are reduced to their leading principal component; the Alternating Conditional
Expectations algorithm (ACE) then finds the transforms `φ` (of the component) and `θ` (of the
class score) with the largest correlation. The score is in [0, 1]: 1 means the channel's maps
determine the class score (non-linearly), 0 means they tell nothing about it.

`NeuronPCACE` is a Captum `NeuronAttribution`; it scores all channels from one forward pass.
We use the same digits CNN as tutorial 1, then a regression network.
"""),
    code(SETUP),
    code(TRAIN_DIGITS),
    md("""
## Rank `relu2`'s channels for class 3

The authors use images of the class being explained (300 in their paper); the digits have about
180 threes. The target is the class-3 **logit** (pre-softmax).
"""),
    code("""
from captum_elfa import NeuronPCACE

threes = x_all[y_all == 3]
pc = NeuronPCACE(model, model.relu2)
scores = pc.attribute(threes, target=3, progress=False)    # [32] scores in [0, 1]
ranking = pc.rank_channels()
print(f"{len(threes)} images of class 3; scores of all {scores.numel()} channels computed")
print("top 5 channels:", ranking.channels[:5].tolist(), "scores", np.round(ranking.scores[:5].numpy(), 3))
print("constant channels (score 0):", pc.constant_channels_.tolist())
"""),
    code("""
from captum_elfa.visualization import plot_pcace_ranking

display(plot_pcace_ranking(pc, top=15))
"""),
    md("""
## The top channels' activation maps

One row per image, one column per top channel (each column shares its colour scale).
"""),
    code("""
from captum_elfa.visualization import plot_top_channel_maps

display(plot_top_channel_maps(pc, threes, k=5, n_images=4))
"""),
    md("""
## ACE transforms

For a channel: `φ` against its principal component, `θ` against the class score, and `θ` against
`φ`; the correlation of the last panel is the channel's score. Curved transforms are the
non-linear relations a plain correlation would miss.
"""),
    code("""
from captum_elfa.visualization import plot_ace_transforms

top = int(ranking.channels[0])
t = pc.ace_transforms(top)
print(f"channel {t.channel}: score {t.score:.3f}; component {tuple(t.component.shape)}, target {tuple(t.target.shape)}")
display(plot_ace_transforms(pc, top))
worst = int(ranking.channels[-1 - len(pc.constant_channels_)])   # lowest-scoring non-constant channel
display(plot_ace_transforms(pc, worst))
"""),
    md("""
Several components per channel (`n_components=2`) fit the additive model `θ(y) ≈ φ₁ + φ₂`;
the top of the ranking can shift, and the rank correlation of the two rankings says how much:
"""),
    code("""
scores2 = NeuronPCACE(model, model.relu2).attribute(threes, target=3, n_components=2, progress=False)
print("top 5 with 2 components:", torch.argsort(scores2, descending=True)[:5].tolist())
print("rank correlation of the two rankings (Spearman):",
      round(float(np.corrcoef(np.argsort(np.argsort(-scores.numpy())), np.argsort(np.argsort(-scores2.numpy())))[0, 1]), 3))
"""),
    md("""
## A regression target

PCACE needs only one number per image. With `target=None` the network must return one output
per image: here a tiny CNN regresses the **digit value** (0–9) from the image. The channels are
then ranked by how well they explain the predicted value.
"""),
    code("""
class DigitRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x))))).squeeze(1)   # [N]


torch.manual_seed(0)
reg = train(DigitRegressor(), x_train, y_train.float(), epochs=80, loss_fn=nn.functional.mse_loss)   # a few seconds
with torch.no_grad():
    pred = reg(x_test)
print(f"regressor: test RMSE {torch.sqrt(((pred - y_test.float()) ** 2).mean()):.2f} (digit units), "
      f"exact after rounding {(pred.round() == y_test).float().mean():.1%}")

pc_reg = NeuronPCACE(reg, reg.relu2)
pc_reg.attribute(x_test, target=None, progress=False)   # one output per image
r = pc_reg.rank_channels()
print("channels ranked for the predicted digit value:", r.channels[:5].tolist(), np.round(r.scores[:5].numpy(), 3))
display(plot_pcace_ranking(pc_reg, top=None))
display(plot_ace_transforms(pc_reg, int(r.channels[0])))
"""),
    md("""
## What do the top channels respond to? Activation maximisation

`maximize_channels` optimises one image per channel to maximise its mean activation; a PCACE
`ChannelRanking` can be passed directly (`top_k` keeps the first ones). On 8x8 inputs the plain
pixel parameterisation (`method="pixel"`) is the sensible choice; few steps keep it fast.
"""),
    code("""
from captum_elfa import maximize_channels

am = maximize_channels(model, model.relu2, ranking, (1, 8, 8), top_k=5, method="pixel", steps=60, lr=0.05,
                       seed=0, progress=False)
print("channels", am.channels)
print("mean activation before", np.round(am.initial_activation.numpy(), 3), "after", np.round(am.final_activation.numpy(), 3))
display(am.figure())
"""),
    code(FOOTER),
]

# ------------------------------------------------------------------------------------------------
# 03: analyze
# ------------------------------------------------------------------------------------------------
NB03: List[Cell] = [
    md("""
# `analyze`: every analyzer side by side

`captum_elfa.analyze` is [ExplainableAI.jl](https://github.com/Julia-XAI/ExplainableAI.jl)'s
front end over Captum: `analyze(x, analyzer, target=None)` runs the model, picks the output to
explain (each image's top class by default), computes the attribution with Captum and returns an
`Explanation` (`val`, `output`, `target`, `method`, `heatmap` preset, `extras`). `heatmap(expl)`
colours it with the preset of its analyzer:

| preset | analyzers | reduce | scale | colormap |
|---|---|---|---|---|
| `sensitivity` | Gradient, SmoothGrad | norm | extrema | gray |
| `attribution` | InputTimesGradient, IntegratedGradients, InterpolationAugmentation | sum | centred at 0 | seismic |
| `cam` | GradCAM, EFAM | sum | extrema | jet |

We use a digits CNN with a pooled 4x4 stage for the CAM-style maps.
"""),
    code(SETUP),
    code("""
# the digits models are tiny: one thread is as fast, and far faster when other work shares the CPU
torch.set_num_threads(1)
digits = load_digits()
x_all = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
y_all = torch.tensor(digits.target)
perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
x_train, y_train = x_all[perm[:1400]], y_all[perm[:1400]]
x_test, y_test = x_all[perm[1400:]], y_all[perm[1400:]]

model = nn.Sequential(OrderedDict([
    ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("relu1", nn.ReLU()),
    ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()), ("pool", nn.MaxPool2d(2)),   # 4x4
    ("conv3", nn.Conv2d(32, 32, 3, padding=1)), ("relu3", nn.ReLU()),
    ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(32, 10)),
]))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(20):
    for i in torch.randperm(len(x_train)).split(128):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train[i]), y_train[i]).backward()
        opt.step()
model.eval()
with torch.no_grad():
    print(f"test accuracy {(model(x_test).argmax(1) == y_test).float().mean():.1%}")
"""),
    md("""
## The analyzers

EFAM needs a fitted `LayerFactorAnalysis` (tutorial 1); we fit it on `relu3` (the 4x4 stage),
and Grad-CAM uses `conv3`. The augmentations wrap any analyzer: `NoiseAugmentation` averages it
over noisy copies of the input (SmoothGrad is `NoiseAugmentation(Gradient)`),
`InterpolationAugmentation` integrates it along the path from a baseline (with `Gradient`, that is
integrated gradients).
"""),
    code("""
from captum_elfa import (EFAM, GradCAM, Gradient, InputTimesGradient, IntegratedGradients, InterpolationAugmentation,
                         LayerFactorAnalysis, NoiseAugmentation, SmoothGrad, analyze, heatmap)

lfa = LayerFactorAnalysis(model, model.relu3).fit(x_train, n_factors="parallel", progress=False)
print(lfa)

analyzers = {
    "Gradient": Gradient(model),
    "InputTimesGradient": InputTimesGradient(model),
    "SmoothGrad": SmoothGrad(model, n=20, std=0.1),
    "IntegratedGradients": IntegratedGradients(model, n=32),
    "GradCAM": GradCAM(model, model.conv3),
    "EFAM": EFAM(lfa),
    "NoiseAugmentation(IxG)": NoiseAugmentation(InputTimesGradient(model), 20, 0.1),
    "InterpolationAugmentation(Gradient)": InterpolationAugmentation(Gradient(model), 32),
}
x = x_test[:6]
explanations = {name: analyze(x, an) for name, an in analyzers.items()}
for name, e in explanations.items():
    print(f"{name:38s} val {tuple(e.val.shape)}  preset {e.heatmap:12s} extras {sorted(e.extras)}")
print("explained classes (top output):", explanations["Gradient"].target.tolist(), "true:", y_test[:6].tolist())
"""),
    code("""
n_img = x.shape[0]
fig, axes = plt.subplots(n_img, len(explanations) + 1, figsize=(1.45 * (len(explanations) + 1), 1.5 * n_img))
for i in range(n_img):
    axes[i, 0].imshow(x[i, 0], cmap="gray")
    for j, (name, e) in enumerate(explanations.items(), start=1):
        axes[i, j].imshow(heatmap(e)[i])
        if i == 0:
            axes[i, j].set_title(name.replace("(", "\\n("), fontsize=7)
axes[0, 0].set_title("input", fontsize=7)
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()
plt.show()
"""),
    md("""
Integrated gradients satisfy completeness: the attributions sum to the output difference from
the baseline. Captum's convergence delta measures the gap, and `InterpolationAugmentation(Gradient)`
with the same rule gives the same numbers:
"""),
    code("""
ig = explanations["IntegratedGradients"]
print("IG convergence delta:", np.round(ig.extras["convergence_delta"].numpy(), 4))
ia = analyze(x, InterpolationAugmentation(Gradient(model), 32, method="gausslegendre"))
print("InterpolationAugmentation(Gradient, gausslegendre) == IntegratedGradients:", torch.allclose(ia.val, ig.val, atol=1e-5))
"""),
    md("""
## Heatmap presets and options

`heatmap` returns uint8 RGB images `[N, H, W, 3]`. Any preset option can be overridden:
`reduce`, `rangescale`, `cmap`, an `overlay` image with `alpha`, or `process_batch=True` to share one
scale across the batch. `save=` writes PNGs.
"""),
    code("""
e_itg, e_cam = explanations["InputTimesGradient"], explanations["GradCAM"]
variants = {
    "IxG preset\\n(sum, centred, seismic)": heatmap(e_itg),
    "IxG reduce=norm\\ngray": heatmap(e_itg, reduce="norm", rangescale="extrema", cmap="gray"),
    "IxG batch scale": heatmap(e_itg, process_batch=True),
    "GradCAM preset (jet)": heatmap(e_cam),
    "GradCAM inferno\\noverlay": heatmap(e_cam, cmap="inferno", overlay=x, alpha=0.5),
    "EFAM turbo overlay": heatmap(explanations["EFAM"], cmap="turbo", overlay=x, alpha=0.5),
}
fig, axes = plt.subplots(2, len(variants), figsize=(1.9 * len(variants), 4.0))
for j, (name, rgb) in enumerate(variants.items()):
    for i in range(2):
        axes[i, j].imshow(rgb[i])
        axes[i, j].axis("off")
    axes[0, j].set_title(name, fontsize=7)
plt.tight_layout()
plt.show()
paths = heatmap(e_cam, save=os.path.join(workdir, "gradcam.png"))
print("wrote", sorted(os.listdir(workdir))[:3], "...")
"""),
    md("""
Raw Captum attributions work too: `analyze(x, captum.attr.Saliency(model))` picks the preset
from the class; `visualize_explanation` draws with Captum's own `visualize_image_attr`.
"""),
    code("""
from captum.attr import Saliency
from captum_elfa.visualization import visualize_explanation

e_sal = analyze(x, Saliency(model))
print(e_sal)
fig, _ = visualize_explanation(e_sal, index=0, original_image=x[0], method="blended_heat_map")
display(fig)
"""),
    md("""
## Faithfulness: do the maps point at what the model uses?

A **deletion curve** replaces the pixels a map ranks highest by a baseline (here 0, i.e. black),
5% at a time, and records the probability of the explained class: a faithful map makes it fall
fast (**smaller AUC is better**). An **insertion curve** starts from a blurred image and puts the
top pixels back (**larger AUC is better**). A random map is the reference point. On 8x8 inputs
the 4x4 CAM maps are coarse, so pixel-exact gradient maps have an advantage; the numbers below
are whatever this run measures (the project's benchmark, `benchmarks/bench_faithfulness.py`,
found Saliency best on most columns over 3 seeds, with EFAM vs Grad-CAM mixed).
"""),
    code("""
from captum_elfa.metrics import auc, deletion_curve, insertion_curve

xf = x_test[:150]
target = analyze(xf, Gradient(model)).target          # each image's predicted class
maps = {
    "EFAM": lfa.attribute(xf),                                                     # [N, 1, 4, 4]
    "Grad-CAM": analyze(xf, GradCAM(model, model.conv3), target=target).extras["layer_attribution"],
    "Saliency": analyze(xf, Gradient(model), target=target).val.abs().sum(1, keepdim=True),   # [N, 1, 8, 8]
    "random": torch.rand(xf.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(0)),
}
results = {}
for name, mp in maps.items():
    f, s_del = deletion_curve(model, xf, mp, target=target, steps=20, baseline=0.0)
    f, s_ins = insertion_curve(model, xf, mp, target=target, steps=20, baseline="blur")
    results[name] = (auc(f, s_del), auc(f, s_ins), s_del.mean(0), s_ins.mean(0), f)

print(f"{'map':10s} {'deletion AUC (lower better)':>28s} {'insertion AUC (higher better)':>30s}")
for name, (d, i, *_) in results.items():
    print(f"{name:10s} {d.mean():16.3f} ± {d.std() / len(d) ** 0.5:.3f} {i.mean():18.3f} ± {i.std() / len(i) ** 0.5:.3f}")
d_e, i_e = results["EFAM"][:2]
d_c, i_c = results["Grad-CAM"][:2]
print(f"\\nEFAM beats Grad-CAM on deletion for {(d_e < d_c).float().mean():.0%} of images, "
      f"on insertion for {(i_e > i_c).float().mean():.0%}")
best_del = min(results, key=lambda k: results[k][0].mean())
best_ins = max(results, key=lambda k: results[k][1].mean())
print(f"best mean deletion AUC: {best_del}; best mean insertion AUC: {best_ins}")
"""),
    code("""
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
for name, (_, _, md_, mi_, f) in results.items():
    a1.plot(f, md_, label=name)
    a2.plot(f, mi_, label=name)
a1.set(title="deletion (lower is better)", xlabel="fraction of pixels removed", ylabel="class probability")
a2.set(title="insertion (higher is better)", xlabel="fraction of pixels inserted", ylabel="class probability")
a1.legend(fontsize=8)
plt.tight_layout()
plt.show()
"""),
    md("""
Read the table as measured: EFAM is **class-agnostic** (it summarises what the layer's factors
respond to), so it is not built to win a class-specific deletion test; when it does well it is
because the layer's essential features sit where the class evidence is. Differences smaller than
the ± standard errors are not meaningful.
"""),
    code(FOOTER),
]

# ------------------------------------------------------------------------------------------------
# 04: bring your own model
# ------------------------------------------------------------------------------------------------
NB04: List[Cell] = [
    md("""
# Bring your own model: a torchvision ResNet-18 on a folder of images

The usual setting: a model whose weights are in a file and images in a folder. Nothing is
downloaded here, so the notebook creates both itself:

* a ResNet-18 (`torchvision.models.resnet18(weights=None)`) whose weights it saves to a local
  file and loads back with `torch.load(path, weights_only=True)` + `load_state_dict`; replace the
  path by your own checkpoint (e.g. the ImageNet weights) to explain a trained network. **The
  weights here are random**, so the factors describe a random network's features;
* a folder of images written from `sklearn.datasets.load_sample_images()` (two photos, cut into
  112x112 crops), read with `torchvision.datasets.ImageFolder` and a `DataLoader`.

Then ELFA on `layer3` streamed from the DataLoader, EFAM overlays, and `compare_layers` over
`layer2`, `layer3` and `layer4`.
"""),
    code(SETUP),
    code("""
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader
from torchvision import transforms

# 1. a checkpoint file (here: a random ResNet-18 saved by this notebook)
weights_path = os.path.join(workdir, "resnet18.pt")
torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_path)

model = torchvision.models.resnet18(weights=None)
state = torch.load(weights_path, map_location="cpu", weights_only=True)   # no pickled code executed
model.load_state_dict(state)
model.eval()
print("loaded", len(state), "tensors from", weights_path)
"""),
    code("""
# 2. an image folder: ImageFolder wants root/<class>/<image>
image_root = os.path.join(workdir, "images")
rng = np.random.default_rng(0)
samples = load_sample_images()
n_per_photo = 24
for name, photo in zip(["china", "flower"], samples.images):   # [427, 640, 3] uint8
    os.makedirs(os.path.join(image_root, name), exist_ok=True)
    h, w, _ = photo.shape
    for i in range(n_per_photo):
        top, left = rng.integers(0, h - 224), rng.integers(0, w - 224)
        crop = Image.fromarray(photo[top:top + 224, left:left + 224]).resize((112, 112))
        crop.save(os.path.join(image_root, name, f"{name}_{i:02d}." + ("jpg" if i % 2 else "png")))
print({d: len(os.listdir(os.path.join(image_root, d))) for d in sorted(os.listdir(image_root))})

tf = transforms.Compose([
    transforms.Resize((112, 112)),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),   # ImageNet statistics
])
dataset = torchvision.datasets.ImageFolder(image_root, transform=tf)
loader = DataLoader(dataset, batch_size=16, shuffle=False, num_workers=0)
print(dataset, "classes", dataset.classes)
"""),
    md("""
## ELFA on `layer3`, streamed from the DataLoader

`fit` accepts the DataLoader directly (it takes the first element of each `(x, y)` batch) and
keeps only the channels' running mean and co-moments, whatever the number of images. `layer3`
gives 256 channels of 7x7 maps for 112x112 inputs: 48 images give 2,352 samples.
"""),
    code("""
from captum_elfa import LayerFactorAnalysis

lfa = LayerFactorAnalysis(model, model.layer3).fit(loader, n_factors="parallel", progress=False)
print(lfa.summary())
"""),
    code("""
from captum_elfa.visualization import plot_fit_summary, plot_scree

display(plot_scree(lfa))
display(plot_fit_summary(lfa))
"""),
    md("""
## EFAM overlays

Four of the images (two crops of each photo); maps are upsampled from 7x7 to the image size. `plot_cam_vs_efam`
puts Grad-CAM of the same layer (for each image's top class) next to the class-agnostic EFAM.
"""),
    code("""
from captum_elfa.visualization import plot_cam_vs_efam, plot_efam

all_images = torch.cat([x for x, _ in loader])          # [48, 3, 112, 112]
idx = torch.tensor([0, 5, 30, 40])   # two crops of each photo ("china" first, then "flower")
display(plot_efam(lfa, all_images[idx], factors=[0, 1, 2]))
display(plot_cam_vs_efam(model, lfa, all_images[idx], model.layer3))
"""),
    md("""
The same maps as RGB arrays, e.g. to write your own figures: `heatmap` with an overlay.
"""),
    code("""
from captum_elfa import EFAM, analyze, heatmap

batch = all_images[idx]
expl = analyze(batch, EFAM(lfa))
mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
rgb = heatmap(expl, overlay=(batch * std + mean).clamp(0, 1), alpha=0.5)
fig, axes = plt.subplots(1, len(rgb), figsize=(2.2 * len(rgb), 2.4))
for ax, im in zip(axes, rgb):
    ax.imshow(im)
    ax.axis("off")
plt.show()
"""),
    md("""
## Comparing layers with `compare_layers`

One pass over the data hooks `layer2`, `layer3` and `layer4` at once and gives an ELFA summary of
each, plus PCACE scores for a class (with random weights there is no meaningful class; we take the
class the network predicts most often on these images). `layer4` has 512 channels of 4x4 maps:
48 images give 768 samples, just enough for a factor model of 512 channels (a factor model needs
more samples than channels; with your own data, use more images).
"""),
    code("""
from captum_elfa import compare_layers

with torch.no_grad():
    top_class = int(torch.cat([model(x).argmax(1) for x, _ in loader]).mode().values)
cmp = compare_layers(model, {"layer2": model.layer2, "layer3": model.layer3, "layer4": model.layer4}, loader,
                     target=top_class, n_factors="kaiser", progress=False)
keys = ["layer", "activation_shape", "n_samples", "dead", "n_factors", "kmo", "r2", "res", "total_variance_explained", "pcace_max", "pcace_top_channels"]
for row in cmp.rows:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k in keys})
display(cmp.figure())
"""),
    code(FOOTER),
]

NOTEBOOKS = {
    "01_elfa_digits.ipynb": NB01,
    "02_pcace.ipynb": NB02,
    "03_analyze.ipynb": NB03,
    "04_bring_your_own_model.ipynb": NB04,
}


def build(cells: List[Cell]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, name)
        nbformat.write(build(cells), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
