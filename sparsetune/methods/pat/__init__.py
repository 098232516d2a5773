"""PAT: pruning-aware tuning (arXiv 2408.14721).

Hybrid sparsification modules on every residual-stream write share one trainable hidden-channel
mask; after training they are folded into the neighbouring linears and the pruned hidden channels are
removed, leaving a smaller stock Hugging Face model.
"""

from .config import PATConfig
from .hsm import HSM, ResidualWrite
from .importance import hidden_importance, top_channels
from .mask import SharedMask, beta_at, tau_at
from .merge import WriteMap, prune_hidden
from .method import PAT

__all__ = ["PAT", "PATConfig", "HSM", "ResidualWrite", "SharedMask", "WriteMap", "prune_hidden",
           "hidden_importance", "top_channels", "tau_at", "beta_at"]
