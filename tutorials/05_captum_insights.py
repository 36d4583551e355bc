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
# # 5. Captum Insights with ELFA
#
# [Captum Insights](https://captum.ai/docs/captum_insights) is Captum's web app for browsing a
# model's predictions and attributions. `captum_elfa.insights.register` adds three methods to its
# menu, next to Captum's own (Integrated Gradients, Saliency, ...):
#
# * **EFAM (ELFA)**: the Essential Feature Attribution Map of a fitted `LayerFactorAnalysis`,
#   upsampled to the image with `LayerAttribution.interpolate` (the UI lets you pick the combined
#   map or one factor, the normalisation and the interpolation);
# * **Grad-CAM (ELFA)**: Captum's `LayerGradCam`, upsampled (ReLU on or off, interpolation);
# * **SmoothGrad (ELFA)**: signed gradients averaged over noisy copies (number of samples, noise
#   standard deviation).
#
# Insights was **removed in captum 0.9**. It needs `captum<0.9`, `numpy<2`, `flask` and
# `flask-compress`: `pip install "captum-elfa[insights]"`. With a newer captum this notebook still
# runs: it trains the model and fits ELFA, and the Insights cells print why they do nothing.

# %%
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars
warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"  # no paths
import captum

from captum_elfa import LayerFactorAnalysis
from captum_elfa.demo import train_digits_cnn

t_start = time.perf_counter()
captum_version = tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in captum.__version__.split(".")[:2])
HAS_INSIGHTS = captum_version < (0, 9)
if HAS_INSIGHTS:
    print(f"captum {captum.__version__}: Captum Insights is available")
else:
    print(
        f"captum {captum.__version__} has no Captum Insights (removed in captum 0.9). To run the "
        'Insights cells, install captum<0.9: pip install "captum-elfa[insights]" '
        "(captum==0.8.0, numpy<2, flask, flask-compress). They are skipped here."
    )

# %% [markdown]
# ## A grayscale CNN on scikit-learn's digits, and ELFA on its last convolution

# %%
# captum_elfa.demo.DigitsCNN (conv1 relu1 conv2 relu2 pool flatten fc), seeded, trained on all the digits
model, x_all, y_all, acc = train_digits_cnn(15, seed=0)
classes = [str(i) for i in range(10)]
print(f"training accuracy {acc:.2f}")

lfa = LayerFactorAnalysis(model, model.conv2).fit(x_all[:500], n_factors=4, progress=False)
print("factors:", lfa.loadings_.shape[1])

# %% [markdown]
# ## Grayscale models: give Insights 3 channels
#
# Insights draws every image feature as an RGB picture, so it needs 3-channel inputs (a
# 1-channel input fails when it is drawn). For a grayscale model:
#
# 1. wrap the model in a module that takes `[N, 3, H, W]` and averages the channels (or takes one)
#    before calling it: `captum_elfa.insights.GrayscaleToRGB(model)`, which is just
#
#    ```python
#    class GrayscaleToRGB(nn.Module):
#        def __init__(self, model):
#            super().__init__(); self.model = model
#        def forward(self, x):
#            return self.model(x.mean(dim=1, keepdim=True))
#    ```
# 2. give the visualizer the wrapped model and the images repeated to 3 channels,
#    `x.repeat(1, 3, 1, 1)`: the wrapper gives the grayscale image back exactly, so predictions
#    and attributions are the grayscale model's (an attribution is the same on the three
#    channels).
#
# The `lfa` fitted on the grayscale model is registered as it is: its layer is inside the wrapper,
# and EFAM is computed through the model the visualizer passes.

# %%
if HAS_INSIGHTS:
    from captum_elfa.insights import AttributionVisualizer, Batch, GrayscaleToRGB, ImageFeature, register

    rgb_model = GrayscaleToRGB(model)
    names = register(lfa, model=rgb_model, smoothgrad_n=20, smoothgrad_std=0.1)
    print("added to the Insights menu:", names)

    visualizer = AttributionVisualizer(
        models=[rgb_model],
        classes=classes,
        features=[ImageFeature("Digit", baseline_transforms=None, input_transforms=None)],
        dataset=[Batch(x_all[i : i + 4].repeat(1, 3, 1, 1), labels=y_all[i : i + 4]) for i in range(0, 16, 4)],
    )
    print("methods:", visualizer.get_insights_config()["methods"])
else:
    print("skipped: captum", captum.__version__, "has no Captum Insights")

# %% [markdown]
# ## Serve it
#
# `visualizer.serve(blocking=False)` starts Insights' web server in a background thread and
# returns its port: open `http://localhost:PORT/`, pick **EFAM (ELFA)** in *Attribution Method*,
# adjust its arguments and press **Fetch**. In a script, `serve(blocking=True)` keeps it running;
# `bind_all=True` listens on every interface (e.g. in a container). In Jupyter,
# `visualizer.render()` shows the app in the notebook instead (it needs `ipywidgets`).
#
# Below, the notebook asks its own server for the app's configuration, which is how the page
# learns the method menu.

# %%
if HAS_INSIGHTS:
    import json
    import socket
    import urllib.request

    with socket.socket() as s:  # a free port on this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    port = visualizer.serve(blocking=False, port=port)
    url = f"http://localhost:{port}/"
    for _ in range(100):  # wait (at most ~10 s) for the server to answer
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/init", timeout=2) as r:
                served = json.load(r)
            break
        except OSError:
            time.sleep(0.1)
    print("Captum Insights is at", url)
    print("its method menu:", served["methods"])
    print("EFAM's arguments in the UI:", {k: v["limit"] for k, v in served["method_arguments"]["EFAM (ELFA)"].items()})
else:
    print("skipped: captum", captum.__version__, "has no Captum Insights")

# %% [markdown]
# `captum_elfa.insights.unregister()` takes our methods out of the menu again. The EFAM the app
# draws is `lfa.attribute(x)` upsampled to the image,
# `LayerAttribution.interpolate(lfa.attribute(x), x.shape[2:], "bilinear")`, shown as its magnitude
# with Insights' own colour map.

# %%
from captum.attr import LayerAttribution

x = x_all[:1]
efam = LayerAttribution.interpolate(lfa.attribute(x), tuple(x.shape[2:]), "bilinear")
print("EFAM of the first digit:", tuple(efam.shape), f"range [{efam.min():.2f}, {efam.max():.2f}]")
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
