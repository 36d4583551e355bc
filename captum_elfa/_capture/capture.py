"""The capture: hooks on one or several layers, batch by batch, with layouts and repeated calls."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from captum_elfa._capture.batches import (
    _move,
    _valid_layer_examples,
    check_input_tensor,
    format_additional_args,
    layer_name,
    model_device,
)
from captum_elfa._capture.guard import find_model, model_guard
from captum_elfa._capture.layout import CallIndex, LayerLayout, TokenGrid, resolve_channel_dim, to_nchw
from captum_elfa._validation import CaptumElfaError

__all__ = ["LayerCapture", "parent_block"]


class _StopForward(BaseException):
    """Raised by a hook to end a forward pass once every hooked layer has delivered (a
    BaseException, so that a model's ``except Exception`` does not swallow it)."""


def parent_block(forward_func: Any, layer: nn.Module) -> str:
    """Where ``layer`` sits, for messages: ``"inside 'layer1.0', a BasicBlock"``."""
    model = find_model(forward_func, [layer])
    if not isinstance(model, nn.Module):
        return f"a {type(layer).__name__} of an unknown model"
    for name, mod in model.named_modules():
        if mod is layer and name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            if not parent:
                return f"inside the model, a {type(model).__name__}"
            return f"inside '{parent}', a {type(model.get_submodule(parent)).__name__}"
    return f"inside the model, a {type(model).__name__}"


def _call_hint(calls: int) -> str:
    return (
        f"pass call_index=0..{calls - 1}, -1 for the last call, or 'all' "
        "(every call's output as its own batch of samples)"
    )


class LayerCapture:
    r"""Context manager that hooks one or several layers and runs ``forward_func`` batch by batch.

    Inside the ``with`` block, :meth:`run` feeds one batch through the model (moved, with the
    Tensors of its extra arguments, to the model's device) and hands each hooked layer's output,
    converted to ``(N, C, H, W)`` by its :class:`LayerLayout`, to ``on_output``. For a single
    layer ``on_output(activation, batch_index)`` is called; for ``layer={name: module}`` it is
    ``on_output(name, activation, batch_index)``. The call happens inside the layer's forward
    hook, before any later in-place operation (a ``ReLU(inplace=True)``) can change the tensor;
    only for the first batch of a module called several times with a negative ``call_index``
    is the output copied and handed over after the forward pass (then the number of calls is
    known). The model is guarded by :func:`model_guard` for the whole block.

    Modules called several times per forward pass (``call_index``):

    - ``None`` (default): a module called more than once is refused after the first forward
      pass, with a message naming its parent block and ``call_index`` (the first call has then
      already been handed to ``on_output``; the error ends the run).
    - an int ``k >= 0``: the ``k``-th call (0-based); negative: counted from the last call
      (``-1``, what Captum's ``LayerGradCam`` uses).
    - ``"all"``: every call's output is handed to ``on_output`` as its own batch of samples,
      in call order, all with the same ``batch_index``. A consumer counting samples therefore
      counts ``n_calls * N`` images per batch of ``N`` inputs: ELFA's ``n_images_`` (and its
      moments) and PCACE's sample count include every call; ELFA's ``attribute`` returns the
      maps of all calls, call after call within each batch.

    Every batch must call each module the same number of times as the first one (checked
    after each full forward pass).

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layer (nn.Module or dict of str to nn.Module): the layer(s) whose output is captured.
        on_output (Callable): see above.
        eval_mode (bool): run the model in eval mode (warning if it was in training mode).
                    Default: True.
        grad (bool): run with autograd enabled. Default: False (``torch.no_grad``).
        channel_dim, token_grid, drop_tokens, call_index: the layout (see :class:`LayerLayout`
                    and the module docstring); each may be one value for every layer or a dict
                    by layer name. Defaults: None (decided or refused), None, 0, None (refuse
                    a module called more than once).
        freeze_grad (bool): ``requires_grad=False`` on every parameter for the run. Default: False.
        layout (bool): convert the outputs to ``(N, C, H, W)``; False hands the raw output
                    (still refusing non-Tensor outputs). Default: True.
        what (str): the caller's name for the training-mode warning.
        stop_early (bool): from the second batch on, end the forward pass as soon as every
                    hooked layer has delivered its call(s) (the rest of the network is not run;
                    :meth:`run` then returns None). The first batch always runs to the end, so
                    the number of calls of each layer is known and checked there (for ``"all"``
                    and negative ``call_index`` the later batches stop after the last call of
                    that count). For callers that need only the activations (ELFA's fit).
                    Default: False.

    Examples::

        >>> acts = []
        >>> with LayerCapture(resnet, resnet.layer1[0].relu, lambda a, i: acts.append(a),
        ...                   call_index=-1) as cap:
        ...     cap.run(images, 0)
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Union[nn.Module, Mapping[str, nn.Module]],
        on_output: Callable[..., None],
        eval_mode: bool = True,
        grad: bool = False,
        *,
        channel_dim: Union[None, int, Mapping[str, Optional[int]]] = None,
        token_grid: Union[TokenGrid, Mapping[str, TokenGrid]] = None,
        drop_tokens: Union[int, Mapping[str, int]] = 0,
        call_index: Union[CallIndex, Mapping[str, CallIndex]] = None,
        freeze_grad: bool = False,
        layout: bool = True,
        what: str = "captum_elfa",
        stop_early: bool = False,
    ) -> None:
        if not callable(forward_func):
            raise CaptumElfaError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self._single = isinstance(layer, nn.Module)
        if self._single:
            assert isinstance(layer, nn.Module)
            items = [(layer_name(forward_func, layer), layer)]
        elif isinstance(layer, Mapping):
            items = list(layer.items())
        else:
            raise CaptumElfaError(
                f"layer must be a torch.nn.Module (or a dict {{name: module}}), got {type(layer).__name__}"
            )
        if not items:
            raise CaptumElfaError("no layer to capture; pass at least one module")
        for name, mod in items:
            if not isinstance(mod, nn.Module):
                raise CaptumElfaError(f"layer {name!r} must be a torch.nn.Module, got {type(mod).__name__}")
            if isinstance(forward_func, nn.Module) and not any(m is mod for m in forward_func.modules()):
                raise CaptumElfaError(
                    f"layer {name!r} ({type(mod).__name__}) is not a submodule of the model "
                    f"{type(forward_func).__name__}; pass one of its modules, e.g. "
                    f"{_valid_layer_examples(forward_func)}"
                )

        def per(value: Any, name: str, default: Any) -> Any:
            if isinstance(value, Mapping):
                return value.get(name, default)
            return value

        self.layouts: Dict[str, LayerLayout] = {
            n: LayerLayout(
                per(channel_dim, n, None), per(token_grid, n, None), per(drop_tokens, n, 0), per(call_index, n, None)
            )
            for n, _ in items
        }
        self.items = items
        self.forward_func = forward_func
        self.layer = items[0][1]
        self.layer_name = items[0][0]
        self.on_output = on_output
        self.eval_mode = eval_mode
        self.grad = grad
        self.freeze_grad = freeze_grad
        self.layout = layout
        self.what = what
        self.device = model_device(forward_func, self.layer)
        self.shapes: Dict[str, Tuple[int, ...]] = {}  # raw output shape (batch excluded) per layer
        self._handles: List[RemovableHandle] = []
        self._guard: Any = None
        self._calls: Dict[str, int] = {n: 0 for n, _ in items}
        self._resolved: Dict[str, int] = {}  # the (non-negative) call delivered, known after batch 0
        self._n_calls: Dict[str, int] = {}  # calls per forward pass, known after batch 0
        self._pending: Dict[str, List[Tensor]] = {}
        self._batch_index = -1
        self._lock = threading.Lock()
        self.stop_early = bool(stop_early) and not grad
        self._delivered: Dict[str, int] = {}
        self._stopping = False
        self._complete = 0  # batches run to the end of the forward pass

    @property
    def n_calls(self) -> Dict[str, int]:
        """Calls of each hooked layer per forward pass (known after the first batch)."""
        return dict(self._n_calls)

    # -- model state -------------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        self._guard = model_guard(
            self.forward_func,
            [m for _, m in self.items],
            eval_mode=self.eval_mode,
            freeze_grad=self.freeze_grad,
            what=self.what,
            stacklevel=5,
        )
        self._guard.__enter__()
        try:
            for name, mod in self.items:
                self._handles.append(mod.register_forward_hook(self._make_hook(name, mod)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending = {}
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.__exit__(*(exc if len(exc) == 3 else (None, None, None)))

    # -- running -----------------------------------------------------------------------------
    def _expected(self, name: str) -> int:
        """Deliveries of ``name`` per forward pass (known after the first batch)."""
        return self._n_calls[name] if self.layouts[name].call_index == "all" else 1

    def _deliver(self, name: str, mod: nn.Module, out: Tensor) -> None:
        if self.layout:
            lay = self.layouts[name]
            cd = resolve_channel_dim(out.shape, lay.channel_dim, mod, name)
            act = to_nchw(out, cd, lay.token_grid, lay.drop_tokens, name)
        else:
            act = out
        if name not in self.shapes:
            self.shapes[name] = tuple(int(s) for s in out.shape[1:])
        if self._single:
            self.on_output(act, self._batch_index)
        else:
            self.on_output(name, act, self._batch_index)
        self._delivered[name] = self._delivered.get(name, 0) + 1
        if self._stopping and all(self._delivered.get(n, 0) >= self._expected(n) for n, _ in self.items):
            raise _StopForward()

    def _make_hook(self, name: str, mod: nn.Module) -> Callable:
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            with self._lock:
                k = self._calls[name]
                self._calls[name] = k + 1
                if not isinstance(out, Tensor):
                    raise CaptumElfaError(
                        f"layer '{name}' returned a {type(out).__name__}, not a Tensor; choose a layer whose "
                        "output is a Tensor (N, C, ...) or (N, ..., C), e.g. a submodule of this one"
                    )
                ci = self.layouts[name].call_index
                if ci == "all":
                    self._deliver(name, mod, out)
                    return
                if name in self._resolved:
                    if k == self._resolved[name]:
                        self._deliver(name, mod, out)
                    return
                if ci is None:
                    if k == 0:
                        self._deliver(name, mod, out)
                    return
                assert isinstance(ci, int)
                if ci >= 0:
                    if k == ci:
                        self._deliver(name, mod, out)
                    return
                # negative call_index, first batch: keep every call until the count is known
                self._pending.setdefault(name, []).append(out.clone() if self.grad else out.detach().clone())

        return hook

    def _check_calls(self, name: str, mod: nn.Module, calls: int, index: int) -> None:
        ci = self.layouts[name].call_index
        if calls == 0:
            raise CaptumElfaError(
                f"layer '{name}' was never called by the model's forward pass; "
                "choose a layer that the forward function actually runs"
            )
        if ci is None and calls > 1:
            raise CaptumElfaError(
                f"layer '{name}' is called {calls} times per forward pass ({parent_block(self.forward_func, mod)}); "
                + _call_hint(calls)
            )
        if name in self._n_calls:
            if calls != self._n_calls[name]:
                raise CaptumElfaError(
                    f"layer '{name}' was called {calls} times in batch {index} but {self._n_calls[name]} "
                    f"times in the first batch; call_index={ci!r} needs the same number of calls every batch"
                )
            return
        if isinstance(ci, int) and (ci >= calls or ci < -calls):
            raise CaptumElfaError(
                f"call_index={ci} is not valid for layer '{name}', which is called {calls} time(s) per "
                f"forward pass ({parent_block(self.forward_func, mod)}); use 0..{calls - 1}, -1 (the last call) "
                "or 'all'"
            )

    def run(self, batch: Tensor, index: int, additional_forward_args: Any = None) -> Any:
        """Run one batch through the model; returns the model's output (None after an early stop)."""
        if not isinstance(batch, Tensor):
            raise CaptumElfaError(f"batch {index} is a {type(batch).__name__}, expected a Tensor")
        if batch.dim() == 0 or batch.shape[0] == 0:
            raise CaptumElfaError(f"batch {index} is empty (shape {tuple(batch.shape)})")
        check_input_tensor(batch, f"batch {index}")
        batch = _move(batch, self.device)
        extra = tuple(_move(a, self.device) for a in format_additional_args(additional_forward_args))
        for n in self._calls:
            self._calls[n] = 0
        self._pending = {}
        self._batch_index = index
        self._delivered = {}
        # every layer's call count is known after the first batch: later batches may stop there
        self._stopping = self.stop_early and self._complete > 0
        try:
            with torch.set_grad_enabled(self.grad):
                output = self.forward_func(batch, *extra)
        except _StopForward:
            self._pending = {}
            return None
        finally:
            self._stopping = False
        for name, mod in self.items:
            calls = self._calls[name]
            self._check_calls(name, mod, calls, index)
            if name in self._n_calls:
                continue
            ci = self.layouts[name].call_index
            self._n_calls[name] = calls
            if ci == "all":
                continue
            k = 0
            if isinstance(ci, int):
                k = ci if ci >= 0 else calls + ci
            self._resolved[name] = k
            if isinstance(ci, int) and ci < 0:
                pending = self._pending.pop(name)
                self._deliver(name, mod, pending[k])
        self._pending = {}
        self._complete += 1
        return output
