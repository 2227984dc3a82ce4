"""``layer.weight`` as a tensor whose writes go into the layer's spectrum.

A structured layer's parameter is ``spectrum`` (:mod:`dftnet.spectral`); ``weight`` is computed from it. So
that user code that writes a layer's weight (``nn.init.normal_(layer.weight)``, ``layer.weight.data.copy_(w)``,
``with torch.no_grad(): layer.weight.mul_(0)``, ``layer.weight[0] = 1``) does what it does for ``nn.Linear``,
the eager ``weight`` is a :class:`WeightView`: a tensor subclass that runs every torch op unchanged, on the
plain tensor, and afterwards, if the op wrote the weight's memory (its version counter moved, or its ``.data``
was replaced), loads the whole weight into the layer with ``set_weight_``. Forward, ``to_dense()`` and
``weight`` then agree, in grad mode and in inference.

What an op returns is a plain tensor, except where it shares the weight's memory (``.data``, ``detach()``,
views, in-place results): those are views too, so writes through them take effect as well. Writes are seen
through version counters (so the weight is never an inference tensor: the layer computes it outside
inference mode). Tracers and transforms (torch.compile, torch.export, torch.func, forward-mode AD) get a
plain tensor. A write that bypasses torch (through ``.numpy()``) is not seen and changes only that copy,
never the layer's state.

Under FSDP2 the weight is a DTensor computed from the sharded spectrum, and a write to it cannot be loaded
into the shards: there it is a :class:`GuardedDTensor`, whose writes raise a ``RuntimeError`` that names
``set_weight_`` and ``load_state_dict``, rather than being lost.
"""

from __future__ import annotations

import sys
import weakref
from functools import cache

import torch
from torch import Tensor

from .._compat import no_torch_function_subclass, tree_flatten, tree_map, version_counter

__all__ = ["WeightView"]


class WeightView(Tensor):
    """A structured layer's weight (an alias of the computed tensor, with its autograd history) that loads
    the weight into the layer (``layer.set_weight_``) after any torch op that writes it. ``_root`` is the
    tensor holding the whole weight (None: this one), for views of it."""

    _root: Tensor | None
    _layer: weakref.ref

    @staticmethod
    def wrap(t: Tensor, layer, root: Tensor | None = None) -> Tensor:
        """``t`` as a WeightView of ``layer``; a DTensor (FSDP2) as a :class:`GuardedDTensor`, a tensor of
        another subclass as is."""
        if type(t) is not Tensor:
            return _guarded(t)
        with no_torch_function_subclass():
            view = t.as_subclass(WeightView)
        view._root, view._layer = root, weakref.ref(layer)
        return view

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _AS_PLAIN:  # pickling, copying, printing: as the plain tensor (no layer reference)
            args = tree_map(_plain, args)
        views = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, WeightView)]
        with no_torch_function_subclass():
            before = [version_counter(v) for v in views]
            out = func(*args, **kwargs)
            data_set = name == "__set__" and getattr(func, "__self__", None) is Tensor.data
            written = [v for v, n in zip(views, before) if data_set or version_counter(v) != n]
            for v in written:  # the whole weight; for `.data = t`, the tensor whose data was replaced
                layer = v._layer()
                if layer is not None:
                    layer.set_weight_((v if data_set or v._root is None else v._root).detach())
        if not views or views[0]._layer() is None:
            return out
        owner = views[0]
        root = owner if owner._root is None else owner._root
        data = name == "__get__" and getattr(func, "__self__", None) is Tensor.data  # its own version counter

        def wrap(o):  # what shares the weight's memory stays a WeightView, so writes through it count
            if isinstance(o, Tensor) and not isinstance(o, WeightView) and not o.is_meta and o.dtype == root.dtype \
                    and o.untyped_storage().data_ptr() == root.untyped_storage().data_ptr():
                return WeightView.wrap(o, owner._layer(), None if data else root)
            return o

        with no_torch_function_subclass():
            return tree_map(wrap, out)


_AS_PLAIN = {"__reduce_ex__", "__deepcopy__", "__repr__"}


def _plain(a):
    if not isinstance(a, WeightView):
        return a
    with no_torch_function_subclass():
        return a.as_subclass(Tensor)


_WRITE_ERROR = (
    "layer.weight is a DTensor (FSDP2) computed from the sharded parameter `spectrum`; a write to it cannot "
    "reach the shards and would be lost. Load a weight with layer.set_weight_(weight) or load_state_dict instead"
)


def _guarded(t: Tensor) -> Tensor:
    """A DTensor as a :class:`GuardedDTensor` (differentiably: the same value and autograd history); any
    other tensor as is."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: t cannot be a DTensor
    if dtensor is None or not isinstance(t, dtensor.DTensor) or isinstance(t, _guarded_type()):
        return t
    if torch.is_inference_mode_enabled():  # a normal tensor, whose version counter sees writes; no autograd
        with torch.inference_mode(False), torch.no_grad():
            return _Guard.apply(t)
    return _Guard.apply(t)


def like_parameter(value: Tensor, parameter: Tensor) -> Tensor:
    """``value`` (a plain tensor of the parameter's shape) sharded as ``parameter`` is, where that is a DTensor
    (FSDP2; every rank passes the same value), so that ``parameter.copy_`` takes it; else ``value``."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None or not isinstance(parameter, dtensor.DTensor) or isinstance(value, dtensor.DTensor):
        return value
    return dtensor.distribute_tensor(value, parameter.device_mesh, parameter.placements)


class _Guard(torch.autograd.Function):
    """The identity from a DTensor to a :class:`GuardedDTensor` of the same shards."""

    @staticmethod
    def forward(ctx, t):
        return _guarded_type()(t._local_tensor, t._spec, requires_grad=False)

    @staticmethod
    def backward(ctx, grad):
        return grad


@cache
def _guarded_type() -> type:
    """:class:`GuardedDTensor`, defined on first use (it subclasses DTensor, from torch.distributed)."""
    from torch.distributed.tensor import DTensor

    class GuardedDTensor(DTensor):
        """A structured layer's weight under FSDP2: a DTensor whose writes (seen by its version counter, or
        a ``.data`` assignment) raise ``RuntimeError``; what shares its memory (views, ``.data``,
        ``detach()``) is guarded too, and every other result is a plain DTensor."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            guarded = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, cls)]
            if getattr(func, "__name__", "") in _AS_PLAIN:  # pickling, copying, printing: as a plain DTensor
                args = tree_map(lambda a: DTensor(a._local_tensor, a._spec, requires_grad=a.requires_grad)
                                if isinstance(a, cls) else a, args)
            with no_torch_function_subclass():
                if getattr(func, "__name__", "") == "__set__" and getattr(func, "__self__", None) is Tensor.data \
                        and guarded:
                    raise RuntimeError(_WRITE_ERROR)
                before = [v._version for v in guarded]
                out = func(*args, **kwargs)
                if any(v._version != n for v, n in zip(guarded, before)):
                    raise RuntimeError(_WRITE_ERROR)
                if not guarded:
                    return out
                memory = guarded[0]._local_tensor.untyped_storage().data_ptr()

                def shares(o) -> bool:
                    return isinstance(o, DTensor) and not isinstance(o, cls) \
                        and o._local_tensor.untyped_storage().data_ptr() == memory

            return tree_map(lambda o: _guarded(o) if shares(o) else o, out)

    return GuardedDTensor
