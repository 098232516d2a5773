"""SPT key selection in blocks (method.attention_selection=block): the block ranking equals a brute-force
sum of pairwise code matches, the block attention equals dense autograd attention restricted to the
selected blocks (values and q/k/v gradients, causal inside the diagonal block, lengths not divisible
by the blocks, padding, GQA, a KV-cache offset), and the model wiring; the selected-weight recall
against per-key top-L is reported (pytest -s prints it)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsetune.errors import ConfigError
from sparsetune.methods.base import MethodContext
from sparsetune.methods.spt import SPT, SPTConfig, select_top_l
from sparsetune.methods.spt.blocks import block_sparse_attention, select_key_blocks
from sparsetune.methods.spt.pq import kmedians, pq_codes
from sparsetune.models.tiny import tiny_preset


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def codes(b, h, s, m, c, seed):
    return torch.randint(0, c, (b, h, s, m), generator=torch.Generator().manual_seed(seed))


def block_pattern(idx, sq, sk, qb, kb, key_valid=None):
    """Dense (B, H, S_q, S_k) mask of the selected blocks, causal and padding masks applied, by loops."""
    b, h, nq, _ = idx.shape
    mask = torch.zeros(b, h, sq, sk, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                for j in idx[bi, hi, i].tolist():
                    if j >= 0:
                        mask[bi, hi, i * qb:(i + 1) * qb, j * kb:(j + 1) * kb] = True
    causal = torch.arange(sk)[None, :] <= (sk - sq + torch.arange(sq))[:, None]
    mask &= causal
    if key_valid is not None:
        mask &= key_valid[:, None, None, :]
    return mask


def per_key_pattern(idx, sk):
    """Dense (B, H, S_q, S_k) mask of per-key top-L indices (-1 slots dropped)."""
    b, h, sq, _ = idx.shape
    mask = torch.zeros(b, h, sq, sk + 1, dtype=torch.bool)
    mask.scatter_(-1, torch.where(idx >= 0, idx, sk).long(), True)
    return mask[..., :sk]


def masked_dense(q, k, v, mask, scale):
    """Dense autograd attention restricted to `mask`; rows with no allowed key are zeros."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0) @ v


# ------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("sq,sk,qb,kb,num_keys,pad,keep_first", [
    (30, 30, 4, 4, 8, False, 0), (30, 30, 5, 3, 7, True, 0), (29, 29, 8, 4, 9, True, 2),
    (7, 30, 4, 6, 12, False, 0), (32, 32, 8, 8, 4, True, 1)])
def test_block_selection_equals_brute_force(sq, sk, qb, kb, num_keys, pad, keep_first):
    """Block score = sum over the block pair of matching-code counts (valid keys only); allowed when some
    query may see some valid key; diagonal blocks (holding the block's own positions) first, then sinks,
    then by score, ties to the nearer block."""
    b, h, hkv, m, c = 2, 4, 2, 3, 4
    qc, kc = codes(b, h, sq, m, c, 0), codes(b, hkv, sk, m, c, 1)
    key_valid = torch.ones(b, sk, dtype=torch.bool)
    if pad:
        key_valid[1, :7] = False
        key_valid[0, -4:] = False
    idx = select_key_blocks(qc, kc, num_keys, c, qb, kb, key_valid, keep_first=keep_first)
    nq, nk, off = math.ceil(sq / qb), math.ceil(sk / kb), sk - sq
    kfull = kc.repeat_interleave(h // hkv, 1)
    pair = (qc[:, :, :, None, :] == kfull[:, :, None, :, :]).sum(-1).double() * key_valid[:, None, None, :]
    rank = key_valid.long().cumsum(-1) - 1
    diag = max(((off + min(sq, s + qb) - 1) // kb) - ((off + s) // kb) + 1 for s in range(0, sq, qb))
    k_sel = min(nk, max(math.ceil(num_keys / kb), diag + (keep_first > 0)))  # room for a sink block
    assert idx.shape == (b, h, nq, k_sel)
    assert torch.equal(idx, idx.sort(-1).values)  # ascending, unused first: the diagonal blocks are last
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                qs = range(i * qb, min(sq, (i + 1) * qb))
                scores = {}
                for j in range(nk):
                    ks = range(j * kb, min(sk, (j + 1) * kb))
                    if not any(key_valid[bi, t] and t <= off + s for s in qs for t in ks):
                        continue
                    total = float(pair[bi, hi, qs.start:qs.stop, ks.start:ks.stop].sum())
                    own = any(off + s in ks for s in qs)
                    sink = any(key_valid[bi, t] and rank[bi, t] < keep_first for t in ks)
                    scores[j] = (2 if own else 1 if sink else 0, total, j)
                want = set(sorted(scores, key=lambda j: scores[j], reverse=True)[:k_sel])
                got = {j for j in idx[bi, hi, i].tolist() if j >= 0}
                assert got == want, (bi, hi, i, scores)


# ------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("h,hkv,sq,sk,qb,kb,num_keys,pad,chunk", [
    (4, 2, 32, 32, 8, 8, 8, False, 8),  # divisible, two key blocks per query block
    (4, 1, 29, 29, 8, 4, 9, True, 16),  # not divisible, qb != kb, padding both sides, GQA 4/1
    (2, 2, 23, 23, 5, 7, 10, False, 5),  # kb > qb: a query block spans two key blocks
    (2, 2, 6, 21, 4, 5, 10, True, 128),  # KV-cache offset (S_q < S_k)
])
def test_block_attention_equals_dense_on_the_selected_pattern(h, hkv, sq, sk, qb, kb, num_keys, pad, chunk):
    gen = torch.Generator().manual_seed(0)
    b, d = 2, 8
    q = torch.randn(b, h, sq, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, hkv, sk, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, hkv, sk, d, generator=gen, dtype=torch.float64, requires_grad=True)
    key_valid = torch.ones(b, sk, dtype=torch.bool)
    if pad:
        key_valid[0, :5] = False
        key_valid[1, -3:] = False
    idx = select_key_blocks(codes(b, h, sq, 2, 4, 2), codes(b, hkv, sk, 2, 4, 3), num_keys, 4, qb, kb, key_valid)
    assert (idx < 0).any() or idx.shape[-1] < math.ceil(sk / kb)  # a real subset (or unused slots)
    scale = d ** -0.5
    out = block_sparse_attention(q, k, v, idx, scale, qb, kb, key_valid if pad else None, chunk)
    mask = block_pattern(idx, sq, sk, qb, kb, key_valid if pad else None)
    ref = masked_dense(q, k, v, mask, scale)
    assert torch.allclose(out, ref, atol=1e-12)
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    for g1, g2 in zip(torch.autograd.grad(out, (q, k, v), gout), torch.autograd.grad(ref, (q, k, v), gout)):
        assert torch.allclose(g1, g2, atol=1e-12)


def test_block_attention_gradcheck_with_unused_slots():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = select_key_blocks(codes(1, 2, 11, 1, 4, 0), codes(1, 1, 11, 1, 4, 1), 6, 4, 3, 3)
    assert idx.shape[-1] == 2 and (idx[0, 0, 0] == -1).sum() == 1  # block 0 sees only its own key block
    assert torch.autograd.gradcheck(lambda a, b_, c: block_sparse_attention(a, b_, c, idx, 0.5, 3, 3, None, 3),
                                    (q, k, v))


def test_causal_inside_the_diagonal_block_and_every_block_equals_dense():
    """With every block selected the result is dense causal attention; a later key inside the diagonal
    block changes nothing for the earlier queries of the block (and does change the later ones)."""
    gen = torch.Generator().manual_seed(1)
    b, h, s, d, blk = 1, 2, 16, 8, 8
    q, k, v = (torch.randn(b, h, s, d, generator=gen, dtype=torch.float64) for _ in range(3))
    idx = select_key_blocks(codes(b, h, s, 2, 4, 0), codes(b, h, s, 2, 4, 1), s, 4, blk, blk)
    out = block_sparse_attention(q, k, v, idx, 0.3, blk, blk)
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None, None].expand(b, h, s, s)
    assert torch.allclose(out, masked_dense(q, k, v, causal, 0.3), atol=1e-12)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 11] += 5.0
    v2[:, :, 11] -= 3.0
    out2 = block_sparse_attention(q, k2, v2, idx, 0.3, blk, blk)
    assert torch.equal(out2[:, :, :11], out[:, :, :11])
    assert not torch.allclose(out2[:, :, 11:], out[:, :, 11:])


def test_no_index_zero_padding_when_few_blocks_are_allowed():
    """The first query block may see only its own block: the other slots are unused (-1), not block 0
    counted again (the reference's padding bug would double key 0's weight)."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 12, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    idx = select_key_blocks(codes(1, 1, 12, 1, 4, 0), codes(1, 1, 12, 1, 4, 1), 8, 4, 4, 4)
    assert idx[0, 0, 0].tolist().count(0) == 1 and (idx[0, 0, 0] == -1).sum() == 1
    out = block_sparse_attention(q, k, v, idx, 0.5, 4, 4)
    ref = masked_dense(q, k, v, torch.ones(12, 12, dtype=torch.bool).tril()[None, None] & block_pattern(idx, 12, 12, 4, 4), 0.5)
    assert torch.allclose(out, ref, atol=1e-12)


# ------------------------------------------------------------------------------------- recall
def _structured(s, d, topics, gen):
    """q/k of tokens in runs (4-40 tokens) drawn from a few topics: attention concentrates on the
    same-topic runs, near and far."""
    centres = torch.randn(topics, d, generator=gen) * 1.5
    labels = []
    while len(labels) < s:
        labels += [int(torch.randint(topics, (1,), generator=gen))] * int(torch.randint(4, 41, (1,), generator=gen))
    lab = torch.tensor(labels[:s])
    q = centres[lab] + 0.5 * torch.randn(s, d, generator=gen)
    k = centres[lab] + 0.5 * torch.randn(s, d, generator=gen)
    return q[None, None], k[None, None]


def selection_recall(kind: str, seed: int = 0, s: int = 512, d: int = 32, blk: int = 16) -> dict[str, float]:
    """Mean over queries of the dense causal softmax weight that each pattern keeps, at L = S/8:
    per-key top-L, blocks (blk x blk, top L/blk key blocks), and the oracle (true top-L logits)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        q, k = torch.randn(1, 1, s, d, generator=gen), torch.randn(1, 1, s, d, generator=gen)
    else:
        q, k = _structured(s, d, 6, gen)
    book = kmedians(torch.cat([q, k], 2).reshape(-1, d), 16, 8, iters=5, generator=gen)
    qc, kc = pq_codes(q, book), pq_codes(k, book)
    num = s // 8
    scale = d ** -0.5
    causal = torch.ones(s, s, dtype=torch.bool).tril()[None, None]
    p = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf")), -1)
    per_key = per_key_pattern(select_top_l(qc, kc, num, 16), s)
    blocks = block_pattern(select_key_blocks(qc, kc, num, 16, blk, blk), s, s, blk, blk)
    oracle = per_key_pattern(torch.where(causal, p, -1.0).topk(num, -1).indices, s)

    def recall(mask):
        return float((p * mask).sum(-1).mean())

    return {"per_key": recall(per_key), "block": recall(blocks), "oracle": recall(oracle),
            "block_density": float(blocks.sum() / causal.sum()), "per_key_density": float(per_key.sum() / causal.sum())}


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_selected_weight_recall_is_reported(kind):
    """No threshold between the two forms (that is the measurement); each must beat chance: the kept
    weight is above the fraction of causal keys kept."""
    got = selection_recall(kind)
    print(f"\nrecall {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))
    assert got["block"] > got["block_density"] and got["per_key"] > got["per_key_density"]


# ------------------------------------------------------------------------------------- model wiring
def _tiny(seed=0):
    return tiny_preset("llama", seed).to(dtype=torch.float64).eval()


def _spt(model, **kw) -> SPT:
    method = SPT(SPTConfig(warmup_ratio=0.0, routed_ffn=False, kmeans_init=False, **kw))
    method.apply(model, MethodContext.of(model))
    return method


def test_block_selection_in_a_model_every_block_equals_dense_and_fewer_differs_from_per_key():
    ids = torch.randint(0, 500, (2, 37), generator=torch.Generator().manual_seed(0))
    dense = _tiny()(input_ids=ids).logits
    full = _tiny()
    _spt(full, attention_selection="block", top_l_ratio=1.0, query_block=8, key_block=4)
    assert torch.allclose(full(input_ids=ids).logits, dense, atol=1e-10)

    runs = {}
    for sel in ("per_key", "block"):
        model = _tiny()
        method = _spt(model, attention_selection=sel, top_l_ratio=0.25, min_keys=1, query_block=8, key_block=4)
        runs[sel] = model(input_ids=ids).logits
        num, sk = method.state.keys_per_query[-1]
        assert sk == 37 and num == (12 if sel == "block" else 10)  # ceil(10 / 4) blocks of 4 vs L = 10
    assert not torch.allclose(runs["block"], dense, atol=1e-4)
    assert not torch.allclose(runs["block"], runs["per_key"], atol=1e-4)


def test_right_padded_batch_equals_rows_one_at_a_time():
    ids = torch.randint(0, 500, (2, 21), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    model = _tiny()
    _spt(model, attention_selection="block", top_l_ratio=0.3, min_keys=1, query_block=4, key_block=4)
    batch = model(input_ids=ids, attention_mask=mask).logits
    for row, n in ((0, 21), (1, 13)):
        alone = model(input_ids=ids[row:row + 1, :n]).logits
        assert torch.allclose(batch[row:row + 1, :n], alone, atol=1e-10)


def test_config_refuses_a_bad_selection_and_block_sizes():
    from sparsetune.config.schema import check_choices

    with pytest.raises(ConfigError, match="attention_selection"):
        check_choices(SPTConfig, SPTConfig(attention_selection="rows"), "method")
    for key in ("key_block", "query_block"):
        with pytest.raises(ConfigError, match=key):
            SPTConfig.check(SPTConfig(**{key: 0}))


def test_block_path_saves_only_inputs_output_and_lse_and_has_no_s_by_s_tensor():
    """The Function recomputes the gathers in backward: autograd keeps q, k, v, the block indices, the
    output and the log-sum-exp (autograd through the gathered blocks kept 2.7x more at S = 1024), and no
    temporary has two S-long dims."""
    from torch.utils._python_dispatch import TorchDispatchMode

    s = 128

    class NoSquare(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    assert sum(1 for n in t.shape if n == s) < 2, f"{func}: S x S tensor {tuple(t.shape)}"
            return out

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, s, 16, generator=gen, requires_grad=True)
    k = torch.randn(2, 2, s, 16, generator=gen, requires_grad=True)
    v = torch.randn(2, 2, s, 16, generator=gen, requires_grad=True)
    saved = []
    with NoSquare():
        idx = select_key_blocks(codes(2, 4, s, 2, 16, 0), codes(2, 2, s, 2, 16, 1), s // 8, 16, 16, 16)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            out = block_sparse_attention(q, k, v, idx, 0.25, 16, 16)
        out.square().mean().backward()
    assert sorted(saved) == sorted([tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(idx.shape),
                                    tuple(out.shape), (2, 4, 8, 16)])  # lse per query block
