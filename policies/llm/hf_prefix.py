"""A cross-turn KV cache for the hf backend: a multi-turn prompt only pays for the tokens added since last turn.

Each finished completion leaves the keys and values of everything the model read (prompt + reply, all but the
last sampled token) in a small LRU keyed by those token ids. The next turn's prompt extends that sequence
(reply's last token, template tokens, the new observation), so ``lookup`` finds the longest cached prefix and
the prefill only runs the new tokens. The cache is tied to the weights: trainers call ``clear`` after every
update (a stale entry would silently mix two policies).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

#: Key/value tensors per layer for one sequence: [(keys [heads, T, dim], values [heads, T, dim]), ...].
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


class PrefixCache:
    """LRU of per-sequence KV tensors, bounded by the total number of cached tokens.

    Args:
        max_tokens: evict least-recently-used entries beyond this many cached tokens (memory per token is
            layers x 2 x kv_heads x head_dim x dtype size: ~46 KB for SmolLM2-135M in fp32).
    """

    def __init__(self, max_tokens: int = 65_536) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], LayerKV] = OrderedDict()
        self._tokens = 0
        self.hits = self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything (call after the weights change)."""
        self._entries.clear()
        self._tokens = 0

    def longest(self, prompt: Sequence[int]) -> tuple[int, ...] | None:
        """The key of the longest cached proper prefix of ``prompt`` (None: none), without counting a hit."""
        best: tuple[int, ...] | None = None
        for key in self._entries:
            if len(key) < len(prompt) and (best is None or len(key) > len(best)) and tuple(prompt[:len(key)]) == key:
                best = key
        return best

    def lookup(self, prompt: Sequence[int]) -> tuple[int, LayerKV | None]:
        """The longest cached proper prefix of ``prompt``: (its length, its KV), or (0, None)."""
        best = self.longest(prompt)
        if best is None:
            return 0, None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += len(best)
        return len(best), self._entries[best]

    def store(self, tokens: Sequence[int], layers: LayerKV) -> None:
        """Keep the KV of ``tokens`` (one tensor pair per layer, each [heads, len(tokens), dim])."""
        key = tuple(tokens)
        if not key or len(key) > self.max_tokens:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = layers
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)


def assemble(rows: list[tuple[int, LayerKV | None]], width: int,
             layers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Left-pad each row's cached KV (its first ``n`` positions) to ``width`` and stack them per layer.

    ``rows`` holds (n, kv) per batch row; a row with n = 0 has no past. Returns None when no row has a past.
    """
    sample = next((kv for n, kv in rows if n > 0 and kv is not None), None)
    if sample is None or width == 0:
        return None
    out = []
    for layer in range(layers):
        k0, v0 = sample[layer]
        heads, dim = k0.shape[0], k0.shape[-1]
        keys = k0.new_zeros((len(rows), heads, width, dim))
        values = v0.new_zeros((len(rows), heads, width, v0.shape[-1]))
        for i, (n, kv) in enumerate(rows):
            if n > 0 and kv is not None:
                keys[i, :, width - n:] = kv[layer][0][:, :n]
                values[i, :, width - n:] = kv[layer][1][:, :n]
        out.append((keys, values))
    return out


def extract(cache: object, row: int, mask_row: torch.Tensor) -> LayerKV:
    """The unpadded KV of batch row ``row`` (positions where ``mask_row`` is 1) from a DynamicCache."""
    valid = mask_row[: cache.layers[0].keys.shape[2]].nonzero().squeeze(-1)  # type: ignore[attr-defined]
    return [(layer.keys[row, :, valid].clone(), layer.values[row, :, valid].clone())
            for layer in cache.layers]  # type: ignore[attr-defined]
