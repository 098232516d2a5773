"""lm-eval's HFLM with shared-context scoring of multiple-choice requests: same numbers, less compute.

HFLM scores every (context, continuation) pair as its own sequence: a 4-choice item runs its context
through the model 4 times and computes the vocabulary-sized lm_head at every context position.
`SharedPrefixLM` runs each distinct context once, asking only for its last position's logits (the
first continuation token's), and then scores every continuation's remaining tokens on a copy of
that context's KV cache. Requests are encoded exactly as HFLM encodes them; a request where sharing
would not give HFLM's figure (HFLM would truncate it from the left; a model whose forward cannot
take a KV cache) is scored by HFLM itself.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

log = logging.getLogger(__name__)

# The first shared group of each model is also scored by HFLM and must agree: a model whose forward
# ignores the KV cache (a custom attention) would otherwise give wrong figures silently. A broken
# cache misses by whole nats; a cached and a full forward differ by rounding only.
_CHECK_ABS = {torch.float32: 1e-3, torch.float64: 1e-6}
_CHECK_ABS_LOW = 5e-2  # bf16 / fp16 round a cached and a full forward differently
# bf16 keeps 8 bits of mantissa: a 70-nat sum over 30 tokens moves by ~0.1-0.2 nat between the two
# forwards (measured on SmolLM2-135M), still far below a broken cache's whole nats per token
_CHECK_REL = {torch.float32: 1e-3, torch.float64: 1e-6}
_CHECK_REL_LOW = 5e-3
_DEFAULT_ROWS = 16  # sequences per forward when batch_size is "auto"
# contexts per chunk, in batch_size units: the chunk's continuations are sorted by length before
# batching, so more contexts mean less padding (PIQA's answers vary from 3 to 100+ tokens); its
# caches hold only contexts (no vocabulary-sized logits), far less than one HFLM batch's logits
_CONTEXT_BATCHES = 4
_FORWARD_COST = 32  # what one more forward costs, in padded tokens (see _batches)


@dataclass
class _Item:
    """One request, encoded as HFLM encodes it."""

    index: int
    context: list[int]
    continuation: list[int]


@dataclass
class _Group:
    """Requests with the same context tokens: the context runs once for all of them."""

    context: list[int]
    items: list[_Item] = field(default_factory=list)


@dataclass
class ShareStats:
    """What sharing did (tests check it is really used)."""

    shared: int = 0  # requests scored from a shared context
    fallback: int = 0  # requests HFLM scored itself
    contexts: int = 0  # distinct contexts run through the model
    context_tokens: int = 0  # their tokens (HFLM would run one context per request)
    forwards: int = 0  # model calls made by the shared path
    disabled: Optional[str] = None  # why sharing was switched off for this model, if it was


class SharedPrefixLM(HFLM):
    """HFLM whose `loglikelihood` computes each distinct context once (see the module docstring).
    `batch_size` keeps HFLM's meaning: at most that many sequences per forward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.share_stats = ShareStats()
        self._checked = False
        self._cache_arg: Optional[str] = None
        self._window: Optional[int] = None

    # ---- lm-eval API -------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, every token greedy) per request, in request order."""
        if self.enable_thinking or not requests:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        items = [self._encode(i, *req.args) for i, req in enumerate(requests)]
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        groups = _group([it for it in items if self._shareable(it)])
        if groups and not self._checked:
            groups = self._check_first(groups, requests, results)
        if groups:
            self._score_groups(groups, requests, results, disable_tqdm)
        rest = [i for i, r in enumerate(results) if r is None]
        if rest:
            self.share_stats.fallback += len(rest)
            for i, answer in zip(rest, super().loglikelihood([requests[i] for i in rest], disable_tqdm=disable_tqdm)):
                results[i] = answer
        return results  # type: ignore[return-value]

    # ---- encoding and eligibility -----------------------------------------------------------
    def _encode(self, index: int, context: str, continuation: str) -> _Item:
        """TemplateLM.loglikelihood's encoding: an empty context becomes the prefix (BOS/EOS) token,
        else `_encode_pair` (trailing context whitespace moves into the continuation)."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and self.prefix_token_id == cont[0]:
                return _Item(index, cont[:1], cont[1:])
            return _Item(index, [self.prefix_token_id], cont)
        ctx, cont = self._encode_pair(context, continuation)
        return _Item(index, ctx, cont)

    def _shareable(self, item: _Item) -> bool:
        """Sharing gives HFLM's figure exactly when HFLM scores the whole (context, continuation):
        no left truncation (HFLM keeps the last max_length + 1 tokens), and within a sliding
        attention window, where a cached layer equals a full one."""
        length = len(item.context) + len(item.continuation)
        return (self._sharing_supported() and len(item.context) > 0 and len(item.continuation) > 0
                and length <= self.max_length + 1 and (self._window is None or length <= self._window))

    def _sharing_supported(self) -> bool:
        if self.share_stats.disabled is None and self._cache_arg is None:
            reason = _unsupported(self)
            if reason:
                self._disable(reason)
            else:
                self._cache_arg = cache_argument(self.model)
                self._window = _sliding_window(self.model)
        return self.share_stats.disabled is None

    def _disable(self, reason: str) -> None:
        self.share_stats.disabled = reason
        log.warning("shared-context scoring is off for this model (%s): HFLM scores every request", reason)

    # ---- the once-per-model check -----------------------------------------------------------
    def _check_first(self, groups: list[_Group], requests: list[Any],
                     results: list[Optional[tuple[float, bool]]]) -> list[_Group]:
        """Score the longest and the shortest context's groups both ways, in one padded batch as every
        later chunk runs, and keep sharing only if they agree (those keep HFLM's figures): catches a
        forward that ignores the cache or cannot take one, and one whose output depends on left
        padding (e.g. attention blocks placed on absolute positions)."""
        self._checked = True
        first = [groups[0], groups[-1]] if len(groups) > 1 else groups[:1]
        items = [it for g in first for it in g.items]
        mine: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        try:
            self._score_groups(first, requests, mine, disable_tqdm=True)
        except Exception as exc:  # noqa: BLE001 - any model that cannot run this path falls back
            self._disable(f"{type(exc).__name__}: {exc}")
            return []
        theirs = super().loglikelihood([requests[it.index] for it in items], disable_tqdm=True)
        dtype = _logits_dtype(self)
        tol, rel = _CHECK_ABS.get(dtype, _CHECK_ABS_LOW), _CHECK_REL.get(dtype, _CHECK_REL_LOW)
        for it, (ll, _) in zip(items, theirs):
            got = mine[it.index]
            if got is None or not abs(got[0] - ll) <= tol + rel * abs(ll):
                self._disable(f"a shared log-likelihood {got[0] if got else float('nan'):.6g} vs HFLM's {ll:.6g}")
                return []
        for it, answer in zip(items, theirs):
            results[it.index] = answer
        return groups[1:-1]

    # ---- the shared path --------------------------------------------------------------------
    def _rows_per_forward(self) -> int:
        size = self.batch_size
        return int(size) if isinstance(size, int) or str(size).isdigit() else _DEFAULT_ROWS

    def _score_groups(self, groups: list[_Group], requests: list[Any],
                      results: list[Optional[tuple[float, bool]]], disable_tqdm: bool) -> None:
        """In chunks of _CONTEXT_BATCHES x batch_size contexts (see _chunks)."""
        rows = max(1, self._rows_per_forward())
        bar = tqdm(total=sum(len(g.items) for g in groups), disable=disable_tqdm or self.rank != 0,
                   desc="Running loglikelihood requests (shared contexts)")
        for chunk in _chunks(groups, rows * _CONTEXT_BATCHES, self._window):
            for it, answer in self._score_chunk(chunk, rows):
                results[it.index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[it.index].args, answer)
                bar.update(1)
        bar.close()

    def _forward(self, **kwargs: Any) -> Any:
        """One model call, under HFLM's no-grad and autocast settings."""
        self.share_stats.forwards += 1
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(**kwargs)

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """HFLM's log_softmax, accumulated in float32 at least."""
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype or torch.float32)

    def _score_chunk(self, chunk: list[_Group], rows: int) -> list[tuple[_Item, tuple[float, bool]]]:
        """The chunk's contexts (sorted longest first) in left-padded forwards with last-position
        logits only, their caches merged; then its continuations, longest first, on copies of their
        contexts' cache rows. Each forward holds at most the padded tokens of one HFLM batch (`rows`
        sequences as long as the longest one); a chunk of many contexts lets `_batches` group
        sequences of similar lengths."""
        firsts, caches, masks = [], [], []
        for part in _batches([len(g.context) for g in chunk], budget=rows * len(chunk[0].context)):
            first, cache, mask = self._run_contexts(chunk[part])
            firsts.append(first)
            caches.append(cache)
            masks.append(mask)
        first = torch.cat(firsts)
        top = first.argmax(-1).tolist()
        cache, mask = _merge_caches(caches, masks)
        pairs = [(gi, it) for gi, g in enumerate(chunk) for it in g.items]
        scores = {id(it): [float(first[gi, it.continuation[0]]), top[gi] == it.continuation[0]] for gi, it in pairs}
        longer = sorted((p for p in pairs if len(p[1].continuation) > 1), key=lambda p: -len(p[1].continuation))
        widths = [len(it.continuation) - 1 for _, it in longer]
        for part in _batches(widths, budget=rows * max([mask.shape[1], *widths])):
            self._score_rest(cache, mask, longer[part], scores)
        self.share_stats.shared += len(pairs)
        return [(it, (scores[id(it)][0], bool(scores[id(it)][1]))) for _, it in pairs]

    def _run_contexts(self, groups: list[_Group]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """(log-probs of each context's next token, its KV cache, its attention mask)."""
        self.share_stats.contexts += len(groups)
        self.share_stats.context_tokens += sum(len(g.context) for g in groups)
        ids, mask = _left_pad([g.context for g in groups], self.device)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                            use_cache=True, logits_to_keep=1)
        cache = _cache_of(out)
        if not _copyable(cache):
            raise TypeError(f"a {type(cache).__name__} cache cannot be copied")
        return self._log_probs(out.logits[:, -1, :]), cache, mask

    def _score_rest(self, cache: Any, ctx_mask: torch.Tensor, pairs: list[tuple[int, _Item]],
                    scores: dict[int, list]) -> None:
        """Tokens c_2..c_m of each continuation, predicted from c_1..c_{m-1} after its context."""
        which = torch.tensor([gi for gi, _ in pairs], device=ctx_mask.device)
        feed = [it.continuation[:-1] for _, it in pairs]
        ids, cont_mask = _right_pad(feed, self.device)
        start = ctx_mask.sum(-1)[which]  # each row's context length
        positions = start[:, None] + torch.arange(ids.shape[1], device=self.device)[None, :]
        mask = torch.cat([ctx_mask[which], cont_mask], dim=1)
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               **{self._cache_arg or "past_key_values": _select_rows(cache, which)}).logits
        logp = self._log_probs(logits[cont_mask.bool()])  # (real tokens, vocab): none for padding
        targets = torch.tensor([t for _, it in pairs for t in it.continuation[1:]], device=logp.device)
        picked = logp.gather(-1, targets[:, None])[:, 0]
        hits = logp.argmax(-1) == targets
        sizes = [len(f) for f in feed]
        for (_, it), part_ll, part_hit in zip(pairs, picked.split(sizes), hits.split(sizes)):
            score = scores[id(it)]
            score[0] += float(part_ll.sum())
            score[1] = score[1] and bool(part_hit.all())


def _group(items: list[_Item]) -> list[_Group]:
    """Requests by identical context tokens, longest context first (contexts in one forward pad little)."""
    groups: dict[tuple[int, ...], _Group] = {}
    for it in items:
        groups.setdefault(tuple(it.context), _Group(it.context)).items.append(it)
    return sorted(groups.values(), key=lambda g: -len(g.context))


def _chunks(groups: list[_Group], size: int, window: Optional[int]) -> list[list[_Group]]:
    """Consecutive groups, at most `size` per chunk; under a sliding window also at most window - 1
    padded positions (the widest context, then the longest continuation): a cached sliding layer
    equals a full one only while nothing has left its window."""
    chunks: list[list[_Group]] = []
    longest = 0
    for g in groups:
        feed = max(len(it.continuation) for it in g.items) - 1
        if not chunks or len(chunks[-1]) == size or (
                window is not None and len(chunks[-1][0].context) + max(longest, feed) > window - 1):
            chunks.append([])
            longest = 0
        chunks[-1].append(g)
        longest = max(longest, feed)
    return chunks


def _batches(widths: list[int], budget: int) -> list[slice]:
    """Cut sequences sorted longest first into consecutive batches of at most `budget` padded tokens
    (a longer one alone), the cut with the fewest padded tokens, counting each forward as
    _FORWARD_COST more. PIQA's answers run from 3 to 100+ tokens, BoolQ's passages from 50 to 400+:
    a fixed batch size would pad most of them to the longest."""
    best = [0.0] + [float("inf")] * len(widths)  # best[i]: cost of the first i sequences
    cut = [0] * (len(widths) + 1)
    for end in range(1, len(widths) + 1):
        for start in range(end - 1, -1, -1):
            padded = (end - start) * widths[start]
            if padded > budget and start < end - 1:
                break
            if best[start] + padded + _FORWARD_COST < best[end]:
                best[end], cut[end] = best[start] + padded + _FORWARD_COST, start
    bounds, end = [], len(widths)
    while end > 0:
        bounds.append(slice(cut[end], end))
        end = cut[end]
    return bounds[::-1]


def _cache_of(out: Any) -> Any:
    """The returned KV cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _copyable(cache: Any) -> bool:
    """A cache whose layers replace their tensors instead of writing into them (transformers'
    DynamicLayer and its sliding-window kind): a shallow copy can then be reordered and extended
    while the original stays as it was."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _merge_caches(caches: list[Any], masks: list[torch.Tensor]) -> tuple[Any, torch.Tensor]:
    """One cache (and mask) from several context batches, each left-padded to the widest."""
    if len(caches) == 1:
        return caches[0], masks[0]
    width = max(m.shape[1] for m in masks)
    merged = copy.copy(caches[0])
    merged.layers = [copy.copy(layer) for layer in caches[0].layers]
    for i, layer in enumerate(merged.layers):
        layer.keys = torch.cat([_pad_left(c.layers[i].keys, width, dim=-2) for c in caches])
        layer.values = torch.cat([_pad_left(c.layers[i].values, width, dim=-2) for c in caches])
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    return merged, torch.cat([_pad_left(m, width, dim=-1) for m in masks])


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _select_rows(cache: Any, which: torch.Tensor) -> Any:
    """A cache with rows `which` of `cache` (a context repeated once per continuation), leaving
    `cache` untouched for the next batch of continuations."""
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    picked.reorder_cache(which)
    return picked


def _left_pad(seqs: list[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad(seqs, device, left=True)


def _right_pad(seqs: list[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return _pad(seqs, device, left=False)


def _pad(seqs: list[list[int]], device: Any, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of `seqs` padded with zeros to the longest, on the left or the right."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _logits_dtype(lm: HFLM) -> torch.dtype:
    if lm.mixed_precision_dtype is not None:
        return lm.mixed_precision_dtype
    try:
        return next(lm.model.parameters()).dtype
    except StopIteration:
        return torch.float32


def _base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (whose forward passes keyword arguments on)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _forward_params(model: Any) -> Optional[dict[str, inspect.Parameter]]:
    try:
        return dict(inspect.signature(_base_model(model).forward).parameters)
    except (TypeError, ValueError):
        return None


def _sliding_window(model: Any) -> Optional[int]:
    """The model's sliding attention window, if its config names one (then, conservatively, for
    every layer)."""
    config = getattr(_base_model(model), "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def cache_argument(model: Any) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.2x), else `past_key_values`."""
    return "cache" if "cache" in (_forward_params(model) or {}) else "past_key_values"


def _unsupported(lm: HFLM) -> Optional[str]:
    """Why this model cannot share contexts (None: it can)."""
    if lm.backend != "causal":
        return f"backend {lm.backend}"
    model = lm.model
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "PEFT prompt learning adds virtual tokens"
    params = _forward_params(model)
    if params is None:
        return "the model's forward has no signature"
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [name for name in (cache_argument(model), "attention_mask", "position_ids", "logits_to_keep")
               if name not in params and not takes_kwargs]
    return f"its forward takes no {', '.join(missing)}" if missing else None
