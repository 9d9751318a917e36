"""Adversarial sharpening of the dynamics: a patch critic in latent space.

A flow trained by regression — on real ticks or on a teacher's samples — lands, in a few Euler
steps, near the *mean* of the possible next ticks, and a free-running rollout compounds that
blur: the shipped world's frames keep ~40 % of the real edge energy sixteen ticks ahead. Here a
small critic learns to tell the real next tick from the network's one-step estimate of it,
``x̂0 = x_t - t·v`` (the flow's clean-tick prediction at the noisy input it was given), both seen
beside the real previous tick; the dynamics gets the critic's hinge gradient on top of its own
loss (adversarial diffusion distillation's recipe, Sauer et al. 2023, on latents instead of
pixels). The critic sees 8×8 latents, so it costs a fraction of the dynamics' step.

It trades distortion for perception: what the critic rewards is detail, and detail the network
cannot place exactly costs PSNR (the model card has the measured trade-off). ``adv_weight``
in :class:`~worldsim.train.dynamics_trainer.DynamicsTrainConfig` switches it on (0 = off).

DDP: every rank keeps the same critic — its gradients are averaged over the ranks before each
of its steps, as DDP does for the dynamics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class LatentCritic(nn.Module):
    """(previous tick, candidate next tick) latents (N, C, h, w) each → patch logits
    (N, 1, h/2, w/2). Spectral norm on every conv keeps the hinge game from running away."""

    def __init__(self, channels: int, width: int = 96):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(2 * channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 1, 3, padding=1)))

    def forward(self, prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([prev, x], dim=1))  # (N, 2C, h, w) → (N, 1, h/2, w/2)


def clean_estimate(noisy: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The flow's clean-tick estimate ``x_t - t·v``: noisy/velocity (B, M, P, Dt), t (B, M)."""
    return noisy - t[..., None, None] * velocity


class Adversary:
    """The critic, its optimizer, and the two halves of a hinge GAN step."""

    def __init__(self, channels: int, lr: float = 2e-4, width: int = 96, device: str | torch.device = "cpu"):
        self.critic = LatentCritic(channels, width).to(device)
        self.opt = torch.optim.AdamW(self.critic.parameters(), lr=lr, betas=(0.5, 0.99), weight_decay=0.0)

    def update(self, prev: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One critic step on (N, C, h, w) latents (``fake`` is detached here)."""
        import torch.distributed as dist
        self.critic.train()
        dr = self.critic(prev, real)
        df = self.critic(prev, fake.detach())
        loss = F.relu(1 - dr).mean() + F.relu(1 + df).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized():
            n = dist.get_world_size()
            for p in self.critic.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(n)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # nothing stale for the dynamics' backward to add to
        return {"critic": loss.item(), "critic_gap": (dr.mean() - df.mean()).item()}

    def generator_loss(self, prev: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The dynamics' adversarial term: gradient reaches ``fake``, never the critic's weights."""
        self.critic.eval()  # the spectral norms' power iterations advance in the critic's own step only
        for p in self.critic.parameters():
            p.requires_grad_(False)
        try:
            return -self.critic(prev, fake).float().mean()
        finally:
            for p in self.critic.parameters():
                p.requires_grad_(True)

    def state_dict(self) -> dict[str, Any]:
        return {"critic": self.critic.state_dict(), "critic_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.opt.load_state_dict(state["critic_opt"])
