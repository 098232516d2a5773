"""Fold LoRA and the HSMs into the neighbouring linears and remove hidden channels physically.

The result is a stock Hugging Face model with hidden_size = d' (heads, head_dim, intermediate size,
vocabulary and KV cache unchanged) that `AutoModelForCausalLM.from_pretrained` loads on its own.

Why the RMSNorm gains change: when every write into the residual stream is masked, the dropped
channels are exactly 0 everywhere, so mean_d(x^2) = (d'/d) mean_d'(x_keep^2) and
    g * x / sqrt(mean_d(x^2) + eps) = g * sqrt(d/d') * x_keep / sqrt(mean_d'(x_keep^2) + eps * d/d').
Hence g' = g[keep] * sqrt(d/d') and eps' = eps * d/d' (for Gemma's x * (1 + w): 1 + w' = (1 + w[keep]) *
sqrt(d/d')). Gemma scales embeddings by sqrt(hidden_size) inside the model, which becomes sqrt(d'):
the factor sqrt(d)/sqrt(d') goes into the embedding matrix.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from accelerate import init_empty_weights
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import AutoModelForCausalLM

from sparsetune.errors import UnsupportedModelError
from sparsetune.models.arch import get_arch

from .hsm import ResidualWrite

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma")


# ---------------------------------------------------------------------------------------------- maps
@dataclass
class WriteMap:
    """The linear map after a residual write: z -> diag(gain) A z, A = I + L1 L0 | D | I."""

    gain: torch.Tensor  # (d,)
    L0: torch.Tensor | None = None  # (r, d)
    L1: torch.Tensor | None = None  # (d, r)
    D: torch.Tensor | None = None  # (d, d)

    @property
    def is_diagonal(self) -> bool:
        return self.L0 is None and self.D is None

    def _t(self, x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        return None if x is None else x.detach().to(device=like.device, dtype=like.dtype)

    def rows(self, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(diag(gain) A w)[keep] for a (d, ...) weight (rows = output channels) or a (d,) bias."""
        g, L0, L1, D = (self._t(x, w) for x in (self.gain, self.L0, self.L1, self.D))
        vec = w.dim() == 1
        w2 = w[:, None] if vec else w
        if D is not None:
            out = D[keep] @ w2
        elif L0 is not None:
            out = w2[keep] + L1[keep] @ (L0 @ w2)
        else:
            out = w2[keep]
        out = out * g[keep][:, None]
        return out[:, 0] if vec else out

    def cols(self, e: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(e A^T diag(gain))[:, keep] for an embedding matrix e (V, d) whose rows are the written vectors."""
        g, L0, L1, D = (self._t(x, e) for x in (self.gain, self.L0, self.L1, self.D))
        if D is not None:
            out = e @ D[keep].T
        elif L0 is not None:
            out = e[:, keep] + (e @ L0.T) @ L1[keep].T
        else:
            out = e[:, keep]
        return out * g[keep][None, :]


# ---------------------------------------------------------------------------------------------- helpers
def base_of(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, ResidualWrite):
        module = module.inner
    return module


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _plain_lora(module) -> bool:
    """A PEFT LoRA linear without variants (DoRA) or LoRA biases: its merge is W + B A * scaling."""
    return (isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and hasattr(module, "get_delta_weight")
            and isinstance(unwrap(module.get_base_layer()), nn.Linear)
            and not getattr(module, "lora_variant", {}) and not any(getattr(module, "use_dora", {}).values())
            and not any(getattr(module, "lora_bias", {}).values()))


@torch.no_grad()
def effective_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a linear/embedding with any PEFT adapter merged, in >= float32; no side effects."""
    module = unwrap(module)
    if isinstance(module, BaseTunerLayer):
        base = module.get_base_layer()
        dt = _compute_dtype(base.weight.dtype)
        if module.disable_adapters or module.merged:
            module = base
        elif _plain_lora(module):  # W + sum of B A * scaling, without copying the layer
            weight = base.weight.detach().to(dt)
            for name in module.active_adapters:
                if name in module.lora_A:
                    weight = weight + module.get_delta_weight(name).detach().to(dt)
            bias = getattr(base, "bias", None)
            return weight, None if bias is None else bias.detach().to(dt)
        else:  # DoRA & co: let PEFT merge a copy, one layer at a time, so the live model is never touched
            merged = copy.deepcopy(module).to(dt)
            merged.merge(safe_merge=False)
            module = merged.get_base_layer()
    dt = _compute_dtype(module.weight.dtype)
    bias = getattr(module, "bias", None)
    return module.weight.detach().to(dt), None if bias is None else bias.detach().to(dt)


def check_supported(arch) -> None:
    if arch.kind != "decoder" or arch.family not in SUPPORTED_FAMILIES or arch.blocks[0].post_norms:
        fam = arch.family + (" (sandwich norms)" if arch.kind == "decoder" and arch.blocks[0].post_norms else "")
        raise UnsupportedModelError(
            f"PAT cannot prune the hidden size of a {fam} model exactly; supported: "
            f"{', '.join(SUPPORTED_FAMILIES)} (Gemma2/3 normalise each sublayer output over all channels "
            "before the residual add, so removed channels would change the surviving ones)")


def pruned_config(config, hidden: int, head_dim: int, eps_factor: float = 1.0, tied: bool | None = None):
    """A fresh (validated) config with hidden_size = d' and head_dim explicit; raises if transformers refuses it."""
    values = config.to_dict()
    values.update(hidden_size=int(hidden), head_dim=int(head_dim))
    if "rms_norm_eps" in values:
        values["rms_norm_eps"] = float(values["rms_norm_eps"]) * eps_factor
    if tied is not None:
        values["tie_word_embeddings"] = bool(tied)
    return type(config).from_dict(values)


def config_accepts(config, hidden: int, head_dim: int) -> bool:
    """Whether transformers builds a config with this hidden size (Llama rejects d' % heads != 0)."""
    try:
        pruned_config(config, hidden, head_dim)
    except Exception:  # noqa: BLE001 - any validation error means "no"
        return False
    return True


def _norm_gain(weight: torch.Tensor, keep: torch.Tensor, factor, kind: str) -> torch.Tensor:
    w = weight.detach().to(_compute_dtype(weight.dtype))[keep]
    factor = factor.to(w) if torch.is_tensor(factor) else factor
    if kind == "rms_plus_one":  # Gemma: x * (1 + w)
        return (1.0 + w) * factor - 1.0
    return w * factor


def _embed_scale(arch, hidden: int, dtype: torch.dtype) -> float:
    """Gemma's embedding multiplier as the model applies it (rounded to the weight dtype)."""
    if arch.embed_scale == 1.0:
        return 1.0
    return float(torch.tensor(float(hidden) ** 0.5).to(dtype).float())


def per_channel_params(arch) -> int:
    """Parameters that one hidden channel owns (what removing it saves), for an untied/tied stock model."""
    n = arch.embed.weight.shape[0] + 1  # embedding column + final norm gain
    if not arch.tied_embeddings and arch.head is not None:
        n += arch.head.weight.shape[0]
    for b in arch.blocks:
        for lin in (b.attn.q, b.attn.k, b.attn.v, b.mlp.up, b.mlp.gate):
            if lin is not None:
                n += unwrap(lin).weight.shape[0]
        for lin in (b.attn.o, b.mlp.down):
            n += unwrap(lin).weight.shape[1] + (1 if getattr(unwrap(lin), "bias", None) is not None else 0)
        n += len(b.norms)
    return n


def pruned_param_count(arch, params_before: int, hidden_new: int, tied_after: bool) -> int:
    """Parameter count of the exported model (stock model count minus the removed channels)."""
    after = params_before - (arch.hidden_size - hidden_new) * per_channel_params(arch)
    if arch.tied_embeddings and not tied_after:
        after += arch.embed.weight.shape[0] * hidden_new
    return after


def _keep_index(keep, hidden: int) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    keep = torch.unique(keep)  # sorted
    if keep.numel() == 0 or keep.numel() >= hidden or int(keep[0]) < 0 or int(keep[-1]) >= hidden:
        raise ValueError(f"keep index must be a non-empty proper subset of range({hidden})")
    return keep


# ---------------------------------------------------------------------------------------------- prune
@torch.no_grad()
def prune_hidden(model: nn.Module, arch=None, keep=None, *, write_maps: dict | None = None,
                 embed_map: WriteMap | None = None, assume_zero: bool = True, tie: str = "auto") -> nn.Module:
    """A new stock HF model keeping only the hidden channels `keep`; `model` is not modified.

    write_maps[(layer, "o" | "down")] and embed_map fold a linear map into each residual write first
    (PAT's HSMs with the hard gate); without them this is plain channel pruning (the baseline).
    assume_zero: the dropped channels are 0 in the residual stream (true after PAT), so the RMSNorm
    gains/eps are corrected exactly; False keeps them (statistics over d' ~ over d for a dense model).
    tie: auto = keep tied embeddings tied when the embedding map is diagonal (its inverse goes into
    the final norm gain), untie otherwise; "untie" always unties.
    `arch` is accepted for symmetry with the other helpers; modules are re-read from `model`.
    """
    hf = base_of(model)
    live = get_arch(hf)
    check_supported(live)
    d = live.hidden_size
    keep = _keep_index(keep, d)
    d2 = int(keep.numel())
    write_maps = write_maps or {}
    emb_w = unwrap(live.embed).weight
    dtype, device = emb_w.dtype, emb_w.device
    keep_dev = keep.to(device)
    norm_factor = math.sqrt(d / d2) if assume_zero else 1.0
    eps_factor = d / d2 if assume_zero else 1.0

    # embeddings (+ Gemma's sqrt(hidden) that becomes sqrt(d'))
    scale = _embed_scale(live, d, dtype) / _embed_scale(live, d2, dtype)
    E, _ = effective_weight(live.embed)
    E_new = (embed_map.cols(E, keep_dev) if embed_map is not None else E[:, keep_dev]) * scale
    final_factor: torch.Tensor | float = norm_factor
    head_new = None
    tied = live.tied_embeddings
    if tied:
        a = (embed_map.gain.to(E)[keep_dev] if embed_map is not None else torch.ones(d2, dtype=E.dtype, device=device))
        a = a * scale
        diagonal = embed_map is None or embed_map.is_diagonal
        if tie == "auto" and diagonal and bool((a.abs() > 1e-6 * a.abs().max().clamp_min(1e-30)).all()):
            final_factor = norm_factor / a  # lm_head = E' = E[:, keep] diag(a): undo a before it
        else:
            tied = False
            head_new = E[:, keep_dev]
    else:
        head_new = effective_weight(live.head)[0][:, keep_dev]

    new_cfg = pruned_config(live.model.config, d2, live.head_dim, eps_factor, tied)
    with init_empty_weights():
        new = AutoModelForCausalLM.from_config(new_cfg)
    new_arch = get_arch(new)
    done: set[int] = set()

    def put(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
        if value is None:
            return
        # always a copy: the pruned model never shares storage with the (still training) source model
        param = nn.Parameter(value.to(device=device, dtype=dtype, copy=True).contiguous())
        setattr(module, name, param)
        done.add(id(param))

    put(new_arch.embed, "weight", E_new)
    if tied:
        new_arch.head.weight = new_arch.embed.weight
    else:
        put(new_arch.head, "weight", head_new)
    put(new_arch.final_norm, "weight", _norm_gain(live.final_norm.weight, keep_dev, final_factor, live.norm_kind))
    for old_b, new_b in zip(live.blocks, new_arch.blocks):
        for role in ("q", "k", "v", "gate", "up"):
            old = getattr(old_b.attn, role, None) if role in ("q", "k", "v") else getattr(old_b.mlp, role)
            new_m = getattr(new_b.attn, role, None) if role in ("q", "k", "v") else getattr(new_b.mlp, role)
            if old is None:
                continue
            w, b = effective_weight(old)
            put(new_m, "weight", w[:, keep_dev])
            put(new_m, "bias", b)
        for role, old, new_m in (("o", old_b.attn.o, new_b.attn.o), ("down", old_b.mlp.down, new_b.mlp.down)):
            w, b = effective_weight(old)
            fmap = write_maps.get((old_b.index, role))
            put(new_m, "weight", fmap.rows(w, keep_dev) if fmap is not None else w[keep_dev])
            if b is not None:
                put(new_m, "bias", fmap.rows(b, keep_dev) if fmap is not None else b[keep_dev])
        for old_n, new_n in zip(old_b.norms, new_b.norms):
            put(new_n, "weight", _norm_gain(old_n.weight, keep_dev, norm_factor, live.norm_kind))

    # everything else (e.g. Qwen3's per-head q_norm/k_norm) is untouched by the hidden size: copy by name
    old_params = {}
    for name, p in hf.named_parameters():
        if "lora_" in name or ".hsm." in name or name.startswith("pat_") or ".pat_" in name:
            continue
        old_params[name.replace(".inner.", ".").replace(".base_layer.", ".")] = p
    for name, p in list(new.named_parameters()):
        if id(p) in done:
            continue
        src = old_params.get(name)
        if src is None or src.shape != p.shape:
            raise RuntimeError(f"pruning does not know how to fill '{name}' {tuple(p.shape)}")
        *path, last = name.split(".")
        put(new.get_submodule(".".join(path)), last, src.detach())
    if tied:
        new.tie_weights()
        assert new.get_output_embeddings().weight is new.get_input_embeddings().weight
    new.generation_config = copy.deepcopy(getattr(hf, "generation_config", new.generation_config))
    return new.to(device).eval()


def hsm_maps(model: nn.Module) -> tuple[dict, WriteMap | None]:
    """WriteMaps (gain = s * hard gate) of every ResidualWrite in a PAT-wrapped model, by (layer, role)."""
    live = get_arch(base_of(model))

    def to_map(w) -> WriteMap | None:
        if not isinstance(w, ResidualWrite):
            return None
        h = w.hsm
        gain = (h.s.detach().float() * w.mask.hard_gate().float())
        return WriteMap(gain=gain, L0=getattr(h, "L0", None), L1=getattr(h, "L1", None), D=getattr(h, "D", None))

    maps = {}
    for b in live.blocks:
        for role, module in (("o", b.attn.o), ("down", b.mlp.down)):
            m = to_map(module)
            if m is not None:
                maps[(b.index, role)] = m
    return maps, to_map(live.embed)
