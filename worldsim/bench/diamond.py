"""A DIAMOND-class pixel-space diffusion world model, used only as a *speed* baseline.

DIAMOND (Alonso et al., 2024, "Diffusion for World Modeling: Visual Details Matter in Atari")
predicts the next 64×64 RGB frame directly in pixel space with a small U-Net, conditioned on
the last 4 frames (stacked on the channel axis with the noisy frame) and on the action, and
samples it with 3 Euler steps of an EDM (Karras et al., 2022) denoiser. This file rebuilds its
published Atari configuration so its cost per frame can be measured next to ours; the weights
are random, so the frames it produces are noise with the right shapes and the right cost.

Layout, top to bottom:
    DiamondConfig                   the Atari configuration
    FourierFeatures, AdaGroupNorm   noise-level embedding, conditioned GroupNorm
    SelfAttention2d, ResBlock       the U-Net's blocks (attention only at the 8×8 level)
    DiamondUNet                     conv_in → U-Net → conv_out, conditioned on (sigma, action)
    DiamondBaseline                 EDM preconditioning + Karras/Euler sampler + rolling context
Differences from the reference code: actions are float vectors (a linear embedding instead of
nn.Embedding), every weight is random (no zero-init), and the training-only offset noise is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode

from worldsim.precision import compute_dtype

GROUP_SIZE = 32   # channels per GroupNorm group (DIAMOND's choice)
HEAD_DIM = 8      # channels per attention head (DIAMOND's choice)
SIGMA_DATA = 0.5  # EDM: std of the data, frames are scaled to [-1, 1]


@dataclass
class DiamondConfig:
    resolution: int = 64
    context_frames: int = 4
    channels: tuple[int, ...] = (64, 64, 64, 64)  # one entry per U-Net level: 64→32→16→8
    res_blocks: int = 2                           # per level going down (one more going up, as in DIAMOND)
    attn_resolutions: tuple[int, ...] = (8,)      # levels (by side length) whose blocks self-attend
    cond_dim: int = 256
    n_actions: int = 11
    sampling_steps: int = 3
    sigma_min: float = 2e-3
    sigma_max: float = 5.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        down = 2 ** (len(self.channels) - 1)
        if self.resolution % down:
            raise ValueError(f"resolution {self.resolution} must be divisible by {down} "
                             f"({len(self.channels)} U-Net levels)")
        if self.context_frames < 1 or self.sampling_steps < 1 or self.res_blocks < 1:
            raise ValueError("context_frames, sampling_steps and res_blocks must all be >= 1")


# ----------------------------------------------------------------------------- blocks

class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar: (B,) → (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.randn(1, dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x[:, None] @ self.weight.to(x.dtype)  # (B, dim/2)
        return torch.cat([f.cos(), f.sin()], dim=-1)           # (B, dim)


class AdaGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then a scale and shift predicted from the conditioning."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.groups = max(1, channels // GROUP_SIZE)
        self.linear = nn.Linear(cond_dim, 2 * channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.groups)
        scale, shift = rearrange(self.linear(cond), "b (two c) -> two b c 1 1", two=2)
        return x * (1 + scale) + shift


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, plain softmax(q kᵀ) v."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // HEAD_DIM)
        self.norm = nn.GroupNorm(max(1, channels // GROUP_SIZE), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        qkv = self.qkv(self.norm(x))                                      # (B, 3C, H, W)
        q, k, v = rearrange(qkv, "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads)
        att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5            # (B, n, HW, HW)
        y = att.softmax(dim=-1) @ v                                       # (B, n, HW, d)
        y = rearrange(y, "b n (h w) d -> b (n d) h w", h=h, w=w)          # (B, C, H, W)
        return x + self.out(y.contiguous(memory_format=torch.channels_last))


class ResBlock(nn.Module):
    """(AdaGN → SiLU → conv3×3) × 2 plus a skip, then self-attention if this level has it."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, resolution: int, attn: bool):
        super().__init__()
        self.resolution = resolution  # side length of the feature map this block sees
        self.proj = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.norm1 = AdaGroupNorm(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = AdaGroupNorm(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.attn = SelfAttention2d(c_out) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        r = self.proj(x)
        x = self.conv1(F.silu(self.norm1(x, cond)))
        x = self.conv2(F.silu(self.norm2(x, cond)))
        return self.attn(x + r)


# ----------------------------------------------------------------------------- network

class DiamondUNet(nn.Module):
    """DIAMOND's denoiser network: predicts the (preconditioned) next frame.

    forward(noisy (B, 3, H, W), sigma (B,), context (B, 3*context_frames, H, W), action (B, n_actions))
    → (B, 3, H, W). ``sigma`` here is EDM's c_noise (log sigma / 4), inputs are already scaled.
    """

    def __init__(self, cfg: DiamondConfig):
        super().__init__()
        self.cfg = cfg
        ch, d, n = cfg.channels, cfg.cond_dim, cfg.res_blocks
        res = [cfg.resolution // 2 ** i for i in range(len(ch))]  # [64, 32, 16, 8]
        attn = [r in cfg.attn_resolutions for r in res]
        self.noise_emb = FourierFeatures(d)
        self.act_emb = nn.Linear(cfg.n_actions, d)
        self.cond_proj = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.conv_in = nn.Conv2d(3 * (cfg.context_frames + 1), ch[0], 3, padding=1)

        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(ch):
            c_prev = ch[max(0, i - 1)]
            self.downsample.append(nn.Conv2d(c_prev, c_prev, 3, stride=2, padding=1) if i else nn.Identity())
            self.down.append(nn.ModuleList(
                ResBlock(c_prev if j == 0 else c, c, d, res[i], attn[i]) for j in range(n)))
            # going up, each block concatenates one skip: the n block outputs, then the level's input
            self.up.insert(0, nn.ModuleList(
                ResBlock(c + (c if j < n else c_prev), c if j < n else c_prev, d, res[i], attn[i])
                for j in range(n + 1)))
        # before each level but the bottom one: nearest ×2 then this conv (on that level's input width)
        self.upsample = nn.ModuleList(
            [nn.Identity()] + [nn.Conv2d(c, c, 3, padding=1) for c in reversed(ch[:-1])])
        self.mid = nn.ModuleList(ResBlock(ch[-1], ch[-1], d, res[-1], True) for _ in range(2))
        self.norm_out = nn.GroupNorm(max(1, ch[0] // GROUP_SIZE), ch[0])
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                action: torch.Tensor) -> torch.Tensor:
        cond = self.cond_proj(self.noise_emb(sigma) + self.act_emb(action))  # (B, cond_dim)
        x = self.conv_in(torch.cat([context, noisy], dim=1))                # (B, C0, H, W)
        skips: list[list[torch.Tensor]] = []
        for down, blocks in zip(self.downsample, self.down):
            x = down(x)
            level = [x]
            for block in blocks:
                x = block(x, cond)
                level.append(x)
            skips.append(level)
        for block in self.mid:
            x = block(x, cond)                                              # (B, C_last, H/8, W/8)
        for i, (up, blocks) in enumerate(zip(self.upsample, self.up)):
            if i:
                x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            level = skips.pop()
            for block in blocks:
                x = block(torch.cat([x, level.pop()], dim=1), cond)
        return self.conv_out(F.silu(self.norm_out(x)))                      # (B, 3, H, W)


# ----------------------------------------------------------------------------- world model

def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """EDM noise levels from sigma_max down to sigma_min, then a final 0."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ts = [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    return [(hi + t * (lo - hi)) ** rho for t in ts] + [0.0]


class DiamondBaseline:
    """DIAMOND as a streaming world model: ``reset`` with 4 frames, then ``step`` one action at a time.

    Keeps the last ``context_frames`` frames of every batch row (scaled to [-1, 1], channel-stacked)
    and rolls the generated frame into them. Runs in ``dtype`` (default: bf16 only where native,
    :func:`worldsim.precision.compute_dtype`; the bench passes the world's), channels_last, under
    ``torch.no_grad()``.
    """

    def __init__(self, cfg: DiamondConfig | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None):
        self.cfg = cfg = cfg or DiamondConfig()
        self.device = torch.device(device)
        self.dtype = dtype = compute_dtype(self.device.type) if dtype is None else dtype
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            torch.manual_seed(seed)
            net = DiamondUNet(cfg)
        self.net = net.to(self.device, dtype).to(memory_format=torch.channels_last).eval()
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.sigmas = karras_sigmas(cfg.sampling_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        self.context: torch.Tensor | None = None  # (B, 3*T, H, W) in [-1, 1]
        self._flops: float | None = None

    def param_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def reset(self, frames: torch.Tensor) -> None:
        """Start every batch row from ``frames``: (B, context_frames, H, W, 3) uint8."""
        cfg = self.cfg
        want = (cfg.context_frames, cfg.resolution, cfg.resolution, 3)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != want or frames.shape[0] < 1:
            raise ValueError(f"reset expects frames of shape (B, {', '.join(map(str, want))}), "
                             f"got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"reset expects uint8 frames, got {frames.dtype}")
        x = frames.to(self.device).float() / 127.5 - 1
        self.context = rearrange(x, "b t h w c -> b (t c) h w")  # (B, 3*T, H, W)

    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """Generate the next frame of every row from its actions (B, n_actions): → (B, H, W, 3) uint8."""
        if self.context is None:
            raise RuntimeError("call reset(frames) before step(actions)")
        b, n = self.context.shape[0], self.cfg.n_actions
        if actions.ndim != 2 or tuple(actions.shape) != (b, n):
            raise ValueError(f"step expects actions of shape ({b}, {n}) (batch from reset, n_actions), "
                             f"got {tuple(actions.shape)}")
        x = self._sample(self.context, actions.to(self.device).float())       # (B, 3, H, W) in [-1, 1]
        self.context = torch.cat([self.context[:, 3:], x], dim=1)             # roll: drop the oldest
        frame = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return rearrange(frame, "b c h w -> b h w c")                          # (B, H, W, 3)

    def flops_per_step(self) -> float:
        """FLOPs of one ``step`` for one batch row, all sampling steps included.

        Counted once with FlopCounterMode (2 × the multiply-adds of convs and matmuls; norms,
        softmax and activations are not counted) and cached.
        """
        if self._flops is None:
            r, t = self.cfg.resolution, self.cfg.context_frames
            context = torch.zeros(1, 3 * t, r, r, device=self.device)
            actions = torch.zeros(1, self.cfg.n_actions, device=self.device)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self._sample(context, actions, generator=torch.Generator(self.device).manual_seed(0))
            self._flops = float(counter.get_total_flops())
        return self._flops

    def _denoise(self, noisy: torch.Tensor, sigma: float, context: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        """EDM preconditioning around the network: the estimate of the clean frame (float32)."""
        c_in = 1 / math.sqrt(sigma ** 2 + SIGMA_DATA ** 2)
        c_skip = SIGMA_DATA ** 2 / (sigma ** 2 + SIGMA_DATA ** 2)
        c_out = sigma * math.sqrt(c_skip)
        c_noise = torch.full((noisy.shape[0],), math.log(sigma) / 4, device=self.device, dtype=self.dtype)

        def prep(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.dtype).contiguous(memory_format=torch.channels_last)

        out = self.net(prep(noisy * c_in), c_noise, prep(context / SIGMA_DATA), actions.to(self.dtype))
        return (c_skip * noisy + c_out * out.float()).clamp(-1, 1)

    def _sample(self, context: torch.Tensor, actions: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler steps along the Karras schedule, from pure noise at sigma_max to sigma = 0."""
        b, r = context.shape[0], self.cfg.resolution
        g = generator or self.generator
        x = torch.randn(b, 3, r, r, generator=g, device=self.device) * self.sigmas[0]  # (B, 3, H, W)
        for sigma, sigma_next in zip(self.sigmas[:-1], self.sigmas[1:]):
            denoised = self._denoise(x, sigma, context, actions)
            x = x + (x - denoised) / sigma * (sigma_next - sigma)  # Euler: dx/dsigma = (x - D(x)) / sigma
        return x
