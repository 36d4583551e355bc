"""Everything that touches the user's model: one guard, the hooks, the batches, the layouts.

Every entry point of captum_elfa (ELFA, PCACE, ``analyze``, the faithfulness curves,
``compare_layers``, inversion and activation maximisation) runs the model through this module:

- :func:`model_guard` finds the model, puts it in eval mode (optionally freezing
  ``requires_grad``) and restores the training flags, the ``requires_grad`` flags and every
  buffer (BatchNorm running statistics included) on exit, also when a batch raises or on
  ``KeyboardInterrupt``.
- :class:`LayerCapture` hooks one layer, or several layers (``{name: layer}``) in one pass, and
  hands each layer's output, converted to ``(N, C, H, W)`` (:func:`to_nchw`), to a callback.
- :func:`iter_batches` / :func:`iter_batches_with_args` cut the inputs, and the per-sample Tensors
  of ``additional_forward_args``, into batches; :meth:`LayerCapture.run` moves them to the
  model's device.

Layouts (``channel_dim``): a layer's output is read as ``N`` images of ``C`` channels at some
positions. ``channel_dim`` says which dimension holds the channels: ``1`` for ``(N, C)``,
``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)``; ``-1`` for channels-last ``(N, H, W, C)``
(ConvNeXt's Linear layers, Swin) and tokens ``(N, L, C)`` (ViT). With ``channel_dim=None`` (the
default) it is ``1`` for 2-D outputs and for the outputs of channels-first modules (``ConvNd``,
``BatchNormNd``, ``GroupNorm``, ``InstanceNormNd``, pooling); any other 3-D output, any output of
an ``nn.Linear``/``nn.LayerNorm`` acting on the last dimension, and any 4-D/5-D output that looks
channels-last (its last dimension larger than dimension 1 and different from the one before it)
is refused with a message that names ``channel_dim``: a layout is never guessed silently.
Tokens: ``drop_tokens`` leading tokens (``1`` for ViT's CLS token) are left out and
``token_grid=(h, w)`` (or ``"auto"`` for a square number of tokens) puts the remaining tokens on
their patch grid, so that a ViT block gives ``(N, C, 14, 14)`` maps like a conv layer. Without a
grid the tokens become ``(N, C, L, 1)``. A 3-D volume ``(N, C, D, H, W)`` becomes
``(N, C, D*H, W)`` (every voxel a position; reshape maps back with ``.view(N, k, D, H, W)``).

Modules called several times per forward pass (ResNet's ``BasicBlock.relu``): ``call_index``
chooses the call whose output is captured. The default ``None`` refuses a module called more
than once with a message naming ``call_index`` and the parent block; an int selects one call
(``-1``, the last, is what Captum's layer attributions such as ``LayerGradCam`` use); ``"all"``
hands every call's output over as its own batch of samples (see :class:`LayerCapture`).

Submodules: :mod:`.guard` (model state), :mod:`.layout` (layouts), :mod:`.batches` (inputs,
extra arguments, devices), :mod:`.capture` (:class:`LayerCapture`). Every name is re-exported
here.
"""

from captum_elfa._capture.batches import (
    Inputs,
    check_input_tensor,
    format_additional_args,
    iter_batches,
    iter_batches_with_args,
    layer_name,
    model_device,
    split_additional_args,
)
from captum_elfa._capture.batches import (
    _check_inputs_type as _check_inputs_type,
)
from captum_elfa._capture.batches import (
    _first_tensor as _first_tensor,
)
from captum_elfa._capture.batches import (
    _move as _move,
)
from captum_elfa._capture.batches import (
    _valid_layer_examples as _valid_layer_examples,
)
from captum_elfa._capture.capture import LayerCapture, parent_block
from captum_elfa._capture.capture import _StopForward as _StopForward
from captum_elfa._capture.guard import _contains as _contains
from captum_elfa._capture.guard import _guarded_modules as _guarded_modules
from captum_elfa._capture.guard import find_model, model_guard
from captum_elfa._capture.layout import (
    CHANNELS_FIRST_MODULES,
    CallIndex,
    LayerLayout,
    TokenGrid,
    check_activation_shape,
    check_call_index,
    resolve_channel_dim,
    to_nchw,
)
from captum_elfa._capture.layout import (
    _acts_on_last_dim as _acts_on_last_dim,
)
from captum_elfa._capture.layout import (
    _grid as _grid,
)

_layer_name = layer_name  # older name, kept for callers

__all__ = [
    "LayerCapture",
    "LayerLayout",
    "model_guard",
    "find_model",
    "to_nchw",
    "resolve_channel_dim",
    "iter_batches",
    "iter_batches_with_args",
    "split_additional_args",
    "model_device",
    "format_additional_args",
    "layer_name",
    "check_activation_shape",
    "check_call_index",
    "check_input_tensor",
    "parent_block",
    "CallIndex",
    "TokenGrid",
    "Inputs",
    "CHANNELS_FIRST_MODULES",
]
