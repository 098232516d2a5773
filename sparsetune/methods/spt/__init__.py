"""SPT: sparse MHA (product-quantised top-L keys) + routed FFN + LoRA (arXiv 2312.10365).

The config imports eagerly (it is light: the CLI checks a command line with it before torch loads);
everything else on first use."""

from sparsetune.methods import lazy_exports

from .config import SPTConfig

__getattr__ = lazy_exports(__name__, {
    "SparseAttentionFunction": ".attention", "SPTAttention": ".attention", "select_top_l": ".attention",
    "sparse_attention": ".attention", "LoRALinear": ".ffn", "RoutedMLP": ".ffn", "routed_ffn": ".ffn",
    "SPT": ".method", "codebook_loss": ".pq", "kmedians": ".pq", "pq_codes": ".pq",
})
__all__ = ["SPT", "SPTConfig", "SPTAttention", "SparseAttentionFunction", "select_top_l", "sparse_attention",
           "LoRALinear", "RoutedMLP", "routed_ffn", "pq_codes", "codebook_loss", "kmedians"]
