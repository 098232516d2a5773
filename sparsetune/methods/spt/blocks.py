"""Sparse attention by key blocks: each block of queries attends to its top key blocks, ranked by PQ codes.

The per-key form (attention.py) gathers L keys for every query, so its product is a batch of
vector-matrix products. Here a block of `query_block` queries shares one set of key blocks
(`key_block` keys each), so the product is a batch of dense (query_block x k*key_block) GEMMs and
the gathered keys/values are `query_block` times smaller than the per-key gathers.

Ranking: the score of a (query block, key block) pair is the SUM over its query/key pairs of their
matching-code counts. The sum factors through code histograms (score = hist_q . hist_k per
sub-space/centroid), so it costs O(blocks^2 * M * C) with no S x S tensor, and it ranks a key block
by the total match of all its keys to all the block's queries, the block-level analogue of the mass
softmax puts there. The max would need every pair's count (an S x S product) and would rank a block
on one outlier pair.

Exactness: invalid slots (no allowed block), keys past S_k, padded keys and keys after a query
(causal, inside the diagonal block) are -inf logits, never an index-0 stand-in; a row with no valid
key is zeros. The autograd Function saves only q, k, v, the block indices, the output and the
log-sum-exp per query, and recomputes the gathers in backward (dK/dV accumulated with index_put_).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparsetune.errors import ConfigError

from .triton_blocks import triton_block_sparse_attention, unusable_reason


def num_blocks(length: int, block: int) -> int:
    return max(1, math.ceil(length / block))


def _block_hist(codes: torch.Tensor, block: int, nblocks: int, num_centroids: int,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (B, H, S, M) -> per-block code histograms (B, H, nblocks, M*C) float32; `valid` (B, S)
    drops masked positions from the counts."""
    b, h, s, m = codes.shape
    block_of = (torch.arange(s, device=codes.device) // block)[:, None] * (m * num_centroids)
    slot = block_of + torch.arange(m, device=codes.device)[None, :] * num_centroids  # (S, M)
    index = (slot + codes).reshape(b, h, s * m)
    if valid is None:
        src = torch.ones(index.shape, dtype=torch.float32, device=codes.device)
    else:
        src = valid[:, None, :, None].to(torch.float32).expand(b, h, s, m).reshape(b, h, s * m)
    hist = torch.zeros(b, h, nblocks * m * num_centroids, dtype=torch.float32, device=codes.device)
    hist.scatter_add_(-1, index, src)
    return hist.view(b, h, nblocks, m * num_centroids)


def diagonal_blocks(seq_q: int, seq_k: int, query_block: int, key_block: int) -> int:
    """The most key blocks one query block's own positions span (always kept: each query sees itself)."""
    offset = seq_k - seq_q
    most = 1
    for s in range(0, seq_q, query_block):
        first, last = offset + s, offset + min(seq_q, s + query_block) - 1
        most = max(most, last // key_block - first // key_block + 1)
    return most


@torch.no_grad()
def select_key_blocks(q_codes: torch.Tensor, k_codes: torch.Tensor, num_keys: int, num_centroids: int,
                      query_block: int, key_block: int, key_valid: torch.Tensor | None = None,
                      row_keys: torch.Tensor | None = None, keep_first: int = 0) -> torch.Tensor:
    """Key-block indices (B, H, nQ, k) int32 per query block, -1 = unused slot.

    q_codes (B, H, S_q, M), k_codes (B, H_kv, S_k, M); query i sits at key position S_k - S_q + i.
    k = ceil(num_keys / key_block), at least the diagonal blocks. A key block is allowed for a query
    block when some query of it may see some valid key of it (causal, key_valid (B, S_k)). The key
    blocks holding the query block's own positions are always kept, and with keep_first the blocks
    holding each row's first keep_first real keys (attention sinks); the rest rank by summed code
    matches, ties to the nearer block. row_keys (B,) caps each row's blocks at ceil(row_keys / key_block).
    """
    b, h, sq, m = q_codes.shape
    hkv, sk = k_codes.shape[1], k_codes.shape[2]
    g = h // hkv
    nq, nk = num_blocks(sq, query_block), num_blocks(sk, key_block)
    diag = diagonal_blocks(sq, sk, query_block, key_block)
    least = diag + (1 if keep_first > 0 else 0)  # a sink block is never crowded out by the diagonal
    k_sel = min(nk, max(math.ceil(num_keys / key_block), least))
    offset = sk - sq
    dev = q_codes.device
    hq = _block_hist(q_codes, query_block, nq, num_centroids)  # (B, H, nQ, MC)
    hk = _block_hist(k_codes, key_block, nk, num_centroids, key_valid)  # (B, Hkv, nK, MC)
    # exact integer sums in fp32 while query_block * key_block * M < 2^24
    match = torch.matmul(hq.view(b, hkv, g * nq, -1), hk.transpose(-1, -2)).view(b, h, nq, nk).double()
    jb = torch.arange(nk, device=dev)
    first_q = offset + torch.arange(nq, device=dev) * query_block  # key position of each block's first query
    last_q = offset + torch.clamp(torch.arange(nq, device=dev) * query_block + query_block, max=sq) - 1
    # a block is allowed when its first valid key is at or before the block's last query
    first_key = (jb * key_block)[None, :]  # (1|B, nK)
    pad = nk * key_block - sk
    if key_valid is not None:
        kpos = torch.arange(nk * key_block, device=dev).view(nk, key_block)
        kv = F.pad(key_valid, (0, pad)).view(b, nk, key_block)
        first_key = torch.where(kv, kpos, nk * key_block).amin(-1)  # (B, nK); no valid key -> never
    allowed = first_key[:, None, None, :] <= last_q[None, None, :, None]  # (1|B, 1, nQ, nK)
    diagonal = (jb[None, :] >= first_q[:, None] // key_block) & (jb[None, :] <= last_q[:, None] // key_block)
    bonus = diagonal[None, None].double() * 2.0  # diagonal blocks first, then sinks, then by matches
    if keep_first > 0:
        if key_valid is not None:
            rank = key_valid.long().cumsum(-1) - 1
            sink = F.pad((rank < keep_first) & key_valid, (0, pad)).view(b, nk, key_block).any(-1)
        else:
            sink = (jb * key_block < keep_first)[None, :]
        bonus = torch.maximum(bonus, sink[:, None, None, :].double())
    top_score = float(query_block * key_block * m + 1) * nk
    score = match * nk + jb.double() + bonus * top_score
    score = score.masked_fill(~allowed, -1.0)
    top, idx = score.topk(k_sel, dim=-1, sorted=row_keys is not None)
    keep = top >= 0
    if row_keys is not None:
        row_blocks = torch.clamp(torch.ceil(row_keys.double() / key_block).long(), min=least)
        keep &= torch.arange(k_sel, device=dev) < row_blocks[:, None, None, None]
    # ascending, unused slots first: the diagonal blocks (the highest allowed) are the last slots
    return torch.where(keep, idx, -1).sort(-1).values.to(torch.int32)


# ---------------------------------------------------------------------------------------------- attention
def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (..., S, D) -> (..., rows, D), zeros appended (no copy when nothing is appended)."""
    return x if x.shape[-2] == rows else F.pad(x, (0, 0, 0, rows - x.shape[-2]))


def _flat(idx: torch.Tensor, b: int, hkv: int, nk: int, g: int) -> torch.Tensor:
    """Block slots (B, H, c, k) -> rows of the (B*Hkv*nK, kb*D) view (unused slots read block 0, masked)."""
    h = idx.shape[1]
    base = (torch.arange(b, device=idx.device)[:, None] * hkv + torch.arange(h, device=idx.device)[None, :] // g) * nk
    return base[:, :, None, None] + idx.clamp_min(0).long()


class _Pattern:
    """The -inf entries of one chunk's (B, H, c, qb, k*kb) logits, without building that mask: a per-key
    mask (unused slot, key past S_k, padding key; only when any exists) and the causal mask on the last
    `diag` slots, the only ones that can hold keys after a query of the block (select_key_blocks sorts
    the slots ascending, so every other used slot lies wholly before the query block)."""

    def __init__(self, idx, key_valid, query_block: int, key_block: int, sq: int, sk: int):
        self.qb, self.kb, self.sq, self.sk = query_block, key_block, sq, sk
        nk = num_blocks(sk, key_block)
        self.kvb = None if key_valid is None else _pad_rows(key_valid[..., None], nk * key_block).view(-1, nk, key_block)
        self.per_key = key_valid is not None or sk % key_block != 0 or bool((idx < 0).any())
        self.diag = min(idx.shape[-1], diagonal_blocks(sq, sk, query_block, key_block))

    def apply(self, logits: torch.Tensor, idx: torch.Tensor, first_block: int) -> torch.Tensor:
        b, h, c, k = idx.shape
        kb, dev = self.kb, idx.device
        blocks = idx.clamp_min(0).long()
        if self.per_key:
            kpos = blocks[..., None] * kb + torch.arange(kb, device=dev)  # (B, H, c, k, kb)
            ok = (idx >= 0)[..., None] & (kpos < self.sk)
            if self.kvb is not None:
                ok = ok & self.kvb[torch.arange(b, device=dev)[:, None, None, None], blocks]
            logits.masked_fill_(~ok.view(b, h, c, 1, k * kb), float("-inf"))
        tail = blocks[..., k - self.diag:, None] * kb + torch.arange(kb, device=dev)  # (B, H, c, diag, kb)
        qpos = self.sk - self.sq + first_block * self.qb + torch.arange(c * self.qb, device=dev).view(c, self.qb)
        late = tail.view(b, h, c, 1, self.diag * kb) > qpos[:, :, None]
        logits[..., (k - self.diag) * kb:].masked_fill_(late, float("-inf"))
        return logits


class BlockSparseAttentionFunction(torch.autograd.Function):
    """Per query block: softmax(q K_sel^T * scale) V_sel over its selected key blocks (dense GEMMs)."""

    @staticmethod
    def forward(ctx, q, k, v, idx, scale: float, query_block: int, key_block: int, key_valid, chunk: int):
        b, h, sq, d = q.shape
        hkv, sk = k.shape[1], k.shape[2]
        g = h // hkv
        nq, nk = idx.shape[2], num_blocks(sk, key_block)
        acc = torch.promote_types(q.dtype, torch.float32)
        pattern = _Pattern(idx, key_valid, query_block, key_block, sq, sk)
        qp = _pad_rows(q, nq * query_block).reshape(b, h, nq, query_block, d)
        kf = _pad_rows(k, nk * key_block).reshape(b * hkv * nk, -1)
        vf = _pad_rows(v, nk * key_block).reshape(b * hkv * nk, -1)
        out = torch.empty(b, h, nq, query_block, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(b, h, nq, query_block, dtype=acc, device=q.device)
        for s in range(0, nq, chunk):
            e = min(nq, s + chunk)
            flat = _flat(idx[:, :, s:e], b, hkv, nk, g)
            ks = kf[flat].view(b, h, e - s, -1, d)
            vs = vf[flat].view(b, h, e - s, -1, v.shape[-1])
            logits = torch.matmul(qp[:, :, s:e], ks.transpose(-1, -2)).to(acc).mul_(scale)
            pattern.apply(logits, idx[:, :, s:e], s)
            mx = logits.amax(-1, keepdim=True)
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            p = logits.sub_(mx).exp_()
            tot = p.sum(-1, keepdim=True)
            p.div_(tot.clamp_min(torch.finfo(acc).tiny))  # a row with no valid key -> zeros
            lse[:, :, s:e] = (mx + tot.log()).squeeze(-1)
            out[:, :, s:e] = torch.matmul(p.to(vs.dtype), vs)
        out = out.view(b, h, nq * query_block, -1)[:, :, :sq]
        ctx.save_for_backward(q, k, v, idx, out, lse, key_valid)
        ctx.cfg = (scale, query_block, key_block, chunk)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, idx, out, lse, key_valid = ctx.saved_tensors
        scale, query_block, key_block, chunk = ctx.cfg
        b, h, sq, d = q.shape
        hkv, sk, dv_ = k.shape[1], k.shape[2], v.shape[-1]
        g = h // hkv
        nq, nk = idx.shape[2], num_blocks(sk, key_block)
        acc = lse.dtype
        pattern = _Pattern(idx, key_valid, query_block, key_block, sq, sk)
        rows_q = nq * query_block
        qp = _pad_rows(q, rows_q).reshape(b, h, nq, query_block, d)
        go = _pad_rows(grad_out, rows_q).reshape(b, h, nq, query_block, dv_).to(acc)
        delta = (go * _pad_rows(out, rows_q).reshape(go.shape).to(acc)).sum(-1)  # (B, H, nQ, qb)
        kf = _pad_rows(k, nk * key_block).reshape(b * hkv * nk, -1)
        vf = _pad_rows(v, nk * key_block).reshape(b * hkv * nk, -1)
        dq = torch.empty(b, h, nq, query_block, d, dtype=q.dtype, device=q.device)
        dk = torch.zeros(kf.shape, dtype=acc, device=k.device)
        dvv = torch.zeros(vf.shape, dtype=acc, device=v.device)
        for s in range(0, nq, chunk):
            e = min(nq, s + chunk)
            flat = _flat(idx[:, :, s:e], b, hkv, nk, g)
            ks = kf[flat].view(b, h, e - s, -1, d).to(acc)
            vs = vf[flat].view(b, h, e - s, -1, dv_).to(acc)
            qc, gc = qp[:, :, s:e].to(acc), go[:, :, s:e]
            logits = torch.matmul(qc, ks.transpose(-1, -2)).mul_(scale)
            pattern.apply(logits, idx[:, :, s:e], s)
            l_row = lse[:, :, s:e, :, None]
            p = logits.sub_(torch.where(torch.isfinite(l_row), l_row, torch.zeros_like(l_row))).exp_()
            ds = torch.matmul(gc, vs.transpose(-1, -2)).sub_(delta[:, :, s:e, :, None]).mul_(p)  # (B, H, c, qb, K)
            dq[:, :, s:e] = (torch.matmul(ds, ks) * scale).to(dq.dtype)
            rows = flat.reshape(-1)
            # index_put_ accumulates far faster than index_add_ on CPU (the latter was 1/3 of the step)
            dvv.index_put_((rows,), torch.matmul(p.transpose(-1, -2), gc).reshape(rows.shape[0], -1), accumulate=True)
            dk.index_put_((rows,), torch.matmul(ds.transpose(-1, -2), qc).mul_(scale).reshape(rows.shape[0], -1),
                          accumulate=True)
        dq = dq.view(b, h, rows_q, d)[:, :, :sq]
        dk = dk.view(b, hkv, nk * key_block, d)[:, :, :sk]
        dvv = dvv.view(b, hkv, nk * key_block, dv_)[:, :, :sk]
        return dq, dk.to(k.dtype), dvv.to(v.dtype), None, None, None, None, None, None


KERNELS = ("auto", "torch", "triton")


def block_sparse_attention(q, k, v, idx, scale: float, query_block: int, key_block: int,
                           key_valid: torch.Tensor | None = None, query_chunk: int = 128,
                           kernel: str = "auto") -> torch.Tensor:
    """(B, H, S_q, D) attention over the key blocks in idx (see select_key_blocks); query_chunk bounds
    the queries processed at once on the PyTorch path (whole query blocks, at least one).

    kernel: "auto" runs the Triton kernels (triton_blocks.py) where they can run (CUDA, shape rules),
    else the PyTorch Function; "torch" always the latter; "triton" refuses (ConfigError) where the
    kernels cannot run, since a user who names them expects them."""
    if kernel not in KERNELS:
        raise ConfigError(f"method.attention_kernel: {kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel != "torch":
        reason = unusable_reason(q, query_block, key_block, k, v)
        if reason is None:
            return triton_block_sparse_attention(q, k, v, idx, scale, query_block, key_block, key_valid)
        if kernel == "triton":
            raise ConfigError(f"method.attention_kernel=triton cannot run here: {reason}; use auto or torch")
    chunk = max(1, int(query_chunk) // int(query_block))
    kv = None if key_valid is None else key_valid.to(torch.bool)
    return BlockSparseAttentionFunction.apply(q, k, v, idx, float(scale), int(query_block), int(key_block), kv, chunk)
