"""What :class:`~dftnet.layers.DFTLinear` and :class:`~dftnet.layers.BlockDFTLinear` share as modules.

Both store their weight in the spectral parametrisation (:mod:`dftnet.spectral`): the parameter
``spectrum`` holds the scaled Hartley spectrum of the weight, and ``weight`` is the structured weight
computed from it (differentiable, same shape as ``spectrum``), which defines the matrix (``to_dense()``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._compat import grad_recorded, has_tangent, tracing
from .._dispatch.checks import check_input, check_method, check_positive_int
from .._dispatch.pipeline import route, structured_linear
from .._signs import apply_signs, register_sign_buffer, reset_signs
from ..kernels.taps import ParamKind
from ..spectral import SPECTRAL_GAIN
from ._weight import WeightView, like_parameter

_MISSING = object()


class _StructuredLinear(nn.Module):
    """What DFTLinear and BlockDFTLinear share: the spectral parameter and its weight, bias, sign flip,
    init, loading of version-1 state dicts (which stored ``weight`` itself), the shape check, repr."""

    # version 2: the parameter is ``spectrum`` (version 1 stored ``weight`` directly)
    _version = 2
    spectrum: nn.Parameter
    bias: nn.Parameter | None
    diagonal: nn.Parameter | None
    sign: Tensor | None

    # what each layer defines: its explicit matrix from a weight, its init, its structure and what it depends on
    def _matrix(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def _init_weight(self, weight: Tensor) -> None:
        raise NotImplementedError

    def _make_structure(self, kind: ParamKind):
        raise NotImplementedError

    def _structure_settings(self) -> tuple:
        raise NotImplementedError

    def _setup(self, in_features, out_features, weight_shape, bias, sign_flip, diagonal, method, magnitude,
               exact_extremes, factory_kwargs):
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.method = check_method(method)
        self.exact_extremes = exact_extremes
        self.spectral_scale = SPECTRAL_GAIN * magnitude
        self.spectrum = nn.Parameter(torch.empty(weight_shape, **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        if diagonal:
            self.diagonal = nn.Parameter(torch.empty(in_features, **factory_kwargs))
        else:
            self.register_parameter("diagonal", None)
        register_sign_buffer(self, in_features, sign_flip, **factory_kwargs)
        self.reset_parameters()

    @property
    def _kind(self) -> ParamKind:
        """What the layer's parameter is (its spectrum, ``spectral_scale``): the one map between ``spectrum`` and
        ``weight`` that the layer, its structure and the kernels use."""
        return ParamKind(self.spectral_scale)

    @property
    def weight(self) -> Tensor:
        """The structured weight, ``H(spectrum) * spectral_scale / n`` (differentiable).

        In eager mode a :class:`~dftnet.layers._weight.WeightView`: a write to it (``nn.init.normal_(layer.weight)``,
        ``layer.weight.data.copy_(w)``, an in-place op under ``torch.no_grad()``) loads it into ``spectrum``,
        as :meth:`set_weight_` does. Without autograd (inference) it is computed once per value of
        ``spectrum`` and reused, in the layer's inference memo (keyed on the tensor and its version
        counter, which every in-place update bumps; see :mod:`dftnet._dispatch.routes`)."""
        spectrum = self.spectrum
        if tracing() or has_tangent(spectrum):
            return self._kind.weight(spectrum)
        if grad_recorded(spectrum):
            return WeightView.wrap(self._kind.weight(spectrum), self)
        # its own memo entry: "weight" is the routes' plain weight, which a write must not reach
        return self._get_structure().memo.get("weight_view", spectrum,
                                              lambda: WeightView.wrap(self._weight_with_version(spectrum), self))

    @weight.setter
    def weight(self, value: Tensor) -> None:
        """``layer.weight = w`` loads ``w`` (as :meth:`set_weight_` does, and as ``torch.nn.utils.parametrize``
        assigns through its inverse map); a Parameter is refused, since sharing it (weight tying) cannot work."""
        if isinstance(value, nn.Parameter) or not isinstance(value, Tensor):
            raise TypeError(
                f"{type(self).__name__}.weight is computed from the parameter `spectrum` and cannot be replaced "
                f"by a {type(value).__name__} (nor tied to another module's weight); assign a tensor, or call "
                "set_weight_(tensor), to load its values"
            )
        self.set_weight_(value)

    def _weight_with_version(self, spectrum: Tensor) -> Tensor:
        """The weight without autograd, computed outside inference mode even within it: a normal tensor, whose
        version counter tells :class:`WeightView` of writes (an inference tensor has none)."""
        with torch.inference_mode(False), torch.no_grad():
            return self._kind.weight(spectrum)

    def _plain_weight(self) -> Tensor:
        """The weight as a plain tensor (what ``to_dense()`` builds on), from the routes' inference memo where
        nothing differentiates the spectrum."""
        spectrum, kind = self.spectrum, self._kind
        if grad_recorded(spectrum) or tracing() or has_tangent(spectrum):
            return kind.weight(spectrum)
        return self._get_structure().memo.get("weight", spectrum, lambda: kind.weight(spectrum))

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # before nn.Module's Parameter branch, which would raise a bare KeyError
            _StructuredLinear.weight.fset(self, value)  # type: ignore[attr-defined]  # the property's setter
        else:
            super().__setattr__(name, value)

    @torch.no_grad()
    def set_weight_(self, weight: Tensor) -> _StructuredLinear:
        """Make the layer's weight equal ``weight`` (same shape as ``spectrum``), in place."""
        if tuple(weight.shape) != tuple(self.spectrum.shape):
            raise ValueError(f"expected a weight of shape {tuple(self.spectrum.shape)}, got {tuple(weight.shape)}")
        self.spectrum.copy_(like_parameter(self._kind.param(weight.to(self.spectrum)), self.spectrum))
        return self

    def reset_parameters(self) -> None:
        """Re-draw the weight (He-style, :mod:`dftnet.init`), the bias (as ``nn.Linear``) and any signs."""
        if self.spectrum.is_meta:
            pass  # nothing to draw; to_empty() then reset_parameters() initialises for real
        else:
            weight = torch.empty_like(self.spectrum)
            self._init_weight(weight)
            self.set_weight_(weight)
        reset_signs(self)
        if self.diagonal is not None:
            nn.init.ones_(self.diagonal)
        if self.bias is not None:
            b = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -b, b)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        old, new = prefix + "weight", prefix + "spectrum"
        if old in state_dict and new not in state_dict:  # a version-1 checkpoint stored the weight itself
            w = state_dict[old]
            if tuple(w.shape) == tuple(self.spectrum.shape):
                state_dict = dict(state_dict)
                state_dict[new] = self._kind.param(w.to(torch.float64)).to(w.dtype)
                del state_dict[old]
                if self.diagonal is not None:  # version 1 had no diagonal: the identity
                    state_dict.setdefault(prefix + "diagonal", torch.ones_like(self.diagonal))
            else:
                error_msgs.append(f"size mismatch for {old}: copying a weight of shape {tuple(w.shape)}, "
                                  f"the layer's is {tuple(self.spectrum.shape)}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __getstate__(self):
        """Pickling and ``copy.deepcopy`` leave out the structure and its inference memo (cached matrices):
        the copy rebuilds them on first use."""
        state = self.__dict__.copy()
        state.pop("_structure", None)
        return state

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()`` and the like drop the structure and its inference memo, so no
        copy on the old device or in the old dtype stays alive."""
        self.__dict__.pop("_structure", None)
        return super()._apply(fn, recurse)

    def _get_structure(self):
        """The layer's structure (plan, routes, inference memo; :mod:`dftnet._dispatch.routes`), rebuilt when a
        setting it depends on (``_structure_settings``) changed."""
        settings = self._structure_settings()
        cached = self.__dict__.get("_structure")
        if cached is None or cached[0] != settings:
            cached = self.__dict__["_structure"] = (settings, self._make_structure(self._kind))
        return cached[1]

    def forward(self, input: Tensor) -> Tensor:
        """``dft_linear`` / ``block_dft_linear`` of ``D x`` with the layer's weight and bias, computed from
        the stored spectrum directly (on the circular route no FFT of the weight, forward or backward)."""
        check_input(type(self).__name__, input, self.in_features, self._param("spectrum").device)
        diagonal = self._param("diagonal")
        if diagonal is not None:
            diagonal = diagonal.to(input.dtype)
        return structured_linear(self._get_structure(), apply_signs(input, self._buffers["sign"]),
                                 self._param("spectrum"), self._param("bias"), self.method, self.exact_extremes,
                                 diagonal)

    def route(self, batch: int, training: bool | None = None) -> str:
        """The route a call on ``batch`` rows (``input.numel() // in_features``) takes, "fft" or "dense": the
        decision the forward itself makes (:func:`dftnet._dispatch.pipeline.route`). ``training``: whether autograd
        records the call; None, whether it would now for an input that needs no gradient (grad mode on and
        a parameter requiring grad)."""
        spectrum = self._param("spectrum")
        if training is None:
            training = grad_recorded(spectrum, self._param("diagonal"))
        return route(self._get_structure(), self.method, batch, spectrum.device.type, training)

    def _param(self, name: str):
        """A parameter by name, read from ``_parameters`` (cheaper than ``nn.Module.__getattr__``), or as
        an attribute where a tool replaced it (``torch.nn.utils.prune``, ``parametrize``)."""
        value = self._parameters.get(name, _MISSING)
        return getattr(self, name) if value is _MISSING else value

    def to_dense(self) -> Tensor:
        """The explicit ``(out_features, in_features)`` matrix ``S diag(sign) diag(diagonal)``."""
        W = self._matrix(self._plain_weight())
        if self.sign is not None:
            W = W * self.sign.to(W.dtype)
        return W if self.diagonal is None else W * self.diagonal

    def _repr_tail(self) -> str:
        s = f", bias={self.bias is not None}"
        if self.method != "auto":
            s += f", method={self.method!r}"
        if self.sign is not None:
            s += ", sign_flip=True"
        if self.exact_extremes:
            s += ", exact_extremes=True"
        if (self.diagonal is not None) != self._default_diagonal:
            s += f", diagonal={self.diagonal is not None}"
        return s
