"""The structured layers as ``nn.Module``s: :class:`DFTLinear` and :class:`BlockDFTLinear`.

Both store their weight in the spectral parametrisation (:mod:`dftnet.spectral`): the parameter
``spectrum`` holds the scaled Hartley spectrum of the weight, and ``weight`` is the structured weight
computed from it (differentiable, same shape as ``spectrum``), which defines the matrix (``to_dense()``).
What they share is :mod:`dftnet.layers._structured`; each layer has its own module.
"""

from ._block import BlockDFTLinear
from ._dft import DFTLinear

__all__ = ["DFTLinear", "BlockDFTLinear"]

# the public path, for pickles, reprs and documentation
DFTLinear.__module__ = BlockDFTLinear.__module__ = __name__
