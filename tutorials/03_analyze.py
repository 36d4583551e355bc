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
# # `analyze`: every analyzer side by side
#
# `captum_elfa.analyze` is [ExplainableAI.jl](https://github.com/Julia-XAI/ExplainableAI.jl)'s
# front end over Captum: `analyze(x, analyzer, target=None)` runs the model, picks the output to
# explain (each image's top class by default), computes the attribution with Captum and returns an
# `Explanation` (`val`, `output`, `target`, `method`, `heatmap` preset, `extras`). `heatmap(expl)`
# colours it with the preset of its analyzer:
#
# | preset | analyzers | reduce | scale | colormap |
# |---|---|---|---|---|
# | `sensitivity` | Gradient, SmoothGrad | norm | extrema | gray |
# | `attribution` | InputTimesGradient, IntegratedGradients, InterpolationAugmentation | sum | centred at 0 | seismic |
# | `cam` | GradCAM, EFAM | sum | extrema | jet |
#
# We use a digits CNN with a pooled 4x4 stage for the CAM-style maps.

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

# %%
from captum_elfa.demo import load_digits_tensors, train_digits_cnn

# the digits models are tiny: one thread is as fast, and far faster when other work shares the CPU
torch.set_num_threads(1)
x_all, y_all = load_digits_tensors()
perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
x_train, y_train = x_all[perm[:1400]], y_all[perm[:1400]]
x_test, y_test = x_all[perm[1400:]], y_all[perm[1400:]]

# captum_elfa.demo.DigitsCNN(depth=3): conv1 relu1 conv2 relu2, pool (max, to 4x4), conv3 relu3, gap flatten fc
model = train_digits_cnn(20, seed=0, depth=3, x=x_train, y=y_train).model
with torch.no_grad():
    print(f"test accuracy {(model(x_test).argmax(1) == y_test).float().mean():.1%}")

# %% [markdown]
# ## The analyzers
#
# EFAM needs a fitted `LayerFactorAnalysis` (tutorial 1); we fit it on `relu3` (the 4x4 stage),
# and Grad-CAM uses `conv3`. The augmentations wrap any analyzer: `NoiseAugmentation` averages it
# over noisy copies of the input (SmoothGrad is `NoiseAugmentation(Gradient)`),
# `InterpolationAugmentation` integrates it along the path from a baseline (with `Gradient`, that is
# integrated gradients).

# %%
from captum_elfa import (
    EFAM,
    GradCAM,
    Gradient,
    InputTimesGradient,
    IntegratedGradients,
    InterpolationAugmentation,
    LayerFactorAnalysis,
    NoiseAugmentation,
    SmoothGrad,
    analyze,
    heatmap,
)

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

# %%
n_img = x.shape[0]
fig, axes = plt.subplots(n_img, len(explanations) + 1, figsize=(1.45 * (len(explanations) + 1), 1.5 * n_img))
for i in range(n_img):
    axes[i, 0].imshow(x[i, 0], cmap="gray")
    for j, (name, e) in enumerate(explanations.items(), start=1):
        axes[i, j].imshow(heatmap(e)[i])
        if i == 0:
            axes[i, j].set_title(name.replace("(", "\n("), fontsize=7)
axes[0, 0].set_title("input", fontsize=7)
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# Integrated gradients satisfy completeness: the attributions sum to the output difference from
# the baseline. Captum's convergence delta measures the gap, and `InterpolationAugmentation(Gradient)`
# with the same rule gives the same numbers:

# %%
ig = explanations["IntegratedGradients"]
print("IG convergence delta:", np.round(ig.extras["convergence_delta"].numpy(), 4))
ia = analyze(x, InterpolationAugmentation(Gradient(model), 32, method="gausslegendre"))
print(
    "InterpolationAugmentation(Gradient, gausslegendre) == IntegratedGradients:",
    torch.allclose(ia.val, ig.val, atol=1e-5),
)

# %% [markdown]
# ## Heatmap presets and options
#
# `heatmap` returns uint8 RGB images `[N, H, W, 3]`. Any preset option can be overridden:
# `reduce`, `rangescale`, `cmap`, an `overlay` image with `alpha`, or `process_batch=True` to share one
# scale across the batch. `save=` writes PNGs.

# %%
e_itg, e_cam = explanations["InputTimesGradient"], explanations["GradCAM"]
variants = {
    "IxG preset\n(sum, centred, seismic)": heatmap(e_itg),
    "IxG reduce=norm\ngray": heatmap(e_itg, reduce="norm", rangescale="extrema", cmap="gray"),
    "IxG batch scale": heatmap(e_itg, process_batch=True),
    "GradCAM preset (jet)": heatmap(e_cam),
    "GradCAM inferno\noverlay": heatmap(e_cam, cmap="inferno", overlay=x, alpha=0.5),
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

# %% [markdown]
# Raw Captum attributions work too: `analyze(x, captum.attr.Saliency(model))` picks the preset
# from the class; `visualize_explanation` draws with Captum's own `visualize_image_attr`.

# %%
from captum.attr import Saliency

from captum_elfa.visualization import visualize_explanation

e_sal = analyze(x, Saliency(model))
print(e_sal)
fig, _ = visualize_explanation(e_sal, index=0, original_image=x[0], method="blended_heat_map")
display(fig)

# %% [markdown]
# ## Faithfulness: do the maps point at what the model uses?
#
# A **deletion curve** replaces the pixels a map ranks highest by a baseline (here 0, i.e. black),
# 5% at a time, and records the probability of the explained class: a faithful map makes it fall
# fast (**smaller AUC is better**). An **insertion curve** starts from a blurred image and puts the
# top pixels back (**larger AUC is better**). A random map is the reference point. On 8x8 inputs
# the 4x4 CAM maps are coarse, so pixel-exact gradient maps have an advantage; the numbers below
# are whatever this run measures (the project's benchmark, `benchmarks/bench_faithfulness.py`,
# found Saliency best on most columns over 3 seeds, with EFAM vs Grad-CAM mixed).

# %%
from captum_elfa.metrics import auc, deletion_curve, insertion_curve

xf = x_test[:150]
target = analyze(xf, Gradient(model)).target  # each image's predicted class
maps = {
    "EFAM": lfa.attribute(xf),  # [N, 1, 4, 4]
    "Grad-CAM": analyze(xf, GradCAM(model, model.conv3), target=target).extras["layer_attribution"],
    "Saliency": analyze(xf, Gradient(model), target=target).val.abs().sum(1, keepdim=True),  # [N, 1, 8, 8]
    "random": torch.rand(xf.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(0)),
}
results = {}
for name, mp in maps.items():
    f, s_del = deletion_curve(model, xf, mp, target=target, steps=20, baseline=0.0)
    f, s_ins = insertion_curve(model, xf, mp, target=target, steps=20, baseline="blur")
    results[name] = (auc(f, s_del), auc(f, s_ins), s_del.mean(0), s_ins.mean(0), f)

print(f"{'map':10s} {'deletion AUC (lower better)':>28s} {'insertion AUC (higher better)':>30s}")
for name, (d, i, *_) in results.items():
    print(
        f"{name:10s} {d.mean():16.3f} ± {d.std() / len(d) ** 0.5:.3f} {i.mean():18.3f} ± {i.std() / len(i) ** 0.5:.3f}"
    )
d_e, i_e = results["EFAM"][:2]
d_c, i_c = results["Grad-CAM"][:2]
print(
    f"\nEFAM beats Grad-CAM on deletion for {(d_e < d_c).float().mean():.0%} of images, "
    f"on insertion for {(i_e > i_c).float().mean():.0%}"
)
best_del = min(results, key=lambda k: results[k][0].mean())
best_ins = max(results, key=lambda k: results[k][1].mean())
print(f"best mean deletion AUC: {best_del}; best mean insertion AUC: {best_ins}")

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
for name, (_, _, md_, mi_, f) in results.items():
    a1.plot(f, md_, label=name)
    a2.plot(f, mi_, label=name)
a1.set(title="deletion (lower is better)", xlabel="fraction of pixels removed", ylabel="class probability")
a2.set(title="insertion (higher is better)", xlabel="fraction of pixels inserted", ylabel="class probability")
a1.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the table as measured: EFAM is **class-agnostic** (it summarises what the layer's factors
# respond to), so it is not built to win a class-specific deletion test; when it does well it is
# because the layer's essential features sit where the class evidence is. Differences smaller than
# the ± standard errors are not meaningful.

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s; its files are in a temporary folder (workdir)")
