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
also receives the previous frame's latent shifted by the commanded yaw
(:func:`~worldsim.model.action_inputs.turn_prior`);
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
from worldsim.model.attention import Attend
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

    def forward(self, x: torch.Tensor, mod: torch.Tensor, attend: Attend, drop: int = 0) -> torch.Tensor:
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
