"""The dynamics model: a block-causal transformer over per-tick token blocks.

One *block* is one tick: ``P`` frame tokens (the frame latent cut into ``patch``×``patch``
patches) followed by ``A`` audio tokens (0 or 1: the tick's audio latent flattened). Every
block carries a conditioning vector — the embedding of the action that led to it plus the
embedding of its noise level — applied through adaLN-zero in every layer (DiT), so actions
reach every token directly.

The network is a flow-matching velocity predictor. A block is either *clean* (context: a
real or already generated tick, lightly noised at level ``tau``) or *noisy* (the tick being
generated, at flow time ``t``). Attention rules, by tick index:

* a clean block at tick ``j`` sees clean blocks ``j-C+1 .. j``;
* a noisy block at tick ``i`` sees clean blocks ``i-C+1 .. i-1`` and itself;

with ``C = context``. Training packs the clean blocks of a window and the noisy copies of
its targets into one sequence with that mask (every target is trained with clean context,
exactly as at inference); streaming keeps the clean blocks' keys/values in a
:class:`KVCache`, so a new tick costs one forward per sampling step over its own tokens and
one to commit it. Attention bias is a learned table over the tick distance (0..C-1): no
absolute positions, so the cache can roll forever.

Turn prior: a mouse/keyboard turn mostly slides the image sideways, so each frame token
also receives the previous frame's latent shifted by the commanded yaw (``turn_prior``);
the network only has to predict what the slide does not explain. With ``prior_space =
"pixel"`` the previous *picture* is re-aimed instead (decoded, warped as a pinhole camera
turns, encoded: sharp where the latent slide blurs; the codec's owner passes the
:class:`~worldsim.model.view_warp.LatentReaim`).

Memory input (``memory_input``): a noisy block may also receive a *remembered* latent of the
place the viewer is at (retrieved by :mod:`worldsim.model.memory` from beyond the context
window, already slid to the current heading) with its match weight ``w`` in [0, 1]; each frame
token adds ``memory_in([w · memory patch, w])``. The layer starts at zero, so a trained world
gains the input without changing its outputs until it is trained with retrieved memories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from worldsim.errors import check_limits
from worldsim.model import packed_linear
from worldsim.model.kv_cache import KVCache


@dataclass
class DynamicsConfig:
    latent_channels: int = 16
    latent_size: int = 8              # latent grid side (64×64 frames → 8)
    patch: int = 2
    audio_channels: int = 16          # 0 = silent world
    audio_positions: int = 4
    n_buttons: int = 9
    n_axes: int = 2
    axis_scale: tuple[float, ...] = (30.0, 30.0)   # divides each axis before embedding
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    mlp_ratio: float = 4.0
    context: int = 8                  # ticks a block attends to, itself included
    # turn prior: degrees of rightward yaw per unit of each action feature (see turn_features),
    # and image pixels per degree at this resolution; empty weights = no prior
    turn_weights: tuple[float, ...] = ()
    px_per_degree: float = 0.6
    frame_size: int = 64
    # "latent": slide the previous latent; "pixel": re-aim the previous *picture* (decode, pinhole
    # warp, encode: view_warp.LatentReaim, which the world or trainer owning the codec supplies)
    prior_space: str = "latent"
    # pixel prior: turns smaller than this many degrees keep the previous latent as their prior (a
    # sub-pixel re-aim is mostly the codec's decode + encode round trip, ~1/5 of a tick on a CPU)
    reaim_min_deg: float = 0.0
    memory_input: bool = False        # noisy blocks take a retrieved long-term memory (see above)

    def validate(self) -> None:
        check_limits(self, "dynamics", {"latent_channels": 1, "latent_size": 1, "patch": 1, "audio_channels": 0,
                                        "audio_positions": 1, "n_buttons": 0, "n_axes": 0, "axis_scale": 1e-6,
                                        "d_model": 1, "n_layers": 1, "n_heads": 1, "mlp_ratio": 1e-6, "context": 1,
                                        "px_per_degree": 0, "frame_size": 1, "reaim_min_deg": 0})
        if self.prior_space not in ("latent", "pixel"):
            raise ValueError(f"dynamics.prior_space must be 'latent' or 'pixel', got {self.prior_space!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"dynamics.d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if self.latent_size % self.patch:
            raise ValueError(f"dynamics.latent_size {self.latent_size} must be a multiple of patch {self.patch}")

    @property
    def frame_tokens(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def audio_tokens(self) -> int:
        return 1 if self.audio_channels else 0

    @property
    def block_tokens(self) -> int:
        return self.frame_tokens + self.audio_tokens

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch ** 2

    @property
    def audio_dim(self) -> int:
        return self.audio_channels * self.audio_positions

    @property
    def action_dim(self) -> int:
        return self.n_buttons + self.n_axes + 1   # + "has an action" flag (the first tick has none)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times in [0, 1]: (...,) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


LN_EPS = 1e-5  # nn.LayerNorm's default: the layers' norms (no affine) are plain F.layer_norm calls


class Layer(nn.Module):
    """Pre-norm attention + MLP with adaLN-zero modulation from the block's condition."""

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        d, self.h = cfg.d_model, cfg.n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        hidden = int(cfg.mlp_ratio * d)
        # exact (erf) GELU: 3x faster than the tanh form in bf16 on this CPU; weights trained with
        # the tanh form (the shipped world's) see a difference below bf16's resolution
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.dist_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.context))  # bias by tick distance

    def forward(self, x: torch.Tensor, mod: torch.Tensor, attend: "Attend", drop: int = 0) -> torch.Tensor:
        # x (B, M·N, D); mod (B, M, 1, 6D): this layer's adaLN terms of each block, the scales with
        # their 1 already added (see Dynamics.modulate). drop: the leading blocks whose keys/values
        # are wanted but not their outputs (the last layer of a forward that commits clean blocks);
        # returns x of the other M - drop blocks.
        # Written for the streaming tick (17–34 tokens a forward on a CPU), where a layer's Python and
        # per-op overhead rivalled its arithmetic: plain views instead of einops, F.layer_norm
        # instead of a module call, the scale's 1 folded into the modulation (~1/3 of a layer).
        B, M = mod.shape[:2]
        D = x.shape[-1]
        s1, b1, g1, s2, b2, g2 = mod.chunk(6, dim=-1)  # (B, M, 1, D) each
        x = x.view(B, M, -1, D)  # (B, M, N, D)
        N = x.shape[2]
        # addcmul: b + a·c in one pass over the tokens (one rounding in bf16, ~1/3 faster than two ops)
        h = torch.addcmul(b1, F.layer_norm(x, (D,), eps=LN_EPS), s1)  # (B, M, N, D)
        lin = packed_linear.apply  # = the layer itself, or oneDNN/int8 with a packed weight (CPU inference)
        qkv = lin(self.qkv, h).view(B, M * N, 3, self.h, D // self.h)  # (B, M·N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, M·N, Dh) each
        if drop:
            x, g1, s2, b2, g2 = (t[:, drop:] for t in (x, g1, s2, b2, g2))  # (B, M - drop, ·, ·)
            q = q[:, :, drop * N:]  # (B, H, (M - drop)·N, Dh)
        out = attend(self, q, k, v, first=drop)  # (B, (M - drop)·N, D)
        if drop == M:  # nothing is wanted of this layer but the keys/values just staged
            return x.flatten(1, 2)
        x = torch.addcmul(x, g1, lin(self.proj, out).view_as(x))
        h = torch.addcmul(b2, F.layer_norm(x, (D,), eps=LN_EPS), s2)
        up, _, down = self.mlp
        return torch.addcmul(x, g2, packed_linear.mlp(up, down, h)).flatten(1, 2)


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

    def __call__(self, layer: Layer, q, k, v, first: int = 0):
        """Attention of the query blocks ``first`` .. M-1 (q holds only those) to every key."""
        li = self.layer_index[id(layer)]
        if self.cache is not None:
            if self.commit_tokens:
                n = self.commit_tokens
                self.cache.append(li, k[:, :, :n], v[:, :, :n])
            if q.shape[2] == 0:
                return q.new_zeros(q.shape[0], 0, q.shape[1] * q.shape[3])  # (B, 0, D)
            k = torch.cat([self.cache.k[li].to(k.dtype), k], dim=2)
            v = torch.cat([self.cache.v[li].to(v.dtype), v], dim=2)
        mask = self.mask(li, q)
        if mask is not None:  # SDPA: the token-level bias is all it needs
            return attention(q, k, v, None, self.N, mask[:, :, first * self.N:])
        return attention(q, k, v, self.bias(li, q.dtype)[:, :, first:], self.N)


class Dynamics(nn.Module):
    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        # the pixel-space turn prior's re-aim (view_warp.LatentReaim): set by the owner of the frame
        # codec (WorldModel.load, the trainer); not a submodule, never in the checkpoint
        self.reaim: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        d = cfg.d_model
        self.frame_in = nn.Linear(cfg.token_dim, d)
        self.prior_in = nn.Linear(cfg.token_dim, d)
        self.memory_in = nn.Linear(cfg.token_dim + 1, d) if cfg.memory_input else None
        if self.memory_in is not None:  # zero: a world gains the input without changing its outputs
            nn.init.zeros_(self.memory_in.weight)
            nn.init.zeros_(self.memory_in.bias)
        self.audio_in = nn.Linear(cfg.audio_dim, d) if cfg.audio_channels else None
        self.pos = nn.Parameter(torch.randn(cfg.block_tokens, d) * 0.02)
        self.action_emb = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.level_emb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.n_layers)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        self.frame_out = nn.Linear(d, cfg.token_dim)
        self.audio_out = nn.Linear(d, cfg.audio_dim) if cfg.audio_channels else None
        self._ada_key, self._ada_w, self._ada_b = None, None, None

    # ---- layout helpers -------------------------------------------------------------
    def to_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Frame latents (..., C, h, w) → tokens (..., P, C·p·p)."""
        p = self.cfg.patch
        return rearrange(z, "... c (h p1) (w p2) -> ... (h w) (c p1 p2)", p1=p, p2=p)

    def from_tokens(self, tok: torch.Tensor) -> torch.Tensor:
        p, g = self.cfg.patch, self.cfg.latent_size // self.cfg.patch
        return rearrange(tok, "... (h w) (c p1 p2) -> ... c (h p1) (w p2)", h=g, w=g, p1=p, p2=p)

    # weights a checkpoint may lack: layers added to a trained world at zero (resume fills them in)
    OPTIONAL_WEIGHTS = ("memory_in.weight", "memory_in.bias")

    def memory_tokens(self, z: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        """Memory input of blocks: remembered latents z (B, M, C, h, w) (None = nothing remembered)
        and match weights w (B, M) → (B, M, P, Dt + 1) tokens [w · patch, w]."""
        B, M = w.shape
        w = w.float()[..., None, None]  # (B, M, 1, 1)
        if z is None:
            tok = torch.zeros(B, M, self.cfg.frame_tokens, self.cfg.token_dim, device=w.device)
        else:
            tok = self.to_tokens(z.float()) * w  # (B, M, P, Dt)
        return torch.cat([tok, w.expand(B, M, self.cfg.frame_tokens, 1)], dim=-1)

    def embed(self, frame: torch.Tensor, audio: torch.Tensor | None, prior: torch.Tensor,
              memory: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks → token sequence. frame/prior (B, M, P, Dt) tokens; audio (B, M, Da) or None;
        memory (B, M, P, Dt + 1) from :meth:`memory_tokens` or None (= nothing remembered).
        Returns x (B, M·N, D)."""
        x = self.frame_in(frame) + self.prior_in(prior)  # (B, M, P, D)
        if self.memory_in is not None:
            x = x + (self.memory_in(memory) if memory is not None else self.memory_in.bias)
        if self.audio_in is not None:
            x = torch.cat([x, self.audio_in(audio)[:, :, None]], dim=2)  # (B, M, N, D)
        x = x + self.pos
        return rearrange(x, "b m n d -> b (m n) d")

    def condition(self, level: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One condition per block: level (B, M), action (B, M, Dact) → (B, M, D)."""
        return self.action_emb(action) + self.level_emb(timestep_embedding(level, self.cfg.d_model))

    def _scale_ones(self, device) -> torch.Tensor:
        """(6D,) fp32: 1 at the two scales' slots of a layer's adaLN terms, 0 elsewhere."""
        d = self.cfg.d_model
        one = torch.zeros(6 * d, device=device)
        one[0:d] = 1.0
        one[3 * d:4 * d] = 1.0
        return one

    def modulate(self, cond: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """adaLN terms of every layer, (B, M, 1, 6D) each — (scale₁, shift₁, gate₁, scale₂, shift₂,
        gate₂), each scale with its 1 added (``1 + ada``: a layer multiplies by it directly) — and
        of the head, (B, M, 1, 2D).

        They depend only on the blocks' conditions, so streaming computes those of a whole tick
        (its pending commit and all sampling steps) in one call. At inference the layers'
        ``ada`` weights are used as one concatenated matrix, the 1s folded into its bias: one
        weight read instead of L."""
        c = F.silu(cond)
        head = self.ada_out(c)[:, :, None]  # (B, M, 1, 2D)
        if self.training or torch.is_grad_enabled():
            one = self._scale_ones(c.device)
            return [(layer.ada(c) + one)[:, :, None] for layer in self.layers], head
        key = tuple((lay.ada.weight.data_ptr(), lay.ada.weight._version, lay.ada.bias._version) for lay in self.layers)
        if key != self._ada_key:
            one = self._scale_ones(c.device)
            self._ada_w = torch.cat([lay.ada.weight for lay in self.layers])  # (L·6D, D)
            self._ada_b = torch.cat([(lay.ada.bias.float() + one).to(lay.ada.bias.dtype) for lay in self.layers])
            self._ada_key = key
        allm = packed_linear.linear(c, self._ada_w, self._ada_b, self)  # (B, M, L·6D)
        return list(allm[:, :, None].chunk(len(self.layers), dim=-1)), head

    def head(self, x: torch.Tensor, head_mod: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        s, b = head_mod.chunk(2, dim=-1)  # (B, M, 1, D) each
        h = x.view(x.shape[0], blocks, self.cfg.block_tokens, x.shape[-1])  # (B, M, N, D); M may be 0
        h = torch.addcmul(b, self.norm_out(h), 1 + s)
        P = self.cfg.frame_tokens
        v_frame = self.frame_out(h[:, :, :P])  # (B, M, P, Dt)
        v_audio = self.audio_out(h[:, :, P]) if self.audio_out is not None else None  # (B, M, Da)
        return v_frame, v_audio

    def run(self, x: torch.Tensor, mods: list[torch.Tensor], attend: Attend, drop: int = 0) -> torch.Tensor:
        """All layers; the last one skips the outputs of the ``drop`` leading blocks (their keys and
        values in every layer are all a commit needs: ~1/L of a committing forward saved)."""
        last = len(self.layers) - 1
        for i, (layer, mod) in enumerate(zip(self.layers, mods)):
            x = layer(x, mod, attend, drop if i == last else 0)
        return x

    # ---- training: clean window + noisy targets in one sequence ----------------------
    def window_mask(self, times: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block tick distance and attention mask for a packed sequence of blocks.
        times (M,) tick of each block; noisy (M,) bool. Returns rel, allowed (1, M, M)."""
        C = self.cfg.context
        tq, tk = times[:, None], times[None, :]
        rel = tq - tk  # (M, M)
        same = torch.eye(len(times), dtype=torch.bool, device=times.device)
        clean_k = ~noisy[None, :]
        window = (rel >= 0) & (rel < C)
        allowed = clean_k & window & (noisy[:, None].logical_not() | (rel > 0)) | same
        return rel[None], allowed[None]

    def forward(self, frame, audio, prior, level, action, times, noisy, memory=None, first_output: int = 0):
        """Packed-sequence forward (training and full recompute). Shapes as in :meth:`embed`;
        times/noisy (M,). Returns velocity predictions for blocks ``first_output`` .. M-1: training
        scores only the noisy blocks, which follow the clean ones, so the last layer skips the
        clean blocks' queries, MLP and head (their keys and values are all the others need)."""
        x = self.embed(frame, audio, prior, memory)
        mods, head_mod = self.modulate(self.condition(level, action))
        rel, allowed = self.window_mask(times, noisy)
        x = self.run(x, mods, Attend(rel, allowed, self.cfg.block_tokens, layers=self.layers), drop=first_output)
        return self.head(x, head_mod[:, first_output:], frame.shape[1] - first_output)

    # ---- streaming: one block against the cache --------------------------------------
    def new_cache(self, batch: int, device=None, dtype=torch.bfloat16) -> KVCache:
        cfg = self.cfg
        device = device or self.pos.device
        return KVCache(cfg.n_layers, batch, cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.context - 1,
                       cfg.block_tokens, device=device, dtype=dtype)

    def step(self, cache: KVCache, frame, audio, prior, level, action, time: torch.Tensor, commit: bool,
             memory: torch.Tensor | None = None, clean_outputs: bool = True):
        """One block per row (M = 1) attending to the cache. With ``commit`` its keys/values
        are written to the cache under tick ``time`` (B,) — done for clean blocks only;
        ``clean_outputs`` as in :meth:`stream`."""
        return self.stream(cache, frame, audio, prior, self.modulate(self.condition(level, action)), time[:, None],
                           commit, memory, clean_outputs)

    def commit_and_step(self, cache: KVCache, frame, audio, prior, level, action, time: torch.Tensor,
                        mods: tuple[list[torch.Tensor], torch.Tensor] | None = None, memory: torch.Tensor | None = None):
        """Two blocks per row in one forward: block 0 is the clean block of tick ``time - 1``
        (committed to the cache), block 1 the noisy block of tick ``time`` being generated, which
        sees block 0 exactly as it would see it in the cache. Saves the separate commit forward
        of every tick; returns the velocity of block 1 only (B, 1, ·)."""
        mods = mods if mods is not None else self.modulate(self.condition(level, action))
        return self.stream(cache, frame, audio, prior, mods, torch.stack([time - 1, time], 1), True, memory,
                           clean_outputs=False)

    def stream(self, cache: KVCache, frame, audio, prior, mods: tuple[list[torch.Tensor], torch.Tensor],
               times: torch.Tensor, commit_first: bool | int, memory: torch.Tensor | None = None,
               clean_outputs: bool = True):
        """M blocks per row against the cache; ``times`` (B, M); ``mods`` from :meth:`modulate`.
        The first ``commit_first`` blocks (True = 1) are clean and written to the cache; the
        rest are noisy. Priming commits a whole real context in one such forward. ``memory``
        (B, M, P, Dt + 1) or None: clean blocks take none (zero weight), as in training.
        Returns the velocities of all M blocks, or with ``clean_outputs=False`` of the noisy
        ones only (M - commit_first blocks, possibly 0): the committed blocks' last layer then
        computes their keys and values and nothing else."""
        N, C = self.cfg.block_tokens, self.cfg.context
        B, M = times.shape
        x = self.embed(frame, audio, prior, memory)  # (B, M·N, D)
        rel_c = times[:, :, None] - cache.time[:, None, :]  # (B, M, slots)
        ok_c = (cache.time >= 0)[:, None] & (rel_c > 0) & (rel_c < C)
        rel_w = times[:, :, None] - times[:, None, :]  # (B, M, M) within the new blocks
        n_clean = int(commit_first)
        clean = torch.arange(M, device=x.device) < n_clean
        same = torch.eye(M, dtype=torch.bool, device=x.device)
        ok_w = (clean[None, None, :] & (rel_w >= 0) & (rel_w < C) & (clean[None, :, None] | (rel_w > 0))) | same
        rel = torch.cat([rel_c, rel_w], 2)  # (B, M, slots + M) per pair of blocks
        allowed = torch.cat([ok_c, ok_w], 2)
        attend = Attend(rel, allowed, N, cache=cache, commit_tokens=N * n_clean, layers=self.layers)
        drop = 0 if clean_outputs else n_clean
        x = self.run(x, mods[0], attend, drop)
        if n_clean:
            cache.commit(times[:, :n_clean])
        return self.head(x, mods[1][:, drop:], M - drop)


# ---- action features and the turn prior --------------------------------------------------
def action_vector(buttons: torch.Tensor, axes: torch.Tensor, cfg: DynamicsConfig, present: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """(…, NB) buttons + (…, NA) axes → (…, action_dim) network input."""
    scale = torch.tensor(cfg.axis_scale[: cfg.n_axes], dtype=torch.float32, device=axes.device)
    flag = torch.ones(buttons.shape[:-1] + (1,), device=buttons.device) if present is None else present[..., None].float()
    return torch.cat([buttons.float(), axes.float() / scale, flag], dim=-1)


def turn_features(buttons: torch.Tensor, axes: torch.Tensor, button_names: list[str], axis_names: list[str]) -> torch.Tensor:
    """Features whose linear combination predicts rightward yaw (deg/tick):
    [right - left keys, (right - left)·run, mouse_dx]. Missing controls count as 0."""
    def b(name):
        return buttons[..., button_names.index(name)].float() if name in button_names else torch.zeros(buttons.shape[:-1])
    turn = b("turn_right") - b("turn_left")
    dx = axes[..., axis_names.index("mouse_dx")].float() if "mouse_dx" in axis_names else torch.zeros_like(turn)
    return torch.stack([turn, turn * b("run"), dx], dim=-1)


def shift_latent(z: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Slide latents (B, C, h, w) left by ``cells`` (B,) latent cells (a right turn moves the
    scene left), bilinear, edges repeated."""
    B, _, h, w = z.shape
    ys = torch.linspace(-1, 1, h, device=z.device)
    xs = torch.linspace(-1, 1, w, device=z.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    gx = gx[None] + (2.0 * cells.float() / (w - 1))[:, None, None]
    grid = torch.stack([gx, gy[None].expand(B, h, w)], dim=-1)  # (B, h, w, 2)
    return F.grid_sample(z.float(), grid, mode="bilinear", padding_mode="border", align_corners=True).to(z.dtype)


def turn_prior(prev: torch.Tensor, feats: torch.Tensor, cfg: DynamicsConfig,
               reaim: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None" = None,
               space: str | None = None) -> torch.Tensor:
    """Previous latent (B, C, h, w) turned by the yaw the action commands: slid in latent space,
    or with ``cfg.prior_space == "pixel"`` re-aimed by ``reaim(prev, yaw)`` (a LatentReaim);
    unchanged without turn weights. ``space`` overrides ``cfg.prior_space`` ("latent": the light
    prior a loaded runtime falls back on)."""
    if not cfg.turn_weights:
        return prev
    w = torch.tensor(cfg.turn_weights, dtype=torch.float32, device=prev.device)
    yaw = feats.float() @ w  # (B,) degrees to the right
    if (space or cfg.prior_space) == "pixel":
        if reaim is None:
            raise ValueError("dynamics.prior_space 'pixel' needs the frame codec to re-aim pictures (reaim=)")
        return reaim(prev, yaw).to(prev.dtype)
    cells = yaw * cfg.px_per_degree * cfg.latent_size / cfg.frame_size
    return shift_latent(prev, cells)
