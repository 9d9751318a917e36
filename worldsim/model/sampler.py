"""Flow-matching sampler: Euler steps from noise (t = 1) to data (t = 0).

It knows nothing about networks (diffusers style): it calls ``velocity(x, t)`` and moves
``x`` along it. ``shift`` > 1 spends more of the few steps at high noise, where the
layout of the next frame is decided. ``temperature`` < 1 starts from scaled-down noise: samples
nearer the mean, so higher PSNR and less detail (the model card, session 27, measures the trade).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from worldsim.errors import check_limits


@dataclass
class FlowSamplerConfig:
    steps: int = 3
    shift: float = 1.0
    context_level: float = 0.0   # noise level generated ticks are committed to the context with
    temperature: float = 1.0     # scale of the start noise (1: the distribution the network was trained on)

    def validate(self) -> None:
        check_limits(self, "sampler", {"steps": 1, "shift": 1e-6, "temperature": 1e-6}, within=("context_level",))


class FlowSampler:
    def __init__(self, cfg: FlowSamplerConfig):
        cfg.validate()
        self.cfg = cfg

    def timesteps(self, steps: int | None = None) -> list[float]:
        n = steps or self.cfg.steps
        ts = [1.0 - i / n for i in range(n + 1)]  # 1 → 0
        s = self.cfg.shift
        return [s * t / (1 + (s - 1) * t) for t in ts]

    def sample(self, velocity: Callable[[Sequence[torch.Tensor], float], Sequence[torch.Tensor]],
               noise: Sequence[torch.Tensor], steps: int | None = None) -> list[torch.Tensor]:
        """Integrate ``dx/dt = velocity(x, t)`` from ``noise`` at t=1 down to t=0 (tuples of tensors)."""
        xs = [n.float() * self.cfg.temperature if self.cfg.temperature != 1.0 else n.float() for n in noise]
        ts = self.timesteps(steps)
        for t, t_next in zip(ts[:-1], ts[1:]):
            vs = velocity(xs, t)
            xs = [x + (t_next - t) * v.float() for x, v in zip(xs, vs)]
        return xs
