"""Frame codec: a small convolutional autoencoder, RGB frame <-> latent grid.

64×64×3 uint8 → (C=16, 8, 8) float latent (a /8 grid; 128×128 gives 16×16 with one more
level). Two decoders: the *mirror* of the encoder (nearest upsampling + 3×3 convs up to full
resolution), or, with ``decoder_channels``, a lighter *sub-pixel* decoder whose last conv runs
at half resolution and emits each 2×2 pixel block (``PixelShuffle``, as in ESPCN): ~3.5×
fewer FLOPs, because full-resolution convs are most of a decoder's cost. A sub-pixel decoder is
trained against a frozen encoder (``worldsim train --stage frame_decoder``), so the latents —
and the dynamics model trained on them — stay valid. No normalisation layers: GroupNorm in bf16 is slow on CPU and the net is shallow.
Latents are standardised with per-channel statistics measured after training
(``latent_mean``/``latent_std`` buffers) so that the dynamics model sees ~unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.errors import check_limits


@dataclass
class FrameCodecConfig:
    resolution: int = 64          # square frames, a multiple of 2**len(channels)
    channels: tuple[int, ...] = (64, 96, 128)  # one /2 level each
    latent_channels: int = 16
    res_blocks: int = 1           # residual blocks per level (decoder gets one more)
    decoder_channels: tuple[int, ...] = ()  # () = mirror decoder; else the sub-pixel decoder's widths,
                                  # one per level from the latent grid up (len == len(channels))
    decoder_res_blocks: int = 1   # sub-pixel decoder: residual blocks after each level's conv
    latent_noise: float = 0.1     # σ of noise added to latents in training: keeps the decoder
                                  # tolerant of the small errors the dynamics model makes

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** len(self.channels)

    def validate(self) -> None:
        check_limits(self, "frame_codec", {"resolution": 1, "channels": 1, "latent_channels": 1, "res_blocks": 0,
                                           "decoder_channels": 1, "decoder_res_blocks": 0, "latent_noise": 0})
        if not self.channels or self.resolution % 2 ** len(self.channels):
            raise ValueError(f"frame_codec.resolution {self.resolution} must be a multiple of "
                             f"2**len(channels) = {2 ** len(self.channels)} (one /2 level per width)")
        if self.decoder_channels and len(self.decoder_channels) != len(self.channels):
            raise ValueError(f"frame_codec.decoder_channels needs one width per level ({len(self.channels)}), "
                             f"got {len(self.decoder_channels)}")


def pixel_l1_terms(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, L1 and image-gradient L1 between images (N, 3, H, W) → (N,), (N,): the codec's
    reconstruction terms (the gradient term keeps edges, which the eval's sharpness ratio reads)."""
    gx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    gy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return ((y - x).abs().mean((1, 2, 3)),
            (gx(y) - gx(x)).abs().mean((1, 2, 3)) + (gy(y) - gy(x)).abs().mean((1, 2, 3)))


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.silu(self.c1(F.silu(x))))


class FrameCodec(nn.Module):
    def __init__(self, cfg: FrameCodecConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
        prev = ch[0]
        for c in ch:
            enc += [ResBlock(prev) for _ in range(cfg.res_blocks)]
            enc += [nn.Conv2d(prev, c, 4, stride=2, padding=1)]
            prev = c
        enc += [ResBlock(prev), nn.SiLU(), nn.Conv2d(prev, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        self.decoder = self._subpixel_decoder(cfg) if cfg.decoder_channels else self._mirror_decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    @staticmethod
    def _mirror_decoder(cfg: FrameCodecConfig) -> nn.Sequential:
        ch = cfg.channels
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1), ResBlock(ch[-1])]
        prev = ch[-1]
        for c in reversed(ch):
            dec += [ResBlock(prev) for _ in range(cfg.res_blocks + 1)]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, c, 3, padding=1)]
            prev = c
        dec += [ResBlock(prev), nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)]
        return nn.Sequential(*dec)

    @staticmethod
    def _subpixel_decoder(cfg: FrameCodecConfig) -> nn.Sequential:
        ch = tuple(cfg.decoder_channels)
        if len(ch) != len(cfg.channels):
            raise ValueError(f"decoder_channels needs one width per level ({len(cfg.channels)}), got {len(ch)}")
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1), ResBlock(ch[0])]
        for a, b in zip(ch[:-1], ch[1:]):  # latent grid → half resolution
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
            dec += [ResBlock(b) for _ in range(cfg.decoder_res_blocks)]
        # (B, 12, H/2, W/2) → (B, 3, H, W): each half-resolution position paints a 2×2 block
        dec += [nn.SiLU(), nn.Conv2d(ch[-1], 3 * 4, 3, padding=1), nn.PixelShuffle(2)]
        return nn.Sequential(*dec)

    # uint8 (B, H, W, 3) <-> float (B, 3, H, W) in [-1, 1]
    @staticmethod
    def to_float(frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return (x / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (B, 3, H, W) → unnormalised latents (B, C, h, w)."""
        return self.encoder(x)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.contiguous(memory_format=torch.channels_last))

    def _norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latent_mean.view(1, -1, 1, 1), self.latent_std.view(1, -1, 1, 1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) → standardised latents (B, C, h, w), float32."""
        m, s = self._norm()
        return (self.encode_raw(self.to_float(frames)).float() - m) / s

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents (B, C, h, w) → uint8 frames (B, H, W, 3)."""
        m, s = self._norm()
        return self.to_uint8(self.decode_raw(z.float() * s + m))

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 + image-gradient L1 (keeps edges: the eval's sharpness ratio) on uint8 frames."""
        x = self.to_float(frames)
        z = self.encode_raw(x)
        z = z + self.cfg.latent_noise * z.detach().float().std() * torch.randn_like(z)
        y = self.decode_raw(z).float()
        l1, grad = (t.mean() for t in pixel_l1_terms(y, x))
        reg = 1e-4 * z.float().pow(2).mean()  # keeps the latent scale from drifting
        mse = F.mse_loss(y.detach(), x)
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        return l1 + grad + reg, {"l1": l1.item(), "grad": grad.item(), "psnr": psnr.item()}
