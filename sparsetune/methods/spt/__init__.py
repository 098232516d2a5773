"""SPT: sparse MHA (product-quantised top-L keys) + routed FFN + LoRA (arXiv 2312.10365)."""

from .attention import SparseAttentionFunction, SPTAttention, select_top_l, sparse_attention
from .config import SPTConfig
from .ffn import LoRALinear, RoutedMLP, routed_ffn
from .method import SPT
from .pq import codebook_loss, kmedians, pq_codes

__all__ = ["SPT", "SPTConfig", "SPTAttention", "SparseAttentionFunction", "select_top_l", "sparse_attention",
           "LoRALinear", "RoutedMLP", "routed_ffn", "pq_codes", "codebook_loss", "kmedians"]
