"""Sparse multi-head attention over the top-L keys per query, chosen by matching PQ codes (or, with
method.attention_selection=block, over key blocks per query block: blocks.py).

Everything on the sparse path is chunked over queries: the largest temporaries are a (chunk x S_k)
code-match count per head and the gathered (chunk x L) keys/values, never an S x S tensor. The
autograd Function saves only the inputs, the selected indices (int32, -1 = invalid slot), the output
and the log-sum-exp per query; backward recomputes the probabilities chunk by chunk and scatters dK/dV
with index_add_.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import block_sparse_attention, select_key_blocks
from .pq import codebook_loss, pq_codes


# ---------------------------------------------------------------------------------------------- selection
def keys_per_query(seq_k: int, ratio: float, min_keys: int) -> int:
    """L = ceil(ratio * S_k), at least min_keys, at most S_k."""
    return max(1, min(seq_k, max(int(min_keys), math.ceil(float(ratio) * seq_k))))


def keys_per_row(lengths: torch.Tensor, ratio: float, min_keys: int) -> torch.Tensor:
    """keys_per_query for each row's real (unpadded) key count."""
    want = torch.ceil(lengths.double() * float(ratio)).long().clamp_min(int(min_keys))
    return torch.minimum(want, lengths.long()).clamp_min(1)


@torch.no_grad()
def select_top_l(q_codes: torch.Tensor, k_codes: torch.Tensor, num_keys: int, num_centroids: int,
                 key_valid: torch.Tensor | None = None, chunk: int = 128,
                 row_keys: torch.Tensor | None = None, keep_first: int = 0) -> torch.Tensor:
    """Indices (B, H, S_q, L) int32 of the top-L causal keys per query by number of matching codes.

    q_codes (B, H, S_q, M), k_codes (B, H_kv, S_k, M); query i sits at key position S_k - S_q + i
    (a KV cache). key_valid (B, S_k) bool marks real (non-padding) keys. Ties prefer the nearer key.
    Slots with no valid key left (fewer than L causal keys, or padding) hold -1. row_keys (B,) caps
    the kept keys per batch row (L of that row's real length), so a padded row selects exactly what
    it would alone. The first `keep_first` real keys of each row (attention sinks) are always kept.
    """
    b, h, sq, m = q_codes.shape
    hkv, sk = k_codes.shape[1], k_codes.shape[2]
    g = h // hkv
    offset = sk - sq
    ko = F.one_hot(k_codes, num_centroids).reshape(b, hkv, sk, m * num_centroids).float()
    kt = ko.transpose(-1, -2)  # (B, Hkv, M*C, S_k)
    pos = torch.arange(sk, device=q_codes.device)
    out = torch.empty(b, h, sq, num_keys, dtype=torch.int32, device=q_codes.device)
    for s in range(0, sq, chunk):
        e = min(sq, s + chunk)
        t = e - s
        qo = F.one_hot(q_codes[:, :, s:e], num_centroids).reshape(b, hkv, g * t, m * num_centroids).float()
        # score = matches * S_k + key position: exact in fp32 for M*S_k < 2^24; -1 = not allowed
        score = torch.matmul(qo, kt).view(b, hkv, g, t, sk)
        score.mul_(sk).add_(pos)
        if keep_first > 0:
            rank = pos[None] if key_valid is None else key_valid.long().cumsum(-1) - 1  # (1|B, S_k)
            sink = (rank < keep_first) & (key_valid if key_valid is not None else True)
            score.add_(sink[:, None, None, None, :].to(score.dtype) * float((m + 1) * sk))
        allowed = pos[None, :] <= (offset + torch.arange(s, e, device=pos.device))[:, None]  # (t, S_k)
        if key_valid is not None:
            allowed = allowed[None] & key_valid[:, None, :]  # (B, t, S_k)
            allowed = allowed[:, None, None]
        score.masked_fill_(~allowed, -1.0)
        top, idx = score.view(b, h, t, sk).topk(num_keys, dim=-1, sorted=row_keys is not None)
        keep = top >= 0
        if row_keys is not None:
            keep &= torch.arange(num_keys, device=keep.device) < row_keys[:, None, None, None]
        out[:, :, s:e] = torch.where(keep, idx, -1).to(torch.int32)
    return out


# ---------------------------------------------------------------------------------------------- attention
def _flat_index(idx: torch.Tensor, b: int, h: int, hkv: int, sk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 slot indices (B, H, t, L) -> (row in a (B*Hkv*S_k, D) view, valid mask)."""
    valid = idx >= 0
    g = h // hkv
    base = (torch.arange(b, device=idx.device)[:, None] * hkv
            + torch.arange(h, device=idx.device)[None, :] // g) * sk  # (B, H)
    flat = base[:, :, None, None] + idx.clamp_min(0).long()
    return flat, valid


class SparseAttentionFunction(torch.autograd.Function):
    """softmax(q k_sel^T * scale) v_sel over the selected keys; invalid slots are -inf logits."""

    @staticmethod
    def forward(ctx, q, k, v, idx, scale: float, chunk: int):
        b, h, sq, _ = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        kf, vf = k.reshape(b * hkv * sk, -1), v.reshape(b * hkv * sk, -1)
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax statistics in >= fp32
        out = torch.empty(b, h, sq, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(b, h, sq, dtype=acc, device=q.device)
        for s in range(0, sq, chunk):
            e = min(sq, s + chunk)
            flat, valid = _flat_index(idx[:, :, s:e], b, h, hkv, sk)
            ks, vs = kf[flat], vf[flat]  # (B, H, t, L, D)
            logits = torch.einsum("bhtd,bhtld->bhtl", q[:, :, s:e], ks).to(acc) * scale
            logits = logits.masked_fill(~valid, float("-inf"))
            mx = logits.amax(-1, keepdim=True)
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            ex = torch.exp(logits - mx)
            tot = ex.sum(-1, keepdim=True)
            p = ex / tot.clamp_min(torch.finfo(acc).tiny)  # a row with no valid key -> zeros
            lse[:, :, s:e] = (mx + tot.log()).squeeze(-1)
            out[:, :, s:e] = torch.einsum("bhtl,bhtld->bhtd", p.to(vs.dtype), vs)
        ctx.save_for_backward(q, k, v, idx, out, lse)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, idx, out, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        b, h, sq, _ = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        kf, vf = k.reshape(b * hkv * sk, -1), v.reshape(b * hkv * sk, -1)
        dq = torch.empty_like(q)
        acc = lse.dtype
        dk = torch.zeros(kf.shape, dtype=acc, device=k.device)
        dv = torch.zeros(vf.shape, dtype=acc, device=v.device)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1)  # (B, H, S_q)
        for s in range(0, sq, chunk):
            e = min(sq, s + chunk)
            flat, valid = _flat_index(idx[:, :, s:e], b, h, hkv, sk)
            ks, vs = kf[flat], vf[flat]
            qc, go = q[:, :, s:e], grad_out[:, :, s:e]
            logits = torch.einsum("bhtd,bhtld->bhtl", qc, ks).to(acc) * scale
            l_row = lse[:, :, s:e, None]
            p = torch.where(valid & torch.isfinite(l_row), torch.exp(logits - l_row), torch.zeros_like(logits))
            dp = torch.einsum("bhtd,bhtld->bhtl", go.to(acc), vs.to(acc))
            ds = p * (dp - delta[:, :, s:e, None])  # (B, H, t, L)
            dq[:, :, s:e] = (torch.einsum("bhtl,bhtld->bhtd", ds, ks.to(acc)) * scale).to(dq.dtype)
            rows = flat.reshape(-1)
            dv.index_add_(0, rows, (p[..., None] * go.to(acc)[:, :, :, None, :]).reshape(rows.shape[0], -1))
            dk.index_add_(0, rows, (ds[..., None] * qc.to(acc)[:, :, :, None, :]).reshape(rows.shape[0], -1) * scale)
        return dq, dk.view_as(k).to(k.dtype), dv.view_as(v).to(v.dtype), None, None, None


def sparse_attention(q, k, v, idx, scale: float, chunk: int = 128) -> torch.Tensor:
    """(B, H, S_q, D) attention output over the keys in idx (see select_top_l)."""
    return SparseAttentionFunction.apply(q, k, v, idx, float(scale), int(chunk))


# ---------------------------------------------------------------------------------------------- module
@dataclass
class SPTState:
    """Shared by every SPT module of one model: phase switches, the padding mask, collected losses."""

    sparse: bool = False  # phase 2 (training): sparse attention + routed FFN
    sparse_eval: bool = True  # eval-mode forward (model.eval()) uses the sparse path
    key_mask: torch.Tensor | None = None  # (B, S_k) 2-D attention mask of the current forward
    losses: list = field(default_factory=list)  # codebook losses of the current forward
    collect: dict | None = None  # layer -> list of q/k samples (k-medians init)
    keys_per_query: list = field(default_factory=list)  # (L, S_k) of the last sparse forwards

    def active(self, training: bool) -> bool:
        return self.sparse if training else self.sparse_eval


def capture_mask(state: SPTState):
    """Forward pre-hook for the decoder stack: remember the 2-D padding mask for the attention layers."""

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        state.key_mask = mask if torch.is_tensor(mask) and mask.dim() == 2 else None
        state.losses.clear()
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        fresh = cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0
        if state.key_mask is not None and kwargs.get("position_ids") is None and fresh \
                and not bool(state.key_mask[:, 0].all()):
            # left padding: count positions from each row's first real token (as generate() does);
            # PQ codes see RoPE'd vectors, so a row's selection must not depend on its padding
            pos = (state.key_mask.long().cumsum(-1) - 1).clamp_min(0)
            return args, {**kwargs, "position_ids": pos}
        return None

    return hook


class SPTAttention(nn.Module):
    """Replaces a stock Llama-family attention module's forward; the stock module (and its linears,
    possibly LoRA-wrapped) lives on as `.attn`. Dense mode goes through the model's own attention
    interface (eager/sdpa), so it equals the stock model; sparse mode uses SparseAttentionFunction."""

    def __init__(self, attn: nn.Module, layer: int, head_dim: int, cfg: Any, state: SPTState,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.attn = attn
        self.layer = layer
        self.head_dim = head_dim
        self.cfg = cfg
        self.state = state
        m = head_dim // int(cfg.sub_dim)
        weight = attn.q_proj.weight if hasattr(attn.q_proj, "weight") else attn.q_proj.base.weight
        book = torch.randn(m, int(cfg.num_centroids), int(cfg.sub_dim), generator=generator)
        self.codebook = nn.Parameter(book.to(device=weight.device, dtype=torch.float32))
        self._modeling = sys.modules[type(attn).__module__]

    def _project(self, hidden_states, position_embeddings):
        a = self.attn
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q, k = a.q_proj(hidden_states).view(shape), a.k_proj(hidden_states).view(shape)
        if hasattr(a, "q_norm"):  # Qwen3
            q, k = a.q_norm(q), a.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = a.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self._modeling.apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def _codebook_terms(self, q: torch.Tensor, k: torch.Tensor) -> None:
        n = int(self.cfg.codebook_tokens)
        rows = torch.cat([q.detach().reshape(-1, self.head_dim), k.detach().reshape(-1, self.head_dim)])
        if self.state.collect is not None:
            pick = torch.randperm(rows.shape[0], device=rows.device)[: n]
            self.state.collect.setdefault(self.layer, []).append(rows[pick].float().cpu())
        if self.training and torch.is_grad_enabled() and self.codebook.requires_grad and self.cfg.codebook_loss_weight > 0:
            pick = torch.randperm(rows.shape[0], device=rows.device)[: n]
            self.state.losses.append(codebook_loss(rows[pick], self.codebook))

    def _key_valid(self, attention_mask, b: int, sk: int) -> torch.Tensor | None:
        mask = self.state.key_mask
        if mask is not None and mask.shape[0] == b and mask.shape[-1] >= sk:
            return mask[:, -sk:].to(torch.bool)
        if torch.is_tensor(attention_mask) and attention_mask.dim() == 4:
            # the last query row of a causal mask sees every real key (left or right padding)
            row = attention_mask[:, 0, -1, -sk:]
            return row if row.dtype == torch.bool else row == 0
        return None

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        a = self.attn
        cache = cache if cache is not None else past_key_values
        b, sq = hidden_states.shape[:2]
        q, k, v = self._project(hidden_states, position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, a.layer_idx, kwargs=kwargs)
        self._codebook_terms(q, k[:, :, -sq:])
        if self.state.active(self.training):
            sk = k.shape[2]
            key_valid = self._key_valid(attention_mask, b, sk)
            row_keys = None
            if key_valid is not None and not bool(key_valid.all()):
                row_keys = keys_per_row(key_valid.sum(-1), self.cfg.top_l_ratio, self.cfg.min_keys)
                num = int(row_keys.max())
            else:
                num = keys_per_query(sk, self.cfg.top_l_ratio, self.cfg.min_keys)
            with torch.no_grad():
                q_codes = pq_codes(q.detach(), self.codebook).view(b, q.shape[1], sq, -1)
                k_codes = pq_codes(k.detach(), self.codebook).view(b, k.shape[1], sk, -1)
            if self.cfg.attention_selection == "block":
                qb, kb = int(self.cfg.query_block), int(self.cfg.key_block)
                padded = key_valid if row_keys is not None else None  # all-valid: no per-key mask to apply
                idx = select_key_blocks(q_codes, k_codes, num, int(self.cfg.num_centroids), qb, kb, padded,
                                        row_keys, int(self.cfg.keep_first))
                self.state.keys_per_query.append((min(sk, int(idx.shape[-1]) * kb), sk))
                out = block_sparse_attention(q, k, v, idx, a.scaling, qb, kb, padded, int(self.cfg.query_chunk),
                                             self.cfg.attention_kernel)
            else:
                idx = select_top_l(q_codes, k_codes, num, int(self.cfg.num_centroids), key_valid,
                                   int(self.cfg.query_chunk), row_keys, int(self.cfg.keep_first))
                self.state.keys_per_query.append((num, sk))
                out = sparse_attention(q, k, v, idx, a.scaling, int(self.cfg.query_chunk))
            out = out.transpose(1, 2)
        else:
            interface = self._modeling.ALL_ATTENTION_FUNCTIONS.get_interface(
                a.config._attn_implementation, self._modeling.eager_attention_forward)
            extra = {"sliding_window": a.sliding_window} if getattr(a, "sliding_window", None) else {}
            out, _ = interface(a, q, k, v, attention_mask, dropout=0.0 if not self.training else a.attention_dropout,
                               scaling=a.scaling, **extra, **kwargs)
        out = out.reshape(b, sq, -1).contiguous()
        return a.o_proj(out), None
