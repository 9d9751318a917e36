"""Self-rollout context for the dynamics' training (scheduled sampling against exposure bias).

A free-running world conditions every tick on ticks it generated itself, while teacher-forced
training only ever shows it recorded ones; small errors then compound into drift. With
``rollout_frac`` > 0 the trainer replaces some context ticks of a share of the windows by the
network's own generations (no gradient), while the targets stay the recorded ticks, so the
network learns to pull a drifting context back to the real world.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from worldsim.model.action_inputs import action_vector, turn_features, turn_prior
from worldsim.model.dynamics import Dynamics
from worldsim.model.sampler import FlowSampler, FlowSamplerConfig
from worldsim.train.loop import autocast

if TYPE_CHECKING:
    from worldsim.train.dynamics_trainer import DynamicsTrainConfig


@torch.no_grad()
def self_rollout(model: Dynamics, batch: dict[str, torch.Tensor], tcfg: "DynamicsTrainConfig", names: tuple[list, list],
                 device: str) -> torch.Tensor:
    """Context latents (B, T, C, h, w): real, except ticks 1..rollout_ticks of a ``rollout_frac``
    share of the windows, generated one by one from the real tick 0 with the real actions."""
    cfg = model.cfg
    z = batch["frames"].float()
    B, T = z.shape[:2]
    G = min(tcfg.rollout_ticks, T - 2)  # keep at least one real tick after the generated ones
    pick = torch.rand(B, device=z.device) < tcfg.rollout_frac
    if G < 1 or not pick.any():
        return z
    zb = z[pick].clone()  # (b, T, C, h, w)
    b = zb.shape[0]
    act = action_vector(batch["buttons"][pick], batch["axes"][pick], cfg)
    act = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], dim=1)  # (b, T, Dact)
    feats = turn_features(batch["buttons"][pick].cpu(), batch["axes"][pick].cpu(), *names).to(z.device)
    a = batch.get("audio")
    a = a[pick].float().flatten(2) if a is not None and model.audio_in is not None else None
    sampler = FlowSampler(FlowSamplerConfig(steps=tcfg.rollout_steps))  # the runtime's sampler, unshifted
    pri = [torch.zeros_like(zb[:, 0])]  # turn prior of each block, appended as ticks are generated
    for i in range(1, G + 1):
        pri.append(turn_prior(zb[:, i - 1], feats[:, i - 1], cfg, model.reaim))
        prior = model.to_tokens(torch.stack(pri, 1))  # (b, i+1, P, Dt): clean 0..i-1, then the noisy block i
        times = torch.arange(i + 1, device=z.device)
        clean = model.to_tokens(zb[:, :i])

        def velocity(xs, t):
            audio = None if a is None else torch.cat([a[:, :i], xs[1]], 1)
            level = torch.cat([torch.zeros(b, i, device=z.device), torch.full((b, 1), t, device=z.device)], 1)
            with autocast(device):
                vf, va = model(torch.cat([clean, xs[0]], 1), audio, prior, level, act[:, :i + 1], times, times == i)
            return [vf[:, -1:]] + ([va[:, -1:]] if a is not None else [])

        noise = [torch.randn(b, 1, cfg.frame_tokens, cfg.token_dim, device=z.device)]
        if a is not None:
            noise.append(torch.randn(b, 1, a.shape[-1], device=z.device))
        x = sampler.sample(velocity, noise)[0]
        zb[:, i] = model.from_tokens(x[:, 0])
    out = z.clone()
    out[pick] = zb
    return out
