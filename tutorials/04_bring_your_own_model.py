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
# # Bring your own model: a torchvision ResNet-18 on a folder of images
#
# The usual setting: a model whose weights are in a file and images in a folder. Nothing is
# downloaded here, so the notebook creates both itself:
#
# * a ResNet-18 (`torchvision.models.resnet18(weights=None)`) whose weights it saves to a local
#   file and loads back with `torch.load(path, weights_only=True)` + `load_state_dict`; replace the
#   path by your own checkpoint (e.g. the ImageNet weights) to explain a trained network. **The
#   weights here are random**, so the factors describe a random network's features;
# * a folder of images written from `sklearn.datasets.load_sample_images()` (two photos, cut into
#   112x112 crops), read with `torchvision.datasets.ImageFolder` and a `DataLoader`.
#
# Then ELFA on `layer3` streamed from the DataLoader, EFAM overlays, and `compare_layers` over
# `layer2`, `layer3` and `layer4`.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["jpeg"]
# %config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "dpi": 72, "pil_kwargs": {"quality": 85}}
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
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader
from torchvision import transforms

# 1. a checkpoint file (here: a random ResNet-18 saved by this notebook)
weights_path = os.path.join(workdir, "resnet18.pt")
torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_path)

model = torchvision.models.resnet18(weights=None)
state = torch.load(weights_path, map_location="cpu", weights_only=True)  # no pickled code executed
model.load_state_dict(state)
model.eval()
print("loaded", len(state), "tensors from", os.path.basename(weights_path))

# %%
# 2. an image folder: ImageFolder wants root/<class>/<image>
image_root = os.path.join(workdir, "images")
rng = np.random.default_rng(0)
samples = load_sample_images()
n_per_photo = 24
for name, photo in zip(["china", "flower"], samples.images):  # [427, 640, 3] uint8
    os.makedirs(os.path.join(image_root, name), exist_ok=True)
    h, w, _ = photo.shape
    for i in range(n_per_photo):
        top, left = rng.integers(0, h - 224), rng.integers(0, w - 224)
        crop = Image.fromarray(photo[top : top + 224, left : left + 224]).resize((112, 112))
        crop.save(os.path.join(image_root, name, f"{name}_{i:02d}." + ("jpg" if i % 2 else "png")))
print({d: len(os.listdir(os.path.join(image_root, d))) for d in sorted(os.listdir(image_root))})

tf = transforms.Compose(
    [
        transforms.Resize((112, 112)),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),  # ImageNet statistics
    ]
)
dataset = torchvision.datasets.ImageFolder(image_root, transform=tf)
loader = DataLoader(dataset, batch_size=16, shuffle=False, num_workers=0)
print(f"ImageFolder: {len(dataset)} images, classes {dataset.classes}")

# %% [markdown]
# ## ELFA on `layer3`, streamed from the DataLoader
#
# `fit` accepts the DataLoader directly (it takes the first element of each `(x, y)` batch) and
# keeps only the channels' running mean and co-moments, whatever the number of images. `layer3`
# gives 256 channels of 7x7 maps for 112x112 inputs: 48 images give 2,352 samples.

# %%
from captum_elfa import LayerFactorAnalysis

lfa = LayerFactorAnalysis(model, model.layer3).fit(loader, n_factors="parallel", progress=False)
print(lfa.summary())

# %%
from captum_elfa.visualization import plot_fit_summary, plot_scree

display(plot_scree(lfa))
display(plot_fit_summary(lfa))

# %% [markdown]
# ## EFAM overlays
#
# Four of the images (two crops of each photo); maps are upsampled from 7x7 to the image size. `plot_cam_vs_efam`
# puts Grad-CAM of the same layer (for each image's top class) next to the class-agnostic EFAM.

# %%
from captum_elfa.visualization import plot_cam_vs_efam, plot_efam

all_images = torch.cat([x for x, _ in loader])  # [48, 3, 112, 112]
idx = torch.tensor([0, 5, 30, 40])  # two crops of each photo ("china" first, then "flower")
display(plot_efam(lfa, all_images[idx], factors=[0, 1, 2]))
display(plot_cam_vs_efam(model, lfa, all_images[idx], model.layer3))

# %% [markdown]
# The same maps as RGB arrays, e.g. to write your own figures: `heatmap` with an overlay.

# %%
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

# %% [markdown]
# ## Comparing layers with `compare_layers`
#
# One pass over the data hooks `layer2`, `layer3` and `layer4` at once and gives an ELFA summary of
# each, plus PCACE scores for a class (with random weights there is no meaningful class; we take the
# class the network predicts most often on these images). `layer4` has 512 channels of 4x4 maps:
# 48 images give 768 samples, just enough for a factor model of 512 channels (a factor model needs
# more samples than channels; with your own data, use more images). Each layer's PCACE scores come
# with their permutation null, as in `NeuronPCACE`: the family-wise threshold and the number of
# channels above it (with 48 images chance scores are high, and a warning says so).

# %%
from captum_elfa import compare_layers

with torch.no_grad():
    top_class = int(torch.cat([model(x).argmax(1) for x, _ in loader]).mode().values)
cmp = compare_layers(
    model,
    {"layer2": model.layer2, "layer3": model.layer3, "layer4": model.layer4},
    loader,
    target=top_class,
    n_factors="kaiser",
    progress=False,
)
keys = [
    "layer",
    "activation_shape",
    "n_samples",
    "dead",
    "n_factors",
    "kmo",
    "r2",
    "res",
    "total_variance_explained",
    "pcace_max",
    "pcace_top_channels",
    "pcace_threshold",
    "pcace_significant",
]
for row in cmp.rows:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k in keys})
display(cmp.figure())


# %% [markdown]
# ## Any layer: ResNet, ConvNeXt, ViT
#
# The same calls work on any layer once its layout is said: a ResNet stage is channels-first
# `(N, C, H, W)`; the `nn.Linear` layers of a ConvNeXt block act on channels-last `(N, H, W, C)`
# data (`channel_dim=-1`); a ViT block outputs tokens `(N, 1 + h*w, C)`: `channel_dim=-1`,
# `drop_tokens=1` for the CLS token and `token_grid="auto"` to put the patches on their grid, so
# its EFAM upsamples onto the image like a conv map. A module run several times per forward pass
# (ResNet's `BasicBlock.relu`) needs `call_index` (`-1`: the last call, as Captum's
# `LayerGradCam`; `"all"`: every call's output as samples). The models here are small and
# random-initialised, on random images: the point is the shapes, not the factors.

# %%
from captum_elfa import EFAM, GradCAM, LayerFactorAnalysis, analyze

torch.manual_seed(0)
images = torch.randn(64, 3, 64, 64)  # your images, normalised as the model expects

# ResNet: a conv stage is channels-first (N, C, H, W); BasicBlock.relu runs twice per block
resnet = torchvision.models.resnet18(num_classes=10).eval()
lfa_r = LayerFactorAnalysis(resnet, resnet.layer2).fit(images, n_factors=4, progress=False)

# ViT: a block outputs tokens (N, 1 + h*w, C); drop the CLS token, put the patches on their grid
vit = torchvision.models.VisionTransformer(
    image_size=64, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
).eval()
torch.nn.init.normal_(vit.heads.head.weight)  # an untrained torchvision ViT's head is 0: every gradient would be 0
lfa_v = LayerFactorAnalysis(vit, vit.encoder.layers[1], channel_dim=-1, drop_tokens=1, token_grid="auto").fit(
    images, n_factors=4, progress=False
)

# ConvNeXt: the Linear layers of a block act on channels-last (N, H, W, C) data
convnext = torchvision.models.convnext_tiny(num_classes=10).eval()
lfa_c = LayerFactorAnalysis(convnext, convnext.features[1][0].block[5], channel_dim=-1).fit(
    images, n_factors=4, progress=False
)

for lfa in (lfa_r, lfa_v, lfa_c):
    expl = analyze(images[:4], EFAM(lfa))  # maps upsampled onto the 64x64 images
    print(expl.extras["layer_attribution"].shape, "->", tuple(expl.val.shape))
# Grad-CAM takes the same layout options, and call_index for a module run several times.
# Not on a ViT's last block: its patch tokens never reach the head (only the CLS token does), so
# the gradient there is 0 and GradCAM warns that the map says nothing
cam_v = analyze(images[:4], GradCAM(vit, vit.encoder.layers[1], channel_dim=-1, drop_tokens=1, token_grid="auto"))
cam_r = analyze(images[:4], GradCAM(resnet, resnet.layer1[0].relu, call_index=-1))  # the block's last ReLU
print("Grad-CAM:", tuple(cam_v.val.shape), tuple(cam_r.val.shape))

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s; its files are in a temporary folder (workdir)")
