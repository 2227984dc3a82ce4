"""DFTnet: circulant dense layers for PyTorch, computed with the FFT."""

from . import functional
from .block import BlockDFTLinear
from .convert import convert, nearest_block_weight, nearest_dft_weight
from .layers import DFTLinear

__version__ = "0.1.0"
__all__ = ["DFTLinear", "BlockDFTLinear", "convert", "nearest_dft_weight", "nearest_block_weight",
           "functional", "__version__"]
