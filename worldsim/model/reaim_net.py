"""A learned turn prior: the pixel re-aim of a latent, done in latent space by a small conv net.

The pixel turn prior (:class:`~worldsim.model.view_warp.LatentReaim`) decodes the previous latent
to a picture, warps it as a pinhole camera turns and encodes it again: ~2/3 of a frame codec's
round trip every tick a player turns, a fifth of a tick on a CPU (README Speed, session 30).
Sliding the latent grid instead is nearly free but blurs (a grid cell is 8 pixels wide, and the
latent of a shifted picture is not the blend of two cells). :class:`ReaimNet` learns the map the
pixel prior computes, ``(latent, yaw) → latent``, as a residual on that slide, told the yaw, the
sub-cell part of the slide and where each cell sits (the edge strip a turn brings into view, the
weapon that stays in place): three 3×3 convs on the 8×8 grid, or (``sub`` > 0, the default world's)
each cell unfolded into ``sub`` columns of a finer grid that is turned there as the picture would be
(:func:`~worldsim.model.view_warp.yaw_grid`) and folded back, so the warp itself is not learned. Trained against the pixel prior
itself on recorded latents (``worldsim train --stage reaim``, :mod:`worldsim.train.reaim_trainer`);
a world that ships ``reaim.safetensors`` turns with it (:class:`LearnedReaim`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.errors import check_limits
from worldsim.model.action_inputs import shift_latent
from worldsim.model.view_warp import LatentReaim, yaw_grid


@dataclass
class ReaimNetConfig:
    latent_channels: int = 16
    latent_size: int = 8
    width: int = 96               # channels of the hidden convs
    cells_per_degree: float = 0.0  # latent cells the picture slides per degree of yaw (the dynamics' px_per_degree
                                   # × latent_size / frame_size; set by the stage from the world it imitates)
    yaw_scale: float = 10.0       # yaw (degrees) is fed as yaw / yaw_scale
    sub: int = 0                  # > 0: features on a grid ``sub`` times finer across, warped there exactly
    fine_width: int = 48          # channels of that finer grid
    fov: float = 90.0             # horizontal field of view (degrees) of that warp

    def validate(self) -> None:
        check_limits(self, "reaim", {"latent_channels": 1, "latent_size": 1, "width": 1, "cells_per_degree": 0,
                                     "yaw_scale": 1e-6, "sub": 0, "fine_width": 1, "fov": 1e-3})


class ReaimNet(nn.Module):
    def __init__(self, cfg: ReaimNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c, w, fw, S = cfg.latent_channels, cfg.width, cfg.fine_width, cfg.sub
        if S:
            # each cell unfolds into S columns of a finer grid, which is turned there as the picture
            # would be (view_warp.yaw_grid), then folded back: the warp itself need not be learned
            self.unfold = nn.Conv2d(c, S * fw, 1)
            self.fine = nn.Sequential(nn.SiLU(), nn.Conv2d(fw, fw, 3, padding=1), nn.SiLU())
            self.fine_after = nn.Sequential(nn.Conv2d(fw, fw, 3, padding=1), nn.SiLU())
            self.fold = nn.Conv2d(fw, fw, (1, S), stride=(1, S))
            self.net = nn.Sequential(
                nn.Conv2d(2 * c + 4 + fw, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, c, 1))
        else:
            self.net = nn.Sequential(
                nn.Conv2d(2 * c + 4, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, c, 1))
        nn.init.zeros_(self.net[-1].weight)  # starts as the plain slide
        nn.init.zeros_(self.net[-1].bias)
        g = cfg.latent_size
        xs = (torch.arange(g, dtype=torch.float32) + 0.5) / g * 2 - 1
        self.register_buffer("coords", torch.stack(torch.meshgrid(xs, xs, indexing="xy")), persistent=False)  # (2, g, g)

    def forward(self, z: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """Standardised latents (N, C, h, w) and yaw (N,) degrees to the right → the latents of the
        views re-aimed by that yaw (N, C, h, w), float32."""
        z = z.float()
        N, _, h, w = z.shape
        cells = yaw.float() * self.cfg.cells_per_degree  # (N,)
        base = shift_latent(z, cells)  # (N, C, h, w)
        frac = cells - cells.round()  # the sub-cell part: what the bilinear slide gets wrong
        maps = torch.stack([yaw.float() / self.cfg.yaw_scale, frac], 1)[:, :, None, None].expand(N, 2, h, w)  # (N, 2, h, w)
        feats = [z, base, maps, self.coords.expand(N, 2, h, w)]
        if self.cfg.sub:
            S = self.cfg.sub
            u = self.unfold(z.contiguous(memory_format=torch.channels_last))  # (N, S·F, h, w)
            u = u.view(N, S, -1, h, w).permute(0, 2, 3, 4, 1).reshape(N, -1, h, w * S)  # (N, F, h, w·S)
            u = self.fine(u)
            grid = yaw_grid(-yaw.float(), self.cfg.fov, h, w * S).to(u.dtype)  # (N, h, w·S, 2): a right turn
            u = F.grid_sample(u, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (N, F, h, w·S)
            feats.append(self.fold(self.fine_after(u)))  # (N, F, h, w)
        x = torch.cat(feats, 1)  # (N, 2C+4 [+F], h, w)
        return base + self.net(x.contiguous(memory_format=torch.channels_last)).float()


class LearnedReaim(LatentReaim):
    """The dynamics' turn prior through a :class:`ReaimNet`: the same call as
    :class:`~worldsim.model.view_warp.LatentReaim` (rows turning less than ``min_deg`` degrees keep
    their latent), but no picture is decoded, warped or encoded (``frames`` are not needed)."""

    def __init__(self, net: ReaimNet, min_deg: float = 0.0):
        super().__init__(None, min_deg=min_deg)
        self.net = net

    def _reaim(self, z: torch.Tensor, yaw: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        return self.net(z, yaw)


def reaim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in standardised latent units (the dynamics' inputs are ~unit variance)."""
    return F.mse_loss(pred.float(), target.float())
