"""The transformers engine's decode loop (``nesylib.generation.generate.generate_batch`` drives it): an own loop over a
``DynamicCache`` rather than ``model.generate``, because on CPU evaluation time is lost to sequences that keep
running while the rest of their batch has finished (calibration.md). The loop therefore

* drops finished sequences from the batch at once (their rows leave the KV cache), and refills
  the freed places with waiting prompts (continuous batching: the new rows are prefilled and
  their caches merged in, left-padded);
* prefills prompts in groups of near-equal length (longest first), because pad tokens in a
  prefill cost full forward passes on CPU, and trims padding columns no row needs any more;
* applies the stop rule (``nesylib.generation.stopping.StopRule``) after every token;
* on CPU, runs grouped-query attention through sdpa's ``enable_gqa`` even with a padding mask
  (``_sdpa_gqa_forward``): transformers would copy K/V once per query head there, which took
  more than half of each batched step for SmolLM2.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping

from nesylib.generation.stopping import StopRule

# Prefill groups may hold this many tokens per real token. On CPU a 200-token prompt already
# keeps the matrix units busy, so batching prompts gains nothing and pads cost full passes.
PREFILL_SLACK = {"cpu": 1.0, "default": 1.25}


def _pick_next(logits, rows: list[int], sampling, generators: dict | None) -> list[int]:
    """Greedy argmax (``sampling`` None), or top-k/top-p sampling (a ``generate.Sampling``) with one
    generator per original prompt."""
    import torch

    if sampling is None:
        return logits.argmax(-1).tolist()
    logits = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        srt, idx = torch.sort(logits, dim=-1, descending=True)
        p = srt.softmax(-1)
        drop = p.cumsum(-1) - p >= sampling.top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return [int(torch.multinomial(probs[j], 1, generator=generators[r])) for j, r in enumerate(rows)]


_GQA_ATTN = "nesylib_sdpa_gqa"


def _sdpa_gqa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention, but grouped-query heads go to ``enable_gqa`` even when a
    padding mask is present. transformers copies K/V once per query head in that case (only CUDA
    lacks a fused kernel for it); on CPU that copy took more than half of each batched decoding
    step. The result is bit-identical (checked in tests)."""
    import torch

    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(query.shape[2] > 1 and attention_mask is None and is_causal)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


class _gqa_attention:
    """Context: switch a CPU model that uses "sdpa" to ``_sdpa_gqa_forward``; restore on exit."""

    def __init__(self, model, enabled: bool = True):
        self.configs = []
        if not enabled or _device_of(model).type != "cpu":
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(_GQA_ATTN, _sdpa_gqa_forward)
        AttentionMaskInterface.register(_GQA_ATTN, sdpa_mask)
        seen = set()
        for mod in model.modules():
            cfg = getattr(mod, "config", None)
            if cfg is not None and id(cfg) not in seen and getattr(cfg, "_attn_implementation", None) == "sdpa":
                seen.add(id(cfg))
                self.configs.append(cfg)

    def __enter__(self):
        for cfg in self.configs:
            cfg._attn_implementation = _GQA_ATTN
        return self

    def __exit__(self, *exc):
        for cfg in self.configs:
            cfg._attn_implementation = "sdpa"
        return False


def _device_of(model):
    return next(model.parameters()).device


@lru_cache(maxsize=None)
def _grow_layer_class():
    """A DynamicLayer that appends into a buffer with spare room instead of ``torch.cat``-ing the
    whole cache at every step (that copy was ~7% of a batched CPU step). ``keys``/``values`` stay
    views of the filled part, so transformers sees exactly the tensors a DynamicLayer holds."""
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        room = 128  # spare positions allocated at each growth (at least half the length again)

        def seat(self, kbuf, vbuf, n: int) -> None:
            """Adopt buffers whose first ``n`` positions (dim -2) are filled."""
            self._k, self._v, self._n = kbuf, vbuf, n
            self.keys, self.values = kbuf[..., :n, :], vbuf[..., :n, :]
            self.dtype, self.device, self.is_initialized = kbuf.dtype, kbuf.device, True

        def _reserve(self, extra: int) -> None:
            need = self._n + extra
            if need <= self._k.shape[-2]:
                return
            shape = list(self._k.shape)
            shape[-2] = need + max(self.room, need // 2)
            k, v = self._k.new_empty(shape), self._v.new_empty(shape)
            k[..., :self._n, :].copy_(self.keys)
            v[..., :self._n, :].copy_(self.values)
            self.seat(k, v, self._n)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.seat(key_states.new_empty(key_states.shape[:-2] + (0,) + key_states.shape[-1:]),
                          value_states.new_empty(value_states.shape[:-2] + (0,) + value_states.shape[-1:]), 0)
            n = key_states.shape[-2]
            self._reserve(n)
            self._k[..., self._n:self._n + n, :].copy_(key_states)
            self._v[..., self._n:self._n + n, :].copy_(value_states)
            self.seat(self._k, self._v, self._n + n)
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if self.is_initialized:
                self.seat(self._k[indices], self._v[indices], self._n)

        def trim_left(self, n: int) -> None:
            """Forget the first ``n`` positions (padding every remaining row ignores)."""
            self.seat(self._k[..., n:, :], self._v[..., n:, :], self._n - n)

        def crop(self, tokens_to_remove: int) -> None:  # not used by the loop; kept consistent
            super().crop(tokens_to_remove)
            self.seat(self.keys, self.values, self.keys.shape[-2])

    return GrowLayer


class _Running:
    """The sequences currently decoding: their KV cache, padding mask and next input token.

    Invariant between steps: the cache holds ``mask.shape[1]`` positions per row (left padded),
    ``last_pos`` is each row's last position id, and ``nxt`` the token to feed next.
    """

    def __init__(self, rows, cache, mask, last_pos, nxt, plain: bool):
        self.rows, self.cache, self.mask, self.last_pos, self.nxt = rows, cache, mask, last_pos, nxt
        self.plain = plain  # every cache layer a plain DynamicLayer: columns may be trimmed and merged

    def __len__(self):
        return len(self.rows)

    def keep(self, idx: list[int]) -> None:
        """Keep only the batch rows ``idx``; drop padding columns no remaining row needs."""
        import torch

        if len(idx) == len(self.rows):
            return
        sel = torch.tensor(idx, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.last_pos = self.mask[sel], self.last_pos[sel]
        self.rows = [self.rows[j] for j in idx]
        self.nxt = [self.nxt[j] for j in idx]
        lead = int(self.mask.any(0).to(torch.int8).argmax()) if len(idx) else 0
        if lead > 0 and self.plain:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.trim_left(lead)


def _merge(runs: list[_Running]) -> _Running:
    """One batch from several (plain caches only): rows stacked, shorter caches left-padded."""
    import torch

    live = [r for r in runs if len(r)] or runs[:1]
    if len(live) == 1:
        return live[0]
    width = max(r.mask.shape[1] for r in live)
    total = sum(len(r) for r in live)

    def stack(tensors, seq: int, room: int = 0):
        shape = list(tensors[0].shape)
        shape[0], shape[seq] = total, width + room
        out = tensors[0].new_zeros(shape)
        b = 0
        for t in tensors:
            out[b:b + t.shape[0]].narrow(seq, width - t.shape[seq], t.shape[seq]).copy_(t)
            b += t.shape[0]
        return out

    base = live[0]
    for i, layer in enumerate(base.cache.layers):
        room = max(layer.room, width // 2)
        layer.seat(stack([r.cache.layers[i].keys for r in live], -2, room),
                   stack([r.cache.layers[i].values for r in live], -2, room), width)
    base.mask = stack([r.mask for r in live], -1)
    base.last_pos = torch.cat([r.last_pos for r in live])
    base.rows = [x for r in live for x in r.rows]
    base.nxt = [x for r in live for x in r.nxt]
    return base


def _pack(rows: list[int], lengths: Mapping[int, int], slack: float) -> list[list[int]]:
    """Split rows (longest first) into prefill groups whose padding stays under ``slack``."""
    groups: list[list[int]] = []
    for r in rows:
        g = groups[-1] if groups else None
        if g and (len(g) + 1) * max(lengths[x] for x in g + [r]) <= slack * (sum(lengths[x] for x in g) + lengths[r]):
            g.append(r)
        else:
            groups.append([r])
    return groups


class _Decoder:
    """Continuous batching: finished rows leave at once and waiting prompts take their places."""

    def __init__(self, model, rule: StopRule, encoded, caps, pad_id, batch_size, sampling, generators, on_done):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model, self.rule, self.encoded, self.caps, self.pad_id = model, rule, encoded, caps, pad_id
        self.batch_size, self.sampling, self.generators, self.on_done = batch_size, sampling, generators, on_done
        self.device = _device_of(model)
        self.states = {}
        # sliding-window (and other) cache layers cannot be trimmed or merged: static batches then
        self.plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        self.grow_layer = _grow_layer_class()

    def _forward(self, input_ids, mask, pos, cache):
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _advance(self, run: _Running, logits) -> None:
        """Choose each row's next token, apply the stop rule, drop the finished rows."""
        toks = _pick_next(logits, run.rows, self.sampling, self.generators)
        keep = []
        for j, (r, tok) in enumerate(zip(run.rows, toks)):
            if self.rule.push(self.states[r], tok) is None:
                keep.append(j)
            else:
                self.on_done()
        run.nxt = toks
        run.keep(keep)

    def prefill(self, rows: list[int]) -> _Running:
        """Run the prompts of ``rows`` and pick their first tokens.

        With plain caches the rows are prefilled in groups of (near-)equal length, since pad
        tokens would cost full forward passes, and merged afterwards; merging is a cheap copy.
        """
        if not self.plain:
            return self._prefill_group(rows)
        lengths = {r: len(self.encoded[r]) for r in rows}
        slack = PREFILL_SLACK.get(self.device.type, PREFILL_SLACK["default"])
        return _merge([self._prefill_group(g) for g in _pack(rows, lengths, slack)])

    def _prefill_group(self, rows: list[int]) -> _Running:
        import torch
        from transformers import DynamicCache

        width = max(len(self.encoded[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(self.encoded[r])
            ids[j, width - n:] = torch.tensor(self.encoded[r], dtype=torch.long)
            mask[j, width - n:] = 1
            self.states[r] = self.rule.new_state(self.caps[r])
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # as model.generate: positions count real tokens only
        cache = DynamicCache(config=self.model.config)
        if self.plain:
            cache.layers = [self.grow_layer() for _ in cache.layers]
            cache.layer_class_to_replicate = self.grow_layer if not cache.layers else None
        logits = self._forward(ids, mask, pos, cache)
        run = _Running(list(rows), cache, mask, pos[:, -1:], [], self.plain)
        self._advance(run, logits)
        return run

    def step(self, run: _Running) -> None:
        import torch

        run.mask = torch.cat([run.mask, run.mask.new_ones((len(run), 1))], dim=-1)
        run.last_pos = run.last_pos + 1
        ids = torch.tensor(run.nxt, dtype=torch.long, device=self.device).unsqueeze(-1)
        self._advance(run, self._forward(ids, run.mask, run.last_pos, run.cache))

    def run(self, order: list[int]) -> dict:
        pending = list(reversed(order))  # pop() from the end takes them in ``order``
        run: _Running | None = None
        # refill once a quarter of the batch is free: each merge copies the whole cache
        min_refill = max(1, self.batch_size // 4)
        while pending or (run is not None and len(run)):
            n = len(run) if run is not None else 0
            free = self.batch_size - n
            if pending and (n == 0 or (self.plain and free >= min_refill)):
                new = self.prefill([pending.pop() for _ in range(min(free, len(pending)))])
                run = new if n == 0 else _merge([run, new])
                continue
            self.step(run)
        return self.states
