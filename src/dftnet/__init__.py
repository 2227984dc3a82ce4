"""DFTnet: circulant dense layers for PyTorch, computed with the FFT."""

from . import functional
from .layers import DFTLinear

__version__ = "0.1.0"
__all__ = ["DFTLinear", "functional", "__version__"]
