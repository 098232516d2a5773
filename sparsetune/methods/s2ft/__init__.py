"""S²FT: structured sparse fine-tuning (arXiv 2412.06289).

Train a few attention heads and FFN channels per block as small slices of frozen weights, with
partial backpropagation, and ship the update as an adapter {module, indices, delta}.
"""

from .adapter import MixedAdapterModel, S2FTAdapter, fingerprint, switch
from .config import S2FTConfig
from .layers import S2FTLinear, SliceLinearFunction
from .method import S2FT
from .selection import Geometry, Selection

__all__ = ["S2FT", "S2FTConfig", "S2FTAdapter", "S2FTLinear", "SliceLinearFunction", "MixedAdapterModel",
           "Geometry", "Selection", "fingerprint", "switch"]
