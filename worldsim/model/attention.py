"""Attention for the dynamics' block-causal transformer: the kernels and how a forward attends.

Tokens come in *blocks* (one tick each); the tick-distance bias and the causal mask are the same
for every token of a block, so they are kept per pair of blocks and spread over the tokens only
where a kernel needs it. :class:`Attend` is built once a forward (full window in training, the
current block plus the :class:`~worldsim.model.kv_cache.KVCache` when streaming) and called by
each layer; :func:`attention` is the arithmetic, in one of two kernels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.model.kv_cache import KVCache

ATTENTION_KERNEL = "auto"  # "auto" | "plain" | "sdpa": tests and `worldsim bench --compare-attention` force one


def streaming_kernel(dtype: torch.dtype, device: str | torch.device) -> str:
    """The kernel "auto" picks for inference in ``dtype`` on ``device`` (see :func:`attention`)."""
    return "sdpa" if torch.device(device).type == "cuda" or dtype == torch.float32 else "plain"


def attention_kernel(q: torch.Tensor) -> str:
    """The kernel :func:`attention` runs for ``q``: "plain" whenever a gradient is wanted, else
    ``ATTENTION_KERNEL``, or with "auto" :func:`streaming_kernel`'s pick."""
    if torch.is_grad_enabled():
        return "plain"
    return streaming_kernel(q.dtype, q.device) if ATTENTION_KERNEL == "auto" else ATTENTION_KERNEL


def token_bias(bias: torch.Tensor, N: int) -> torch.Tensor:
    """A per-block-pair bias (..., Mq, Mk) spread over each block's N tokens: (..., Mq·N, Mk·N)."""
    *lead, Mq, Mk = bias.shape
    return bias[..., :, None, :, None].expand(*lead, Mq, N, Mk, N).reshape(*lead, Mq * N, Mk * N)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, N: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √Dh + bias) v. q (B, H, Mq·N, Dh), k/v (B, H, Mk·N, Dh): blocks of N tokens;
    ``bias`` (B|1, H, Mq, Mk) per pair of blocks (-inf = masked); ``mask``: ``token_bias(bias, N)``
    in q's dtype when the caller built it already (:class:`Attend`: once a forward, not once a layer;
    ``bias`` may then be None, as SDPA reads only the mask — the caller checked that SDPA runs).
    Returns (B, Mq·N, H·Dh).

    Two kernels, the same arithmetic: in bf16 on a CPU the plain form below is 1.5–2x faster than
    ``scaled_dot_product_attention``, with the bias broadcast over each block's tokens rather than
    materialised per token (at batch 16 the per-token bias cost more than the softmax); in fp32
    (an int8 world's attention on a CPU without native bf16 included) SDPA is faster (`worldsim
    bench --compare-attention`, README Speed), and on CUDA it is the fused kernel. Only inference takes SDPA; training keeps the
    plain form, whose gradient reaches the learned tick-distance bias through the add."""
    B, H, Lq, Dh = q.shape
    if mask is None and attention_kernel(q) == "sdpa":
        mask = token_bias(bias, N).to(q.dtype)  # (B|1, H, Lq, Mk·N)
    if mask is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, Dh)
        return out.transpose(1, 2).reshape(B, Lq, H * Dh)
    # fp32 before the scale and bias (the softmax runs in fp32 anyway): a broadcast add is slow in bf16
    Mq, Mk = bias.shape[-2:]
    logits = (q @ k.transpose(-1, -2)).float().view(B, H, Mq, N, Mk, N)  # (B, H, Mq, N, Mk, N)
    logits.mul_(Dh ** -0.5).add_(bias[:, :, :, None, :, None])
    out = torch.softmax(logits.view(B, H, Lq, -1), dim=-1).to(v.dtype) @ v  # (B, H, Lq, Dh)
    return out.transpose(1, 2).reshape(B, Lq, H * Dh)


class Attend:
    """How a forward attends: full window (training) or current block + KV cache (streaming).
    ``rel``/``allowed`` are per pair of blocks (query block, key block): every token of a block
    shares its tick, so the tick-distance bias and the mask are the same for all its tokens."""

    def __init__(self, rel: torch.Tensor, allowed: torch.Tensor, block_tokens: int, cache: KVCache | None = None,
                 commit_tokens: int = 0, layers: "nn.ModuleList | None" = None):
        self.rel, self.allowed, self.N = rel, allowed, block_tokens  # (B|1, Mq, Mk) tick distance, bool mask
        self.cache, self.commit_tokens = cache, commit_tokens  # the leading tokens to stage into the cache
        self.layers = list(layers or [])
        self.layer_index = {id(layer): i for i, layer in enumerate(self.layers)}
        self._bias = None
        self._mask = None

    def bias(self, li: int, dtype) -> torch.Tensor:
        """Attention bias of layer ``li`` (B|1, H, Mq, Mk); built for all layers at the first call,
        so the table lookup and the mask run once per forward instead of once per layer."""
        return self._all_bias(dtype)[li]

    def _all_bias(self, dtype) -> torch.Tensor:
        if self._bias is None:
            table = torch.stack([layer.dist_bias for layer in self.layers])  # (L, H, C)
            b = table[:, :, self.rel.clamp(0, table.shape[-1] - 1)]  # (L, H, B, Mq, Mk)
            b = b.transpose(1, 2).masked_fill(~self.allowed[None, :, None], float("-inf"))  # (L, B, H, Mq, Mk)
            self._bias = b.to(dtype)
        return self._bias

    def mask(self, li: int, q: torch.Tensor) -> torch.Tensor | None:
        """SDPA's token-level bias of layer ``li`` (B|1, H, Mq·N, Mk·N), built for all layers at the
        first call; None where :func:`attention` takes the plain form (it broadcasts the block bias)."""
        if self._mask is None:  # decided once a forward (False: the plain form)
            self._mask = (token_bias(self._all_bias(q.dtype), self.N)  # (L, B|1, H, Mq·N, Mk·N)
                          if attention_kernel(q) == "sdpa" else False)
        return None if self._mask is False else self._mask[li]

    def __call__(self, layer: nn.Module, q, k, v, first: int = 0):
        """Attention of the query blocks ``first`` .. M-1 (q holds only those) to every key."""
        li = self.layer_index[id(layer)]
        if self.cache is not None:
            if self.commit_tokens:
                n = self.commit_tokens
                self.cache.append(li, k[:, :, :n], v[:, :, :n])
            if q.shape[2] == 0:
                return q.new_zeros(q.shape[0], 0, q.shape[1] * q.shape[3])  # (B, 0, D)
            k, v = self.cache.extended(li, k, v)  # (B, H, slots·N + n, Dh)
        mask = self.mask(li, q)
        if mask is not None:  # SDPA: the token-level bias is all it needs
            return attention(q, k, v, None, self.N, mask[:, :, first * self.N:])
        return attention(q, k, v, self.bias(li, q.dtype)[:, :, first:], self.N)
