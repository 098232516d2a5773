"""PAT: pruning-aware tuning (arXiv 2408.14721).

Hybrid sparsification modules on every residual-stream write share one trainable hidden-channel
mask; after training they are folded into the neighbouring linears and the pruned hidden channels are
removed, leaving a smaller stock Hugging Face model.

The config imports eagerly (it is light: the CLI checks a command line with it before torch loads);
everything else on first use.
"""

from sparsetune.methods import lazy_exports

from .config import PATConfig

__getattr__ = lazy_exports(__name__, {
    "HSM": ".hsm", "ResidualWrite": ".hsm", "hidden_importance": ".importance", "top_channels": ".importance",
    "SharedMask": ".mask", "beta_at": ".mask", "tau_at": ".mask", "WriteMap": ".merge", "prune_hidden": ".merge",
    "PAT": ".method",
})
__all__ = ["PAT", "PATConfig", "HSM", "ResidualWrite", "SharedMask", "WriteMap", "prune_hidden",
           "hidden_importance", "top_channels", "tau_at", "beta_at"]
