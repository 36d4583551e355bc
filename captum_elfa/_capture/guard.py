"""The model-state guard: find the model behind ``forward_func``, run it in eval mode, restore it."""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["find_model", "model_guard"]


def _contains(root: nn.Module, layers: Sequence[nn.Module]) -> bool:
    mods = {id(m) for m in root.modules()}
    return all(id(layer) in mods for layer in layers)


def find_model(forward_func: Any, layers: Sequence[nn.Module] = ()) -> Optional[nn.Module]:
    """The ``nn.Module`` that ``forward_func`` runs, or None if it cannot be found.

    In this order: ``forward_func`` itself if it is an ``nn.Module``; the owner of a bound method
    (``model.forward``); the function of a ``functools.partial``; and for a plain function or a
    lambda, the ``nn.Module`` among the variables it closes over or the globals it names that
    contains every one of ``layers`` (the largest such module).
    """
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    if isinstance(forward_func, functools.partial):
        return find_model(forward_func.func, layers)
    candidates: List[nn.Module] = []
    for cell in getattr(forward_func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, nn.Module):
            candidates.append(value)
    code = getattr(forward_func, "__code__", None)
    glob = getattr(forward_func, "__globals__", None)
    if code is not None and isinstance(glob, dict):
        for name in code.co_names:
            value = glob.get(name)
            if isinstance(value, nn.Module):
                candidates.append(value)
    fitting = [c for c in candidates if _contains(c, layers)] if layers else candidates
    if not fitting:
        return None
    return max(fitting, key=lambda m: sum(1 for _ in m.modules()))


def _guarded_modules(forward_func: Any, layers: Sequence[nn.Module], stacklevel: int) -> List[nn.Module]:
    root = find_model(forward_func, layers)
    roots: List[nn.Module] = [root] if root is not None else []
    if root is None and layers:
        warnings.warn(
            f"forward_func is a {type(forward_func).__name__} and captum_elfa cannot find the model it "
            "runs: only the hooked layers' own modules are put in eval mode and restored (BatchNorm or "
            "Dropout elsewhere in the model run in their current mode). Pass the model itself "
            "(an nn.Module) or a bound method such as model.forward as forward_func",
            UserWarning,
            stacklevel=stacklevel,
        )
    roots.extend(layers)
    mods: Dict[int, nn.Module] = {}
    for r in roots:
        for m in r.modules():
            mods[id(m)] = m
    return list(mods.values())


@contextmanager
def model_guard(
    forward_func: Any,
    layers: Union[None, nn.Module, Sequence[nn.Module]] = None,
    *,
    eval_mode: bool = True,
    freeze_grad: bool = False,
    what: str = "captum_elfa",
    stacklevel: int = 3,
) -> Iterator[List[nn.Module]]:
    r"""Run the model in eval mode and give it back exactly as it was.

    The model is found by :func:`find_model`; if it cannot be (a plain function hiding the
    model), the modules of ``layers`` are guarded and a ``UserWarning`` says what to pass. On
    entry every guarded module is put in eval mode (a ``UserWarning`` if the model was in
    training mode: dropout is off and batch norm uses its running statistics) and, with
    ``freeze_grad``, every parameter's ``requires_grad`` is set to False. On exit, whatever
    happened (an exception in a batch, ``KeyboardInterrupt``), the training flag of every module,
    the ``requires_grad`` flag of every parameter and the value (and identity) of every buffer
    are restored, so BatchNorm's running statistics are unchanged even if some forward ran in
    training mode.

    Args:
        forward_func (Callable or nn.Module): the model, or any function running it.
        layers (nn.Module or sequence of nn.Module, optional): the hooked layers (used to find
                    the model behind a plain function, and always guarded).
        eval_mode (bool): put the modules in eval mode. Default: True.
        freeze_grad (bool): set ``requires_grad=False`` on every parameter for the run (the
                    inputs of an optimisation keep theirs). Default: False.
        what (str): the name of the caller for the training-mode warning.
        stacklevel (int): ``stacklevel`` of the warnings.

    Yields:
        list of nn.Module: the guarded modules.

    Examples::

        >>> with model_guard(model):
        ...     out = model(x)     # eval mode; flags and BatchNorm statistics restored afterwards
    """
    if layers is None:
        layer_list: List[nn.Module] = []
    elif isinstance(layers, nn.Module):
        layer_list = [layers]
    else:
        layer_list = list(layers)
    mods = _guarded_modules(forward_func, layer_list, stacklevel + 2)
    training = [(m, m.training) for m in mods]
    params: Dict[int, nn.Parameter] = {}
    buffers: List[Tuple[nn.Module, str, Tensor, Tensor]] = []
    for m in mods:
        for p in m.parameters(recurse=False):
            params[id(p)] = p
        for name, b in m.named_buffers(recurse=False):
            buffers.append((m, name, b, b.detach().clone()))
    requires_grad = [(p, p.requires_grad) for p in params.values()]
    root = find_model(forward_func, layer_list)
    if eval_mode and root is not None and root.training:
        warnings.warn(
            f"{type(root).__name__} is in training mode; {what} runs it in eval mode (dropout off, "
            "batch-norm running statistics) and restores training mode afterwards",
            UserWarning,
            stacklevel=stacklevel,
        )
    try:
        if eval_mode:
            for m in mods:
                m.eval()
        if freeze_grad:
            for p, flag in requires_grad:
                if flag:
                    p.requires_grad_(False)
        yield mods
    finally:
        for m, flag in training:
            if m.training != flag:
                m.train(flag)
        for p, flag in requires_grad:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        with torch.no_grad():
            for m, name, ref, saved in buffers:
                if m._buffers.get(name) is not ref:
                    m._buffers[name] = ref
                if ref.shape == saved.shape:
                    ref.copy_(saved)
