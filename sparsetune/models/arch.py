"""The one place that knows where things live inside each supported architecture family.

Methods never reach into `model.model.layers[i].self_attn` themselves: they ask an `Arch` for the
projections, head geometry, norms and embeddings. Head geometry is read from the config (explicit
`head_dim` wins over hidden/heads), and grouped-query attention is described by `num_kv_heads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sparsetune.errors import UnsupportedModelError

DECODER_FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
}
ENCODER_FAMILIES = {"vit": "vit", "deit": "deit"}
SUPPORTED = sorted(set(DECODER_FAMILIES) | set(ENCODER_FAMILIES))

# The one table of role names. Roles name a block's linears the same way in every family; configs may
# also use the HF attribute names (q_proj, ..., ViT's query/key/value) or a group (attention / mlp).
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
ROLE_ALIASES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "query": "q", "key": "k", "value": "v",
}
ROLE_GROUPS = {
    "attn": ("q", "k", "v", "o"), "attention": ("q", "k", "v", "o"), "self_attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"), "ffn": ("gate", "up", "down"),
}


def canonical_role(name: str) -> str:
    """'q_proj' -> 'q', 'q' -> 'q'; unknown names come back unchanged (the caller reports them)."""
    return ROLE_ALIASES.get(name, name)


def expand_roles(names, available=ROLES) -> list[str]:
    """Canonical roles for a config list: aliases mapped, groups (attn, mlp, ...) expanded to the roles in
    `available` (ViT has no gate), duplicates dropped, order kept; unknown names pass through unchanged."""
    out: list[str] = []
    for name in names:
        group = ROLE_GROUPS.get(name)
        for role in ([r for r in group if r in available] if group else [canonical_role(name)]):
            if role not in out:
                out.append(role)
    return out


@dataclass
class Attention:
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per kv-head (1 for plain multi-head attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass
class MLP:
    module: nn.Module
    up: nn.Linear
    down: nn.Linear
    gate: nn.Linear | None = None  # SwiGLU/GeGLU decoders; None for ViT's GELU MLP

    @property
    def intermediate_size(self) -> int:
        return self.up.out_features


@dataclass
class Block:
    index: int
    module: nn.Module
    attn: Attention
    mlp: MLP
    # every norm inside the block that reads the residual stream, in forward order
    norms: list[nn.Module] = field(default_factory=list)
    # norms applied to a sublayer's output before it is added to the residual (Gemma2/3)
    post_norms: list[nn.Module] = field(default_factory=list)

    def linears(self) -> dict[str, nn.Module]:
        """Role -> linear of this block (no "gate" where the MLP has none)."""
        roles = {"q": self.attn.q, "k": self.attn.k, "v": self.attn.v, "o": self.attn.o,
                 "gate": self.mlp.gate, "up": self.mlp.up, "down": self.mlp.down}
        return {role: m for role, m in roles.items() if m is not None}


@dataclass
class Arch:
    """Geometry and module locations of a supported model."""

    family: str
    kind: str  # "decoder" | "encoder"
    model: nn.Module
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    blocks: list[Block]
    embed: nn.Module  # token embedding (decoder) or patch-projection conv (encoder)
    final_norm: nn.Module
    head: nn.Module  # lm_head or classifier
    tied_embeddings: bool
    norm_kind: str  # "rms" | "rms_plus_one" (Gemma: x * (1 + w)) | "layer"
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(hidden)
    extra_heads: list[nn.Module] = field(default_factory=list)  # DeiT distillation head

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def name_of(self, module: nn.Module) -> str:
        """Dotted name of a module inside the model (for PEFT targets, adapters, logs)."""
        for name, mod in self.model.named_modules():
            if mod is module:
                return name
        raise KeyError("module is not part of this model")

    def linear_names(self) -> dict[str, str]:
        """Short role name -> attribute name in a block, used for LoRA target lists."""
        b = self.blocks[0]
        roles = b.linears()
        prefix = self.name_of(b.module) + "."
        return {role: self.name_of(m)[len(prefix):] for role, m in roles.items()}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _head_dim(config) -> int:
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def _decoder(model: nn.Module, family: str) -> Arch:
    config = _text_config(model.config)
    base = getattr(model, "model", model)
    if hasattr(base, "language_model"):
        base = base.language_model
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = _head_dim(config)
    blocks = []
    for i, layer in enumerate(base.layers):
        a, m = layer.self_attn, layer.mlp
        norms = [layer.input_layernorm]
        post = []
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma2/3 sandwich norms
            norms.append(layer.pre_feedforward_layernorm)
            post = [layer.post_attention_layernorm, layer.post_feedforward_layernorm]
        else:
            norms.append(layer.post_attention_layernorm)
        blocks.append(
            Block(
                index=i,
                module=layer,
                attn=Attention(a, a.q_proj, a.k_proj, a.v_proj, a.o_proj, heads, kv, head_dim),
                mlp=MLP(m, up=m.up_proj, down=m.down_proj, gate=m.gate_proj),
                norms=norms,
                post_norms=post,
            )
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = base.embed_tokens
    tied = head is not None and head.weight is embed.weight
    is_gemma = family == "gemma"
    return Arch(
        family=family,
        kind="decoder",
        model=model,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        blocks=blocks,
        embed=embed,
        final_norm=base.norm,
        head=head,
        tied_embeddings=tied,
        norm_kind="rms_plus_one" if is_gemma else "rms",
        embed_scale=float(config.hidden_size) ** 0.5 if is_gemma else 1.0,
    )


def _encoder(model: nn.Module, family: str) -> Arch:
    config = model.config
    base = getattr(model, family)
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    blocks = []
    layers = base.layers if hasattr(base, "layers") else base.encoder.layer
    for i, layer in enumerate(layers):
        if hasattr(layer, "mlp"):  # transformers >= 5: attention.{q,k,v,o}_proj, mlp.fc1/fc2
            at = layer.attention
            attn = Attention(at, at.q_proj, at.k_proj, at.v_proj, at.o_proj, heads, heads, head_dim)
            mlp = MLP(layer.mlp, up=layer.mlp.fc1, down=layer.mlp.fc2)
        else:  # transformers 4.x: attention.attention.{query,key,value}, intermediate/output.dense
            sa = layer.attention.attention
            attn = Attention(layer.attention, sa.query, sa.key, sa.value, layer.attention.output.dense,
                             heads, heads, head_dim)
            mlp = MLP(layer, up=layer.intermediate.dense, down=layer.output.dense)
        blocks.append(Block(index=i, module=layer, attn=attn, mlp=mlp,
                            norms=[layer.layernorm_before, layer.layernorm_after]))
    if hasattr(model, "classifier"):
        head, extra = model.classifier, []
    else:  # DeiTForImageClassificationWithTeacher
        head, extra = model.cls_classifier, [model.distillation_classifier]
    return Arch(
        family=family,
        kind="encoder",
        model=model,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        blocks=blocks,
        embed=base.embeddings.patch_embeddings.projection,
        final_norm=base.layernorm,
        head=head,
        tied_embeddings=False,
        norm_kind="layer",
        extra_heads=extra,
    )


def model_type_of(model: nn.Module) -> str:
    return getattr(_text_config(model.config), "model_type", None) or model.config.model_type


def get_arch(model: nn.Module) -> Arch:
    """Describe `model`; raises UnsupportedModelError naming the supported families."""
    model_type = model_type_of(model)
    if model_type in DECODER_FAMILIES:
        return _decoder(model, DECODER_FAMILIES[model_type])
    if model_type in ENCODER_FAMILIES:
        return _encoder(model, ENCODER_FAMILIES[model_type])
    raise UnsupportedModelError(
        f"unsupported architecture '{model_type}'; supported families: {', '.join(SUPPORTED)}"
    )
