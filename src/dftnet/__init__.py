"""DFTnet: circulant dense layers for PyTorch, computed with the FFT."""

from . import functional, init, spectral
from .convert import convert, nearest_block_weight, nearest_dft_weight
from .layers import BlockDFTLinear, DFTLinear
from .optim import param_groups
from .variants import DFT, BlockDFT, Dense, parse_variant

__version__ = "0.2.0"
__all__ = ["DFTLinear", "BlockDFTLinear", "convert", "nearest_dft_weight", "nearest_block_weight",
           "DFT", "BlockDFT", "Dense", "parse_variant", "param_groups", "functional", "init", "spectral",
           "__version__"]
