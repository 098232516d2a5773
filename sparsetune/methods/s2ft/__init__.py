"""S²FT: structured sparse fine-tuning (arXiv 2412.06289).

Train a few attention heads and FFN channels per block as small slices of frozen weights, with
partial backpropagation, and ship the update as an adapter {module, indices, delta}.

The config imports eagerly (it is light: the CLI checks a command line with it before torch loads);
everything else on first use.
"""

from sparsetune.methods import lazy_exports

from .config import S2FTConfig

__getattr__ = lazy_exports(__name__, {
    "MixedAdapterModel": ".adapter", "S2FTAdapter": ".adapter", "fingerprint": ".adapter", "switch": ".adapter",
    "S2FTLinear": ".layers", "SliceLinearFunction": ".layers", "S2FT": ".method",
    "Geometry": ".selection", "Selection": ".selection",
})
__all__ = ["S2FT", "S2FTConfig", "S2FTAdapter", "S2FTLinear", "SliceLinearFunction", "MixedAdapterModel",
           "Geometry", "Selection", "fingerprint", "switch"]
