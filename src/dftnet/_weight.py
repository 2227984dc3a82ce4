"""``layer.weight`` as a tensor whose writes go into the layer's spectrum.

A structured layer's parameter is ``spectrum`` (:mod:`dftnet.spectral`); ``weight`` is computed from it. So
that user code that writes a layer's weight (``nn.init.normal_(layer.weight)``, ``layer.weight.data.copy_(w)``,
``with torch.no_grad(): layer.weight.mul_(0)``, ``layer.weight[0] = 1``) does what it does for ``nn.Linear``,
the eager ``weight`` is a :class:`WeightView`: a tensor subclass that runs every torch op unchanged, on the
plain tensor, and afterwards, if the op wrote the weight's memory (its version counter moved, or its ``.data``
was replaced), loads the whole weight into the layer with ``set_weight_``. Forward, ``to_dense()`` and
``weight`` then agree, in grad mode and in inference.

What an op returns is a plain tensor, except where it shares the weight's memory (``.data``, ``detach()``,
views, in-place results): those are views too, so writes through them take effect as well. Tracers and
transforms (torch.compile, torch.export, torch.func, forward-mode AD) get a plain tensor. A write that
bypasses torch (through ``.numpy()``) is not seen and changes only that copy, never the layer's state.
"""

from __future__ import annotations

import weakref

from torch import Tensor

from ._compat import no_torch_function_subclass, tree_flatten, tree_map, version_counter

__all__ = ["WeightView"]


class WeightView(Tensor):
    """A structured layer's weight (an alias of the computed tensor, with its autograd history) that loads
    the weight into the layer (``layer.set_weight_``) after any torch op that writes it. ``_root`` is the
    tensor holding the whole weight (None: this one), for views of it."""

    _root: Tensor | None
    _layer: weakref.ref

    @staticmethod
    def wrap(t: Tensor, layer, root: Tensor | None = None) -> Tensor:
        """``t`` as a WeightView of ``layer``; a tensor of another subclass (a DTensor under FSDP) as is."""
        if type(t) is not Tensor:
            return t
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
            written = [v for v, n in zip(views, before)
                       if data_set or version_counter(v) != n or (n is None and _writes(name, kwargs))]
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


def _writes(name: str, kwargs) -> bool:
    """Whether a function of this name writes its first argument or an ``out=`` (for inference tensors,
    which have no version counter): an in-place method (``mul_``, ``copy_``, ``nn.init.normal_``),
    ``__setitem__``."""
    return "out" in kwargs or name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
