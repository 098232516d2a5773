"""SPT as a sparsetune Method: LoRA on the linears, sparse MHA (PQ top-L) and routed FFN installed by
module replacement on a stock Hugging Face Llama-family decoder; codebooks trained by the extra loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sparsetune.errors import ConfigError, UnsupportedModelError
from sparsetune.methods.base import Method, MethodContext, config_dict

from .attention import SPTAttention, SPTState, capture_mask
from .config import SPTConfig
from .ffn import LoRALinear, RoutedMLP
from .pq import kmedians

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
EXPORT_FILE = "spt_adapter.safetensors"
EXPORT_META = "spt_adapter.json"


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _decoder_stack(model: nn.Module, first_block: nn.Module) -> nn.Module:
    """The module whose `layers` hold the blocks (it receives the 2-D attention mask)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and layers[0] is first_block:
            return module
    raise UnsupportedModelError("SPT: could not find the decoder layer stack")


class SPT(Method):
    """Sparse MHA + routed FFN + LoRA (arXiv 2312.10365), two phases: dense warm-up, then sparse."""

    config_class = SPTConfig
    ddp_find_unused = True  # FFN blocks no token routes to in a step get no gradient
    stock_export = False  # export/ is SPT's own format; merged = the dense model (export_merged)
    no_peft_reason = "its sparse attention and routed FFN are not PEFT modules"
    merged_note = ("SPT's sparse attention (PQ top-L key selection) and routed FFN have no stock Hugging Face "
                   "equivalent and are dropped: this folder is the SPT model run dense (LoRA merged), i.e. "
                   "`method.sparse_eval=false`. The sparse model is the `adapter` format (`sparsetune eval run=...`).")

    def __init__(self, cfg: SPTConfig):
        super().__init__(cfg)
        self.state = SPTState(sparse=float(cfg.warmup_ratio) == 0.0, sparse_eval=bool(cfg.sparse_eval))
        self.attention: list[SPTAttention] = []
        self.ffn: list[RoutedMLP] = []
        self.codebooks_initialised = False
        self.kmeans_vectors = 0
        self.router_agreement: float | None = None
        self._hook = None
        self._last_codebook_loss: float | None = None

    # ------------------------------------------------------------------ apply
    def check_model(self, arch) -> None:
        if arch.kind != "decoder" or arch.family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(f"SPT does not support '{arch.family}' models; supported families: "
                                        f"{', '.join(SUPPORTED_FAMILIES)}")
        if arch.head_dim % int(self.cfg.sub_dim):
            raise ConfigError(f"method.sub_dim: {self.cfg.sub_dim} does not divide head_dim {arch.head_dim}")
        if arch.intermediate_size % int(self.cfg.ffn_blocks):
            raise ConfigError(f"method.ffn_blocks: {self.cfg.ffn_blocks} does not divide the FFN width "
                              f"{arch.intermediate_size}")
        layers = self.cfg.ffn_layers
        if layers is not None and any(not 0 <= int(i) < len(arch.blocks) for i in layers):
            raise ConfigError(f"method.ffn_layers: {list(layers)} has an index outside the model's "
                              f"{len(arch.blocks)} layers (0-{len(arch.blocks) - 1})")
        for b in arch.blocks:
            if self.cfg.sparse_attention and getattr(b.attn.module, "sliding_window", None):
                raise UnsupportedModelError("SPT: sliding-window attention layers are not supported "
                                            f"(layer {b.index}); use a config without sliding windows")
            if self.cfg.routed_ffn and b.mlp.gate is None:
                raise UnsupportedModelError("SPT: the routed FFN needs a gated (SwiGLU) MLP")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        if self.attention or self.ffn:
            raise RuntimeError("SPT.apply was already called; build a new SPT for another model")
        self.ctx, arch = ctx, ctx.arch
        self.check_model(arch)
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        for p in model.parameters():
            p.requires_grad_(False)
        names = arch.linear_names()
        for b in arch.blocks:
            for role in self.cfg.target_modules:
                if role not in names:
                    continue
                base = b.module.get_submodule(names[role])
                _set(b.module, names[role], LoRALinear(base, int(self.cfg.r), float(self.cfg.alpha), gen))
        for b in arch.blocks:
            if self.cfg.sparse_attention:
                wrapped = SPTAttention(b.attn.module, b.index, arch.head_dim, self.cfg, self.state, gen)
                _set(model, arch.name_of(b.attn.module), wrapped)
                self.attention.append(wrapped)
            if self.cfg.routed_ffn and (self.cfg.ffn_layers is None or b.index in self.cfg.ffn_layers):
                routed = RoutedMLP(b.mlp.module, arch.hidden_size, self.cfg, self.state, gen, b.index)
                _set(model, arch.name_of(b.mlp.module), routed)
                self.ffn.append(routed)
        self._hook = _decoder_stack(model, arch.blocks[0].module).register_forward_pre_hook(
            capture_mask(self.state), with_kwargs=True)
        if self.cfg.kmeans_init and not self.codebooks_initialised and ctx.calibration_batches is not None:
            self.init_codebooks(model, ctx.calibration_batches(int(self.cfg.kmeans_batches)))
        return model

    @torch.no_grad()
    def init_codebooks(self, model: nn.Module, batches: list[dict]) -> None:
        """Calibration on a dense forward over `batches`: k-medians codebooks from the q/k vectors
        (after RoPE), and (router_init) routers fitted to rank each token's FFN blocks by output norm."""
        if not (self.attention or self.ffn) or not batches:
            return
        device = next(model.parameters()).device
        saved = (self.state.sparse, self.state.sparse_eval, model.training)
        self.state.sparse = self.state.sparse_eval = False
        self.state.collect = {}
        model.eval()
        try:
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                model(**inputs)
            gen = torch.Generator().manual_seed(int(self.cfg.seed))
            for attn in self.attention:
                rows = torch.cat(self.state.collect.get(attn.layer, []))
                if rows.shape[0] < int(self.cfg.num_centroids):
                    continue
                book = kmedians(rows, int(self.cfg.num_centroids), int(self.cfg.sub_dim), int(self.cfg.kmeans_iters), gen)
                attn.codebook.copy_(book.to(attn.codebook.device))
                self.kmeans_vectors = int(rows.shape[0])
            if self.cfg.router_init:
                agree = []
                for mlp in self.ffn:
                    samples = self.state.collect.get(("ffn", mlp.layer), [])
                    if samples:
                        x = torch.cat([s[0] for s in samples])
                        agree.append(mlp.fit_router(x, torch.cat([s[1] for s in samples])))
                self.router_agreement = sum(agree) / len(agree) if agree else None
            self.codebooks_initialised = True
        finally:
            self.state.sparse, self.state.sparse_eval = saved[0], saved[1]
            self.state.collect = None
            model.train(saved[2])

    # ------------------------------------------------------------------ training hooks
    def extra_loss(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        losses, self.state.losses = self.state.losses, []
        if not losses:
            return {}
        loss = torch.stack([term.float() for term in losses]).mean()
        self._last_codebook_loss = float(loss.detach())
        return {"codebook": loss * float(self.cfg.codebook_loss_weight)}

    def on_step(self, step: int, total_steps: int) -> None:
        self.state.sparse = step >= float(self.cfg.warmup_ratio) * total_steps

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"spt_sparse": float(self.state.sparse)}
        if self.router_agreement is not None:
            out["spt_router_init_agreement"] = self.router_agreement
        if self._last_codebook_loss is not None:
            out["spt_codebook_loss"] = self._last_codebook_loss
        if self.state.keys_per_query:
            num, sk = self.state.keys_per_query[-1]
            out["spt_attention_density"] = num / sk
            self.state.keys_per_query.clear()
        usage = [m.usage for m in self.ffn if m.usage is not None]
        if usage:
            out["spt_ffn_block_usage_max"] = float(torch.stack(usage).max()) / int(self.cfg.ffn_top_k)
        return out

    def notices(self) -> list[str]:
        if self.cfg.sparse_attention and self.cfg.kmeans_init and not self.codebooks_initialised:
            return ["SPT: codebooks were not k-medians initialised (no calibration batches); random init"]
        return []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"sparse": self.state.sparse, "codebooks_initialised": self.codebooks_initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.sparse = bool(state.get("sparse", self.state.sparse))
        self.codebooks_initialised = bool(state.get("codebooks_initialised", False))

    # ------------------------------------------------------------------ export
    def export(self, model: nn.Module, path: Path) -> Path:
        """`spt_adapter.safetensors` (LoRA A/B, routers, codebooks) + `spt_adapter.json` (config)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(path / EXPORT_FILE))
        meta = {"method": "spt", "config": config_dict(self.cfg),
                "base_model": str(getattr(model.config, "_name_or_path", "") or "")}
        (path / EXPORT_META).write_text(json.dumps(meta, indent=2))
        (path / "README.md").write_text(
            "# SPT adapter\n\nLoRA factors, FFN routers and PQ codebooks for "
            f"`{meta['base_model']}` (sparsetune method `spt`, arXiv 2312.10365). Load with "
            "`sparsetune eval run=<run>` or `SPT(cfg).load_export(base_model, this_folder)`.\n")
        return path

    def export_merged(self, model: nn.Module, path: Path) -> Path:
        """The dense stock model (see merged_note), written as a Hugging Face folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.to_dense(model).save_pretrained(path)
        return path

    @torch.no_grad()
    def to_dense(self, model: nn.Module) -> nn.Module:
        """In place: LoRA merged into each linear, the attention and FFN wrappers replaced by the stock
        modules they wrap (codebooks and routers dropped); ends training."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

        def replace(kind, inner):
            for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, inner(module))

        def merged(lin: LoRALinear) -> nn.Module:
            lin.base.weight.copy_(lin.merged_weight())
            return lin.base

        replace(LoRALinear, merged)  # innermost first: the wrappers' paths are still valid
        replace(SPTAttention, lambda m: m.attn)
        replace(RoutedMLP, lambda m: m.mlp)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        path = Path(path)
        if not (path / EXPORT_FILE).exists():
            return None
        self.codebooks_initialised = True  # the export holds trained codebooks: no k-medians
        model = self.apply(model, MethodContext.of(model))
        tensors = load_file(str(path / EXPORT_FILE))
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
        unknown = [n for n in tensors if n not in params]
        if missing or unknown:
            raise ConfigError(f"SPT export {path} does not match this model/config "
                              f"(missing {missing[:3]}, unexpected {unknown[:3]})")
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t)
        return model
