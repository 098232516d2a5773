"""SPT configuration (arXiv 2312.10365): sparse MHA by product-quantised top-L keys + routed FFN + LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sparsetune.config.schema import MethodConfig, one_of
from sparsetune.errors import ConfigError

LORA_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class SPTConfig(MethodConfig):
    """Defaults follow the paper: PQ 8-dim sub-vectors x 16 centroids (L1), L = S/8, 4 FFN blocks top-2,
    LoRA r=16 on all linears, codebook loss weight 1e-2 — except the key selection, by blocks of keys
    (attention_selection; the paper's per-key top-L is one option away)."""

    name: str = "spt"
    # --- sparse MHA
    sparse_attention: bool = True
    sub_dim: int = 8  # dims per PQ sub-vector (head_dim must be a multiple)
    num_centroids: int = 16  # centroids per sub-space
    top_l_ratio: float = 0.125  # keys kept per query: L = ceil(ratio * S) (the paper: S/8)
    min_keys: int = 16  # L never drops below this (short sequences keep every causal key)
    # the first keep_first real keys of every row are always among the L (attention sinks; not in the
    # paper: PQ matching rarely picks the sink, and pretrained models put much of their attention there)
    keep_first: int = 0
    query_chunk: int = 128  # queries per chunk on the sparse path (bounds the chunk x S code-match tensor)
    # "block" (the default; not in the paper): each block of query_block queries keeps its top
    # ceil(L / key_block) key blocks ranked by summed code matches (the diagonal block always kept),
    # computed as dense GEMMs per block (blocks.py); "per_key" (the paper): each query keeps its own
    # top-L keys. per_key keeps more attention weight per key but gathers L keys for every query:
    # 3.2x LoRA's step time where block takes 0.55x (docs/methods/spt.md, "Key selection")
    attention_selection: str = one_of("block", "per_key", "block")
    key_block: int = 32  # keys per key block (attention_selection=block)
    query_block: int = 32  # queries per query block (attention_selection=block)
    # attention_selection=block only: "auto" = Triton kernels on CUDA when usable, else PyTorch; "torch"
    # = PyTorch always; "triton" = Triton or a ConfigError at forward time (triton_blocks.py)
    attention_kernel: str = one_of("auto", "auto", "torch", "triton")
    codebook_loss_weight: float = 1e-2
    codebook_tokens: int = 1024  # q/k vectors per layer sampled for the codebook loss each step
    kmeans_init: bool = True  # calibration (k-medians (L1) codebooks, router fit) when the engine has batches
    kmeans_batches: int = 2
    kmeans_iters: int = 10
    # --- routed FFN
    routed_ffn: bool = True
    ffn_blocks: int = 4
    ffn_top_k: int = 2
    router_init_std: float = 0.02
    # gate c = 2·p per selected block, so the task loss trains the router. "2p" (the reference code):
    # c multiplies the frozen gate, up and down projections' outputs of the block, the LoRA paths stay
    # unscaled; "2p_block": c multiplies the block's whole output, LoRA included (this project's
    # earlier form); "ste" (straight-through): c = 1 forward, the reference 2p's gradient backward. A
    # linear router cannot hold every selected p at 1/2, so 2p gates rescale the pretrained FFN
    # (docs/methods/spt.md, "Routed FFN on a pretrained model"); with every block selected "ste" is
    # the dense FFN whatever the router
    ffn_gate: str = one_of("2p", "2p", "2p_block", "ste")
    # decoder layers whose FFN is routed (None: every layer, the paper); the others stay dense
    ffn_layers: Optional[list[int]] = None
    # fit each router on the calibration batches (with kmeans_init) so it starts by picking each token's
    # blocks of largest output norm at gates 2p = 1 (not in the paper: a random router drops half of a
    # pretrained FFN at random, and the task loss alone moves it slowly)
    router_init: bool = True
    # --- LoRA on the linears (our own small LoRA so its slices can follow the FFN blocks), under
    # PEFT's names as in method=lora; target_modules are role names only
    r: int = 16
    alpha: float = 32.0
    target_modules: list[str] = one_of(list(LORA_ROLES), *LORA_ROLES)
    # --- schedule: the first warmup_ratio of the steps run dense attention + dense FFN while the
    # codebooks train (phase 1); sparse attention + routing afterwards (phase 2)
    warmup_ratio: float = 0.1
    sparse_eval: bool = True  # evaluate/generate with the sparse model (False: dense attention + FFN)
    seed: int = 0

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_config(cfg)


def check_config(cfg) -> None:
    """Ranges, one readable line per bad value (OmegaConf checks types, `check_choices` the enums)."""
    for key in ("sub_dim", "num_centroids", "min_keys", "query_chunk", "codebook_tokens", "ffn_blocks",
                "ffn_top_k", "r", "kmeans_batches", "kmeans_iters", "key_block", "query_block"):
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"method.{key}: {getattr(cfg, key)} must be a positive integer")
    if int(cfg.keep_first) < 0:
        raise ConfigError(f"method.keep_first: {cfg.keep_first} must be >= 0")
    if not 0.0 < float(cfg.top_l_ratio) <= 1.0:
        raise ConfigError(f"method.top_l_ratio: {cfg.top_l_ratio} must be in (0, 1]")
    if not 0.0 <= float(cfg.warmup_ratio) <= 1.0:
        raise ConfigError(f"method.warmup_ratio: {cfg.warmup_ratio} must be between 0 and 1")
    if cfg.ffn_top_k > cfg.ffn_blocks:
        raise ConfigError(f"method.ffn_top_k: {cfg.ffn_top_k} exceeds method.ffn_blocks={cfg.ffn_blocks}")
    if float(cfg.codebook_loss_weight) < 0:
        raise ConfigError("method.codebook_loss_weight: must be >= 0")
