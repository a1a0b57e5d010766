"""numgru: fast CPU gated recurrent units in Numba."""
from .layers import GRU, GRUCell, Linear

__version__ = "0.1.0"
__all__ = ["GRU", "GRUCell", "Linear", "__version__"]
